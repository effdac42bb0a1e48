"""Advantage estimators as pure tensor functions: episode- or step-level tensors in, tensors out.

- GRPO: the episode return normalised within its group (the episodes that started from one seed).
- GiGPO: GRPO's episode advantage plus a step advantage from anchor-state groups: steps of one group
  that start from the same observation are compared by their discounted returns.
- RLOO: the return minus the mean return of the other members of the group.
- REINFORCE++: returns whitened over the whole batch, optionally after subtracting the group mean.
- GAE: generalised advantage estimation from a learned critic (PPO).

Step-level inputs are (N,) tensors over transitions with ``episode`` (episode id) and ``step`` (index
in the episode); an episode's last transition ends it (truncation is treated as termination).
"""

from __future__ import annotations

import difflib
from typing import Literal, get_args

import torch
from torch import Tensor

Advantage = Literal["grpo", "gigpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "ppo"]
NormMode = Literal["mean_std_norm", "mean_norm"]
NORM_MODES = get_args(NormMode)


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



def zero_advantage_group_frac(advantages: Tensor, group_ids: Tensor, atol: float = 1e-6) -> float:
    """The share of the rollout's groups (those with a transition) whose advantages are all ~0: there
    GRPO has no signal, and PaW's WM term is the only gradient. 0.0 for an empty rollout."""
    groups = torch.unique(group_ids)
    if not len(groups):
        return 0.0
    nonzero = torch.zeros(int(group_ids.max()) + 1, dtype=torch.bool).index_fill_(0, group_ids[advantages.abs() > atol], True)
    return float((~nonzero[groups]).float().mean())


def episode_order(episode: Tensor, step: Tensor) -> list[Tensor]:
    """For each episode (in id order), the transition indices sorted by step."""
    order = torch.argsort(episode * (int(step.max().item()) + 1 if step.numel() else 1) + step)
    ids = episode[order]
    return [order[ids == e] for e in torch.unique(ids)]


def discounted_returns(rewards: Tensor, episode: Tensor, step: Tensor, gamma: float) -> Tensor:
    """(N,) G_t = r_t + gamma * G_{t+1} within each episode (0 after its last step)."""
    returns = torch.zeros_like(rewards, dtype=torch.float64)
    for idx in episode_order(episode, step):
        running = 0.0
        for i in reversed(idx.tolist()):
            running = float(rewards[i]) + gamma * running
            returns[i] = running
    return returns.to(torch.float32)


def anchor_groups(observations: list[str], group: Tensor, similarity: float = 1.0) -> Tensor:
    """(N,) anchor-state id of each step: steps of the same group whose current observations match.

    ``similarity`` 1.0 means identical text; below 1.0 an observation joins the first earlier anchor of
    its group whose text has a difflib ratio >= similarity.
    """
    ids: list[int] = []
    anchors: dict[int, list[tuple[str, int]]] = {}
    exact: dict[tuple[int, str], int] = {}
    next_id = 0
    for obs, g in zip(observations, group.tolist()):
        key = (g, obs)
        if key in exact:
            ids.append(exact[key])
            continue
        found = None
        if similarity < 1.0:
            for text, anchor_id in anchors.get(g, []):
                if difflib.SequenceMatcher(None, text, obs).ratio() >= similarity:
                    found = anchor_id
                    break
        if found is None:
            found, next_id = next_id, next_id + 1
            anchors.setdefault(g, []).append((obs, found))
        exact[key] = found
        ids.append(found)
    return torch.tensor(ids, dtype=torch.long)


def normalise_in_groups(values: Tensor, group: Tensor, num_groups: int, mode: str = "mean_std_norm", eps: float = 1e-6) -> Tensor:
    """values minus their group mean, divided by the group std in ``mean_std_norm`` mode (0 for flat groups)."""
    if mode not in NORM_MODES:
        raise ValueError(f"unknown normalisation {mode!r}; choose one of {NORM_MODES}")
    return grpo_advantages(values, group, num_groups, normalize_std=mode == "mean_std_norm", eps=eps)


def gigpo_advantages(
    episode_returns: Tensor,
    episode_group: Tensor,
    num_groups: int,
    rewards: Tensor,
    episode: Tensor,
    step: Tensor,
    anchors: Tensor,
    gamma: float = 0.95,
    omega: float = 1.0,
    mode: str = "mean_std_norm",
) -> tuple[Tensor, Tensor, Tensor]:
    """GiGPO per-transition advantages: A = A_episode + omega * A_step.

    Args:
        episode_returns, episode_group, num_groups: as for GRPO (the episode-level part).
        rewards, episode, step: (N,) per transition.
        anchors: (N,) anchor-state id of each transition (see ``anchor_groups``).
        gamma: discount of the step-level returns.
        omega: weight of the step-level advantage.
        mode: ``mean_std_norm`` or ``mean_norm`` for both levels.

    Returns:
        (advantages (N,), episode part (N,), step part (N,)).
    """
    episode_adv = normalise_in_groups(episode_returns, episode_group, num_groups, mode)[episode]
    returns = discounted_returns(rewards, episode, step, gamma)
    num_anchors = int(anchors.max().item()) + 1 if anchors.numel() else 0
    step_adv = normalise_in_groups(returns, anchors, num_anchors, mode) if anchors.numel() else returns
    return episode_adv + omega * step_adv, episode_adv, step_adv


def rloo_advantages(episode_returns: Tensor, episode_group: Tensor, num_groups: int) -> Tensor:
    """(E,) R_i minus the mean return of the other members of its group; R_i alone in a group of one."""
    returns = episode_returns.to(torch.float64)
    totals = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, episode_group, returns)
    counts = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, episode_group, torch.ones_like(returns))
    n = counts[episode_group]
    others = (totals[episode_group] - returns) / (n - 1.0).clamp(min=1.0)
    return torch.where(n > 1, returns - others, returns).to(torch.float32)


