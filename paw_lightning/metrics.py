"""Episode metrics of a rollout (pure) and the token-weighted world-model metrics (torchmetrics)."""

from __future__ import annotations

from collections import defaultdict

import torch
from torchmetrics import MeanMetric

from paw_lightning.rollout.types import Rollout


def episode_metrics(rollout: Rollout) -> dict[str, float]:
    """Success rate and episode count (overall and per task type), return, length and valid-action ratio."""
    episodes = rollout.episodes
    if not episodes:
        return {}
    steps = sum(e.length for e in episodes)
    metrics = {
        "episode/success_rate": sum(e.won for e in episodes) / len(episodes),
        "episode/return": sum(e.total_return for e in episodes) / len(episodes),
        "episode/length": steps / len(episodes),
        "episode/valid_action_ratio": sum(e.valid_actions for e in episodes) / max(steps, 1),
        "episode/count": float(len(episodes)),
    }
    by_type: dict[str, list[bool]] = defaultdict(list)
    for e in episodes:
        by_type[e.task_type].append(e.won)
    for task_type, wins in sorted(by_type.items()):
        metrics[f"episode/success_rate/{task_type}"] = sum(wins) / len(wins)
        metrics[f"episode/count/{task_type}"] = float(len(wins))
    return metrics


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


class TokenMean(MeanMetric):
    """A mean over tokens (weighted by token count), so small and large mini-batches count fairly."""

    def forward_tokens(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Accumulate the masked values and return this batch's token mean (Lightning logs the metric)."""
        count = mask.sum().clamp(min=1).float()
        return self((values.float() * mask).sum() / count, weight=count)
