"""Episode metrics of a rollout (pure) and the token-weighted world-model metrics (torchmetrics)."""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Sequence

import torch
from torchmetrics import MeanMetric

from paw_lightning.rollout.types import Episode, Rollout


def episode_metrics(rollout: Rollout | Sequence[Episode]) -> dict[str, float]:
    """Success rate and episode count (overall and per task type), return, length and valid-action ratio,
    of a rollout's episodes (or of any list of episodes, e.g. every process's). Success rates count only
    winnable episodes (an env whose ``info["winnable"]`` is False has no win, only a return), and are
    left out where there are none."""
    episodes = rollout.episodes if isinstance(rollout, Rollout) else list(rollout)
    if not episodes:
        return {}
    steps = sum(e.length for e in episodes)
    winnable = [e for e in episodes if e.winnable]
    metrics = {
        "episode/return": sum(e.total_return for e in episodes) / len(episodes),
        "episode/length": steps / len(episodes),
        "episode/valid_action_ratio": sum(e.valid_actions for e in episodes) / max(steps, 1),
        "episode/count": float(len(episodes)),
    }
    if winnable:
        metrics["episode/success_rate"] = sum(e.won for e in winnable) / len(winnable)
    by_type: dict[str, list[Episode]] = defaultdict(list)
    for e in episodes:
        by_type[e.task_type].append(e)
    for task_type, group in sorted(by_type.items()):
        wins = [e.won for e in group if e.winnable]
        if wins:
            metrics[f"episode/success_rate/{task_type}"] = sum(wins) / len(wins)
        metrics[f"episode/count/{task_type}"] = float(len(group))
    return metrics


EPISODE_COLUMNS = ("trained_iterations", "position", "seed", "task_type", "won", "return", "length", "valid_actions")


def append_episode_rows(path: str | os.PathLike, trained_iterations: int, episodes: Sequence[Episode]) -> None:
    """Append one CSV row per episode (the training iterations before it, its position in the list, env seed,
    task type, outcome) to ``path``:
    held-out episodes played with the fixed validation generator are the same in every run, so two runs'
    files pair episode by episode (``position`` and ``seed``), the paired comparison of two arms."""
    new = not os.path.exists(path)
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(EPISODE_COLUMNS)
        for position, e in enumerate(episodes):
            writer.writerow((trained_iterations, position, e.seed, e.task_type, int(e.won), e.total_return, e.length,
                             e.valid_actions))


def rollout_metrics(rollout: Rollout) -> dict[str, float]:
    """Throughput and the PaW selection/weighting summary of a rollout."""
    metrics = {
        "rollout/env_steps_per_s": rollout.env_steps / max(rollout.wall_s, 1e-9),
        "rollout/env_steps": float(rollout.env_steps),
        "rollout/wall_s": float(rollout.wall_s),
        "rollout/env_restarts": float(sum(e.env_restarts for e in rollout.episodes)),
        "rollout/env_timeouts": float(sum(e.env_timeouts for e in rollout.episodes)),
    }
    if rollout.wm_selected is not None and len(rollout):
        metrics["paw/selected_frac"] = rollout.wm_selected.float().mean().item()
    if rollout.action_entropy is not None and len(rollout):
        metrics["paw/action_entropy"] = rollout.action_entropy.mean().item()
    return metrics


# How the rollout metrics of several processes combine (see ``combine_rank_metrics``); any other key: the
# mean over the ranks that report it.
SUMMED = ("rollout/env_steps", "rollout/env_restarts", "gigpo/anchor_groups", "gigpo/multi_step_groups")
PER_TRANSITION = ("paw/selected_frac", "paw/action_entropy", "gigpo/step_adv_abs")  # weighted by transitions


def combine_rank_metrics(per_rank: Sequence[dict[str, float]], episodes: Sequence[Episode]) -> dict[str, float]:
    """One set of rollout metrics from every process's (rank order): the ``episode/`` metrics recomputed
    over all ranks' ``episodes``; counts summed; per-transition means weighted by each rank's
    ``rollout/env_steps``; ``rollout/wall_s`` the slowest rank's, and ``rollout/env_steps_per_s`` all
    env steps over it; any other metric the mean over the ranks that report it."""
    steps = [m.get("rollout/env_steps", 0.0) for m in per_rank]
    out: dict[str, float] = {}
    keys = [k for m in per_rank for k in m if not k.startswith("episode/")]
    for key in dict.fromkeys(keys):
        reported = [(m[key], w) for m, w in zip(per_rank, steps) if key in m]
        values = [v for v, _ in reported]
        if key in SUMMED:
            out[key] = float(sum(values))
        elif key == "rollout/wall_s":
            out[key] = float(max(values))
        elif key in PER_TRANSITION:
            total = sum(w for _, w in reported)
            out[key] = float(sum(v * w for v, w in reported) / total) if total else float(sum(values) / len(values))
        else:
            out[key] = float(sum(values) / len(values))
    if "rollout/wall_s" in out:
        out["rollout/env_steps_per_s"] = sum(steps) / max(out["rollout/wall_s"], 1e-9)
    return episode_metrics(episodes) | out


class TokenMean(MeanMetric):
    """A mean over tokens: each step adds its token share with ``weight`` = its (weighted) token count, so
    small and large mini-batches count fairly.

    With several processes each one logs its own mean (rank 0's is written): a rank logs the world-model
    metrics only in steps that have world-model rows, so a cross-process sync when the epoch ends could
    wait for a rank that never logged.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**({"sync_on_compute": False} | kwargs))
