"""``RunSummary``: prints a short table when fit ends: success first vs last iteration, wall time, logs."""

from __future__ import annotations

import time

import lightning as L


class RunSummary(L.Callback):
    """Track the training success rate per iteration and print a summary at the end of fit."""

    def __init__(self) -> None:
        self.history: list[float] = []
        self.start = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        success = pl_module.rollout_metrics.get("episode/success_rate")
        if success is not None:
            self.history.append(success)

    def summary(self, trainer: L.Trainer) -> str:
        wall = time.perf_counter() - self.start
        first = f"{self.history[0]:.3f}" if self.history else "n/a"
        last = f"{self.history[-1]:.3f}" if self.history else "n/a"
        tail = self.history[-3:]
        last3 = f"{sum(tail) / len(tail):.3f}" if tail else "n/a"
        logs = ", ".join(sorted({lg.log_dir for lg in trainer.loggers if getattr(lg, "log_dir", None)})) or "none"
        rows = [
            ("iterations", str(len(self.history))),
            ("success, first iteration", first),
            ("success, last iteration", last),
            ("success, mean of last 3", last3),
            ("wall time", f"{wall:.0f} s"),
            ("logs", logs),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(["", "PaW run summary", *[f"  {k.ljust(width)}  {v}" for k, v in rows]])

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            print(self.summary(trainer), flush=True)
