"""Advantage estimators as pure tensor functions; every one returns one advantage per episode or step.

GRPO: each episode's return, normalised within its group (the episodes that started from the same
seed). More estimators (GiGPO, RLOO, REINFORCE++, GAE) plug in through ``ADVANTAGES``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def group_mean_std(values: Tensor, group: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """Per-group mean and unbiased std of ``values`` (std 0 for a group of one): both (G,)."""
    values = values.to(torch.float64)
    ones = torch.ones_like(values)
    count = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group, ones)
    mean = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group, values) / count.clamp(min=1.0)
    sq = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group, (values - mean[group]) ** 2)
    std = torch.sqrt(sq / (count - 1.0).clamp(min=1.0))
    return mean, std


def grpo_advantages(
    episode_returns: Tensor, episode_group: Tensor, num_groups: int, normalize_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """GRPO episode advantages: (R - mean_g) / (std_g + eps), or R - mean_g without std scaling.

    A group whose returns are all equal (all fail, all succeed, or a single member) gets 0 for every
    episode: it carries no signal about which actions were better.

    Args:
        episode_returns: (E,) return of each episode.
        episode_group: (E,) int group of each episode, in [0, num_groups).
        num_groups: G.
        normalize_std: divide by the group std (GRPO); False gives the Dr.GRPO-style mean-only baseline.

    Returns:
        (E,) float32.
    """
    mean, std = group_mean_std(episode_returns, episode_group, num_groups)
    centred = episode_returns.to(torch.float64) - mean[episode_group]
    if normalize_std:
        group_std = std[episode_group]
        centred = torch.where(group_std > 0, centred / (group_std + eps), torch.zeros_like(centred))
    return centred.to(torch.float32)


ADVANTAGES = ("grpo",)
