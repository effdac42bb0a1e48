"""PaW's choice of what the world model learns from, and how much: pure tensor functions.

- ``top_fraction_mask``: action-entropy data selection, the top alpha fraction of all transitions.
- ``reward_adaptive_lambda``: lambda_g = 1 - mean return of group g / R_max, clamped to [0, 1].
- ``normalized_entropy``: a score-actor step's candidate entropy over its maximum, log(candidates), so that
  selection ranks uncertainty rather than the length of the command list.
- ``derangement``: a seeded permutation without fixed points, for the shuffled-observation placebo
  (``wm_target: shuffled``: each transition predicts another transition's next observation).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_ratio(ratio: float) -> None:
    """Raise ValueError unless 0 < ratio <= 1."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"selection ratio must be in (0, 1], got {ratio}")


def check_r_max(r_max: float) -> None:
    """Raise ValueError unless r_max > 0."""
    if not r_max > 0.0:
        raise ValueError(f"r_max (the maximum episode return) must be > 0, got {r_max}")


def top_fraction_mask(scores: Tensor, ratio: float) -> Tensor:
    """Mark the ``ceil(ratio * N)`` highest scores (N = scores.numel()).

    Ties are broken by position (the earlier transition wins), so the result is deterministic.
    An empty input gives an empty mask.

    Args:
        scores: (N,) e.g. the mean action entropy of each transition.
        ratio: the fraction to keep, in (0, 1].

    Returns:
        (N,) bool.
    """
    check_ratio(ratio)
    n = scores.numel()
    keep = min(n, math.ceil(ratio * n - 1e-9))
    mask = torch.zeros(n, dtype=torch.bool, device=scores.device)
    if keep > 0:
        order = torch.sort(scores, descending=True, stable=True).indices
        mask[order[:keep]] = True
    return mask


def normalized_entropy(entropy: Tensor, num_candidates: Tensor) -> Tensor:
    """(N,) entropy / log(num_candidates), in [0, 1]; 0 where a step had a single candidate (no choice).

    Args:
        entropy: (N,) entropy of each step's distribution over its candidates (nats).
        num_candidates: (N,) how many admissible commands each step had.
    """
    most = torch.log(num_candidates.to(entropy.dtype).clamp(min=1.0))
    return torch.where(most > 0, entropy / most.clamp(min=1e-12), torch.zeros_like(entropy))


def reward_adaptive_lambda(episode_returns: Tensor, episode_group: Tensor, num_groups: int, r_max: float) -> Tensor:
    """World-model weight of each group: lambda_g = clamp(1 - mean_return_g / r_max, 0, 1).

    All-fail groups get full weight and all-success groups none; a group whose penalties push the
    mean return below 0 is clamped to 1. A group with no episode gets 1.

    Args:
        episode_returns: (E,) return of each episode.
        episode_group: (E,) int, the group of each episode, in [0, num_groups).
        num_groups: G.
        r_max: the return of a successful episode (10 for ALFWorld and TextWorld here).

    Returns:
        (G,) lambda per group.
    """
    check_r_max(r_max)
    returns = episode_returns.to(torch.float64)
    totals = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, episode_group, returns)
    counts = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, episode_group, torch.ones_like(returns))
    mean = totals / counts.clamp(min=1.0)
    return (1.0 - mean / r_max).clamp(0.0, 1.0).to(torch.float32)


def derangement(n: int, generator: torch.Generator) -> Tensor:
    """A permutation of ``range(n)`` with no fixed points (``out[i] != i``), uniform over all such permutations.

    Rejection sampling: a uniform permutation is a derangement with probability about 1/e, so this takes
    e draws on average; the result depends only on ``n`` and the generator's state. No derangement exists
    for n = 1, so the single index maps to itself; n = 0 gives an empty tensor.

    Args:
        n: the number of items (transitions of a rollout).
        generator: the source of randomness (seed it for a reproducible run).

    Returns:
        (n,) long: item i takes the place (here: the world-model target) of item ``out[i]``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    identity = torch.arange(n)
    if n < 2:
        return identity
    while True:
        order = torch.randperm(n, generator=generator)
        if not bool((order == identity).any()):
            return order
