"""What an iteration leaves behind besides the weights: the rollout's metrics for this iteration's logs
(over every process), the episode logs (``episodes.jsonl`` and TensorBoard text, rank 0), the run's clock
and learner throughput (``perf/``), and the refusal to checkpoint non-finite weights.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from lightning.pytorch.loggers import TensorBoardLogger

from paw_lightning.distributed import Ranks
from paw_lightning.errors import NonFiniteTrainingError
from paw_lightning.episode_log import EPISODES_FILE, append_jsonl, episode_markdown, episode_records
from paw_lightning.metrics import append_episode_rows, combine_rank_metrics, episode_metrics, rollout_metrics
from paw_lightning.rollout.types import Episode, Rollout


def iteration_metrics(rollout: Rollout, wm_coef: float, ranks: Ranks, datamodule=None) -> dict[str, float]:
    """The rollout's episode and PaW metrics (with several processes: over every process's episodes and
    transitions) and the run's env-step and episode totals (``datamodule``, when there is one)."""
    metrics = episode_metrics(rollout) | rollout_metrics(rollout) | rollout.metrics
    if wm_coef == 0:  # no world-model loss runs: nothing was selected for it
        metrics.pop("paw/selected_frac", None)
    if ranks.distributed:
        gathered = ranks.all_gather_object((metrics, rollout.episodes))
        metrics = combine_rank_metrics([m for m, _ in gathered], [e for _, eps in gathered for e in eps])
    if datamodule is not None:
        metrics["rollout/total_env_steps"] = float(datamodule.total_env_steps)
        metrics["rollout/total_episodes"] = float(datamodule.total_episodes)
    return metrics


def write_episode_log(rollout: Rollout, split: str, iteration: int, hp, trainer, tokenizer, loggers, step: int) -> None:
    """Append ``hp.log_episodes`` sampled episodes of the rollout to ``<log dir>/episodes.jsonl`` and show the
    first as TensorBoard text (rank 0; see episode_log.py). Reads what the rollout holds: no forward."""
    count = hp.log_episodes
    if count <= 0 or trainer is None or not rollout.episodes:
        return
    folder = trainer.log_dir  # a collective under DDP: every rank asks, rank 0 writes
    if folder is None or not trainer.is_global_zero:
        return
    records = episode_records(rollout, split, iteration, count, tokenizer, wm_coef=hp.wm_coef)
    append_jsonl(Path(folder) / EPISODES_FILE, records)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger) and records:
            logger.experiment.add_text(f"episodes/{split}", episode_markdown(records[0]), step)


def write_val_episodes(trainer, iteration: int, episodes: Sequence[Episode]) -> None:
    """Append every held-out episode's outcome to ``<log dir>/val_episodes.csv`` (rank 0), for paired
    comparisons between runs."""
    log_dir = trainer.log_dir if trainer is not None else None
    if log_dir and trainer.is_global_zero:
        os.makedirs(log_dir, exist_ok=True)
        append_episode_rows(os.path.join(log_dir, "val_episodes.csv"), iteration, episodes)


class RunClock:
    """The run's wall time since fit started (``elapsed_s``, kept across resumes) and this iteration's
    learner tokens, padded tokens and training-step seconds."""

    def __init__(self) -> None:
        self.elapsed_s = 0.0
        self.origin = time.perf_counter()
        self.learner = {"tokens": 0.0, "padded": 0.0, "seconds": 0.0}
        self.step_started = 0.0

    def start(self) -> None:
        """Fit starts: a resumed run (``elapsed_s`` loaded) continues its clock."""
        self.origin = time.perf_counter() - self.elapsed_s

    def count(self, micros: Sequence[dict]) -> None:
        """Count the real and padded tokens of a step's micro-batches."""
        for micro in micros:
            self.learner["tokens"] += float(micro["attention_mask"].sum())
            self.learner["padded"] += float(micro["attention_mask"].numel())

    def iteration_logs(self) -> dict[str, float]:
        """The iteration's wall time (rollout, update and any validation), the run's total since fit started
        (set-up and game generation included), and the learner's padding share and throughput; starts the
        next iteration's counts."""
        elapsed = time.perf_counter() - self.origin
        seconds, self.elapsed_s = elapsed - self.elapsed_s, elapsed
        logs = {"perf/iteration_s": seconds, "perf/elapsed_s": elapsed}
        learner, self.learner = self.learner, {"tokens": 0.0, "padded": 0.0, "seconds": 0.0}
        if learner["padded"]:
            logs["perf/pad_frac"] = 1.0 - learner["tokens"] / learner["padded"]
            logs["perf/tokens_per_s"] = learner["tokens"] / max(learner["seconds"], 1e-9)
        return logs


def refuse_non_finite(state_dict: dict, lr: float) -> None:
    """Raise ``NonFiniteTrainingError`` when a checkpoint would hold non-finite weights."""
    bad = [k for k, v in state_dict.items() if torch.is_floating_point(v) and not torch.isfinite(v).all()]
    if bad:
        raise NonFiniteTrainingError(
            f"refusing to save a checkpoint with non-finite weights ({len(bad)} tensors, e.g. {bad[0]}); the "
            f"previous checkpoints are kept. Lower model.lr (now {lr:g}) or keep model.grad_clip on, "
            "then resume from the last checkpoint."
        )