def whiten(values: Tensor, eps: float = 1e-6, population: Tensor | None = None) -> Tensor:
    """(values - mean) / (std + eps), with the mean and unbiased std of ``population`` (default: the
    values themselves; with several processes, every process's values); 0 when the population has
    fewer than two elements."""
    population = values if population is None else population
    if population.numel() < 2:
        return torch.zeros_like(values)
    return (values - population.mean()) / (population.std() + eps)


def reinforce_pp_returns(
    episode_returns: Tensor, episode_group: Tensor, num_groups: int, episode: Tensor, group_baseline: bool = False
) -> Tensor:
    """(N,) REINFORCE++ before whitening: each transition's episode return, minus its group mean when
    ``group_baseline``."""
    values = episode_returns.to(torch.float32)
    if group_baseline:
        values = grpo_advantages(values, episode_group, num_groups, normalize_std=False)
    return values[episode]


def reinforce_pp_advantages(
    episode_returns: Tensor, episode_group: Tensor, num_groups: int, episode: Tensor, group_baseline: bool = False
) -> Tensor:
    """(N,) REINFORCE++: ``reinforce_pp_returns`` whitened over all transitions of the batch."""
    return whiten(reinforce_pp_returns(episode_returns, episode_group, num_groups, episode, group_baseline))


def gae_advantages(
    rewards: Tensor, values: Tensor, episode: Tensor, step: Tensor, gamma: float = 0.95, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation per episode; returns (advantages, value targets), both (N,).

    delta_t = r_t + gamma * V_{t+1} - V_t (V after the last step is 0);
    A_t = delta_t + gamma * lam * A_{t+1}; target_t = A_t + V_t.
    """
    advantages = torch.zeros_like(rewards, dtype=torch.float64)
    for idx in episode_order(episode, step):
        running, next_value = 0.0, 0.0
        for i in reversed(idx.tolist()):
            delta = float(rewards[i]) + gamma * next_value - float(values[i])
            running = delta + gamma * lam * running
            advantages[i] = running
            next_value = float(values[i])
    advantages = advantages.to(torch.float32)
    return advantages, advantages + values.to(torch.float32)
