"""How large the world-model term's gradient is next to the RL terms', and what measuring it costs.

Runs ``paw fit`` in this process with ``log_grad_terms_every_n_steps=2``, so that measured and plain
optimiser steps alternate in one run (back to back on the same machine load), and times every training
step (forward, backward, clipping, AdamW). Prints one JSON report: per measured step the gradient norms of
the RL terms and of the WM term and their ratio; the mean time of plain and measured steps; and the
update-time cost of the logging at the default ``every 10 steps`` = (measured - plain) / (10 x plain).

    python benchmarks/grad_terms.py --config configs/quickstart.yaml -- --trainer.max_epochs=2
    python benchmarks/grad_terms.py --config configs/smollm2_coin_collector.yaml -- --trainer.max_epochs=1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import lightning as L

from paw_lightning.cli import cli_main

EVERY = 2  # measured every other step, so both kinds share the run
DEFAULT_EVERY = 10  # the module's default, for the amortised cost


class StepTimer(L.Callback):
    """Wall time of every optimiser step and, on measured steps, the module's per-term gradient norms."""

    report: dict = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        seconds = time.perf_counter() - self.started
        step = trainer.global_step - 1
        measured = step % EVERY == 0
        StepTimer.report.setdefault("measured_s" if measured else "plain_s", []).append(round(seconds, 3))
        if measured:
            StepTimer.report.setdefault("steps", []).append({"step": step, **{k: round(float(v), 6) for k, v in module.grad_terms.items()}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("extra", nargs="*", help="arguments for paw fit (after --)")
    args = parser.parse_args()
    load = os.getloadavg()
    config = os.path.abspath(args.config)
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)  # the run's logs and checkpoints go to a scratch folder
        cli_main(["fit", "--config", config,
                  f"--model.log_grad_terms_every_n_steps={EVERY}", "--trainer.callbacks+=__main__.StepTimer",
                  "--data.val_episodes=0", "--data.progress=false",
                  "--trainer.enable_progress_bar=false", *args.extra])
    report = StepTimer.report
    plain, measured = report.get("plain_s", []), report.get("measured_s", [])
    if plain and measured:
        t_plain, t_measured = statistics.mean(plain), statistics.mean(measured)
        report["plain_step_s"], report["measured_step_s"] = round(t_plain, 3), round(t_measured, 3)
        report[f"cost_every_{DEFAULT_EVERY}_steps"] = round((t_measured - t_plain) / (DEFAULT_EVERY * t_plain), 4)
    ratios = [s["grad/wm_over_rl"] for s in report.get("steps", [])]
    if ratios:
        report["wm_over_rl_mean"] = round(statistics.mean(ratios), 4)
    report["config"], report["extra"], report["load_avg_at_start"] = args.config, args.extra, [round(x, 2) for x in load]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    main()
