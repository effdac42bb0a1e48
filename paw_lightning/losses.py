"""The loss terms of PaW as pure tensor functions: no Lightning, no globals.

Shapes: ``(B, A)`` holds per-unit values of B transitions, where a unit is an action token (generate
actor) or the whole chosen candidate (score actor, A = 1); ``(R, T)`` holds per-token values of R
sequences; masks select the positions that count. Every loss here is a token-mean over its mask; a
``denominator`` replaces the mask's own count, so that a micro-batch's loss is its share of the
mini-batch's mean and the micro-batches' losses add up to the unsplit one.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor


def masked_mean(values: Tensor, mask: Tensor, denominator: float | Tensor | None = None) -> Tensor:
    """Mean of ``values`` where ``mask`` is true; 0 (not NaN) when the mask is empty. ``denominator``
    (default: the mask's count) is what the masked sum is divided by."""
    mask = mask.to(values.dtype)
    count = mask.sum() if denominator is None else torch.as_tensor(denominator, dtype=values.dtype, device=values.device)
    return (values * mask).sum() / count.clamp(min=1.0)


def clipped_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float = 0.2,
    denominator: float | Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """PPO-clip surrogate, token-mean over ``mask``.

    Args:
        logp, old_logp: (B, A) log-probs of the taken units under the current and the rollout policy.
        advantages: (B,) one advantage per transition, shared by its units.
        mask: (B, A) which units exist.
        clip_eps: the ratio is clipped to [1 - clip_eps, 1 + clip_eps].
        denominator: the unit count the means divide by (default: the mask's).

    Returns:
        (loss, clip_fraction, approx_kl): the loss to minimise, the fraction of units whose ratio left
        the clip range, and the k3 estimate of KL(old || new) for diagnostics.
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    adv = advantages.unsqueeze(-1).to(logp.dtype)
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv)
    loss = masked_mean(-surrogate, mask, denominator)
    with torch.no_grad():
        clip_fraction = masked_mean(((ratio - 1.0).abs() > clip_eps).to(logp.dtype), mask, denominator)
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask, denominator)
    return loss, clip_fraction, approx_kl


def low_var_kl(logp: Tensor, ref_logp: Tensor, mask: Tensor, bound: float = 10.0,
               denominator: float | Tensor | None = None) -> Tensor:
    """The low-variance (k3) estimate of KL(policy || reference), token-mean over ``mask``.

    k3 = exp(ref - logp) - (ref - logp) - 1 is non-negative and unbiased; it is clamped to
    [-bound, bound] so that one token with a huge log-ratio cannot blow up the update.
    """
    diff = (ref_logp - logp).clamp(-bound, bound)
    return masked_mean(torch.exp(diff) - diff - 1.0, mask, denominator)


def cmae_loss(token_logp: Tensor, obs_mask: Tensor, rho: float = 0.2) -> tuple[Tensor, Tensor]:
    """Clipped mean absolute error on observation tokens (the PaW world-model loss), per sequence.

    loss_r = sum_i 1[p_i <= rho] * (1 - p_i) / ``|o|``, where p_i = exp(token_logp) is the probability of the
    i-th target token and ``|o|`` the full observation length (clipped tokens still count in it).

    Args:
        token_logp: (R, T) log-prob of each target token.
        obs_mask: (R, T) true at observation tokens.
        rho: tokens already predicted with p > rho get no loss and no gradient.

    Returns:
        (loss, clipped): (R,) per-sequence loss (0 for a sequence without observation tokens) and
        (R, T) bool, the observation tokens that were clipped (p > rho).
    """
    prob = torch.exp(token_logp)
    mask = obs_mask.to(prob.dtype)
    active = (prob <= rho).to(prob.dtype) * mask
    length = mask.sum(-1).clamp(min=1.0)
    loss = ((1.0 - prob) * active).sum(-1) / length
    clipped = obs_mask & (prob > rho)
    return loss, clipped


def ce_loss(token_logp: Tensor, obs_mask: Tensor) -> Tensor:
    """Cross-entropy (mean negative log-likelihood) on observation tokens, per sequence: (R,)."""
    mask = obs_mask.to(token_logp.dtype)
    return -(token_logp * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def clipped_value_loss(values: Tensor, old_values: Tensor, targets: Tensor, clip: float = 0.2,
                       denominator: float | Tensor | None = None) -> Tensor:
    """PPO's clipped value loss: 0.5 * mean(max((V - R)^2, (V_old + clip(V - V_old) - R)^2)).

    All (B,). ``clip`` <= 0 turns clipping off (plain squared error). ``denominator``: the row count the
    mean divides by (default B).
    """
    error = (values - targets) ** 2
    if clip > 0:
        clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        error = torch.maximum(error, (clipped - targets) ** 2)
    return 0.5 * masked_mean(error, torch.ones_like(error, dtype=torch.bool), denominator)


def explained_variance(predicted: Tensor, targets: Tensor) -> Tensor:
    """1 - Var(targets - predicted) / Var(targets); NaN when the targets do not vary."""
    var = targets.var(unbiased=False)
    if var == 0:
        return torch.tensor(float("nan"))
    return 1.0 - (targets - predicted).var(unbiased=False) / var


WMLoss = Literal["cmae", "ce"]
