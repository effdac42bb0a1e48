"""Preparing a fresh rollout for the update: everything between the collector's last step and the first
optimiser step, except PaW's callbacks (selection and weighting), which run in between.

In order (``prepare_rollout``, then the callbacks, then ``finish_wm_rows``):

1. world-model targets: o_{t+1} as ``wm_context`` and ``wm_horizon`` frame it (``build_wm_targets``), or the
   placebo's shuffled targets (``shuffle_wm_targets``);
2. the no-grad scoring passes (``score_pass``): old and reference log-probs of the taken units, their
   entropy and the critic's values, in batches of ``score_batch_size`` rows or the token budget in force;
   a pass that runs out of memory runs again with half the budget;
3. advantages of the configured estimator (``compute_advantages``: GRPO, RLOO, REINFORCE++ with or
   without the group baseline, GiGPO, PPO's GAE);
4. the WM defaults PaW's callbacks then edit: every transition selected, weight ``wm_coef``;
5. after the callbacks: de-duplication of repeated transitions (``wm_dedup``) and the selected share of
   the update (``wm_normalize: update``).

The functions take the model pieces, the hyper-parameters and the ranks they need (PaWModule wires them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from paw_lightning.advantages import (
    anchor_groups,
    gae_advantages,
    gigpo_advantages,
    grpo_advantages,
    reinforce_pp_returns,
    rloo_advantages,
    zero_advantage_group_frac,
)
from paw_lightning.distributed import Ranks, global_dedup_mask, global_whiten, sum_over_ranks
from paw_lightning.heads import to_device
from paw_lightning.logprobs import trunk_hidden
from paw_lightning.losses import explained_variance
from paw_lightning.memory import run_with_oom_retry
from paw_lightning.models import trunk_and_head
from paw_lightning.rollout.batch import SCORE, collate, row_length, token_budget_groups, unit_mask
from paw_lightning.rollout.types import Rollout
from paw_lightning.selection import derangement
from paw_lightning.world_model import TurnFrame, build_targets, transition_key


def engine_logprob_gap(rollout: Rollout) -> float | None:
    """Mean ``|engine - trainer|`` log-prob of the sampled units (generate: response tokens; score: the
    chosen candidate), over the units the engine reported; None when it reported none (HF generate).
    Shows the mismatch that dtype or quantisation puts between the rollout engine and the trainer."""
    diffs = []
    for t, old in zip(rollout.transitions, rollout.old_logprobs):
        engine = [t.actor_logprob] if rollout.mode == SCORE else (t.actor_token_logprobs or [])
        if len(engine) == len(old):
            diffs.append((torch.tensor(engine, dtype=torch.float32) - old.float()).abs())
    values = torch.cat(diffs) if diffs else torch.zeros(0)
    values = values[values.isfinite()]
    return values.mean().item() if len(values) else None


# ----- world-model targets -------------------------------------------------------------------------
def build_wm_targets(rollout: Rollout, context: str, frame: TurnFrame, horizon: int) -> None:
    """Write the world-model target of every transition as ``context`` (raw / turn) and ``horizon`` define
    it; at the paper's settings (raw, 1) the target stays ``obs_ids`` and nothing is written."""
    if context == "raw" and horizon == 1:
        return
    targets = build_targets(rollout.transitions, frame, horizon, rollout.max_obs_tokens)
    rollout.transitions = [replace(t, wm_ids=g.ids, wm_loss_mask=g.loss_mask) for t, g in zip(rollout.transitions, targets)]


def shuffle_wm_targets(rollout: Rollout, model_seed: int) -> None:
    """The placebo: every transition learns the next observation of another transition of the rollout,
    through a derangement seeded by (model_seed, iteration), so a run and its resume draw the same."""
    generator = torch.Generator().manual_seed(model_seed * 1_000_003 + rollout.iteration)
    rollout.permute_wm_targets(derangement(len(rollout), generator))


# ----- the no-grad scoring passes ------------------------------------------------------------------
def scoring_chunks(rollout: Rollout, budget: int | None, size: int) -> list[list[int]]:
    """The no-grad passes' batches: ``size`` transitions at most, and with a token budget at most
    ``budget`` padded tokens (rows grouped by length)."""
    if budget is None:
        return [list(range(start, min(start + size, len(rollout)))) for start in range(0, len(rollout), size)]
    return token_budget_groups([row_length(t, rollout.mode) for t in rollout.transitions], budget, max_rows=size)


@dataclass
class Scorer:
    """What a scoring pass reads: the model, how to get the taken units' log-probs and entropies
    (``heads.policy_units`` with the chunk size bound), the reference policy's (context, model), the
    critic (None without one), the padding id, ``score_batch_size`` and the device."""

    model: nn.Module
    policy_units: Callable[[nn.Module, Tensor, dict], tuple[Tensor, Tensor]]
    reference: Callable[[], tuple]
    values: Callable[[Tensor, dict], Tensor] | None
    pad_id: int
    batch_size: int
    device: torch.device


def score_chunks(rollout: Rollout, scorer: Scorer, policy: bool, reference: bool, values: bool,
                 budget: int | None) -> dict[str, dict[int, Tensor]]:
    """One attempt of a scoring pass at ``budget``: per transition index, its units' old (and/or reference)
    log-probs, its mean unit entropy and its critic value."""
    found: dict[str, dict[int, Tensor]] = {"old": {}, "ref": {}, "entropy": {}, "values": {}}
    for rows in scoring_chunks(rollout, budget, scorer.batch_size):
        batch = to_device(collate([rollout.transitions[i] for i in rows], rollout.mode, scorer.pad_id), scorer.device)
        batch["temperature"] = rollout.temperature
        mask = unit_mask(batch)
        if policy or values:
            trunk, _ = trunk_and_head(scorer.model)
            hidden = trunk_hidden(trunk, batch)
            if policy:
                logp, ent = scorer.policy_units(scorer.model, hidden, batch)
                found["old"] |= {i: row[m].float().cpu() for i, row, m in zip(rows, logp, mask)}
                found["entropy"] |= {i: row[m].float().mean().cpu() for i, row, m in zip(rows, ent, mask)}
            if values:
                found["values"] |= dict(zip(rows, scorer.values(hidden, batch).float().cpu().unbind(0)))
        if reference:
            context, ref_model = scorer.reference()
            with context:
                ref_trunk, _ = trunk_and_head(ref_model)
                ref_logp, _ = scorer.policy_units(ref_model, trunk_hidden(ref_trunk, batch), batch)
            found["ref"] |= {i: row[m].float().cpu() for i, row, m in zip(rows, ref_logp, mask)}
    return found


def score_pass(rollout: Rollout, scorer: Scorer, budget: int | None, policy: bool, reference: bool,
               values: bool) -> tuple[dict[str, list[Tensor]], int]:
    """No-grad unit log-probs and entropies (policy and/or reference) and critic values per transition, in
    transition order, and the out-of-memory retries it took (each one halves the budget and runs the
    pass again; the budget in force is left as it was: the update's own retry shrinks that)."""
    was_training = scorer.model.training
    scorer.model.eval()
    lengths = [row_length(t, rollout.mode) for t in rollout.transitions]
    attempt = functools.partial(score_chunks, rollout, scorer, policy, reference, values)
    found, _, retries = run_with_oom_retry(attempt, budget, lengths, lambda: None, scorer.device)
    scorer.model.train(was_training)
    return {key: [part[i] for i in sorted(part)] for key, part in found.items()}, retries


# ----- advantages ----------------------------------------------------------------------------------
def compute_advantages(rollout: Rollout, hp, ranks: Ranks) -> Tensor:
    """(N,) per-transition advantages of the estimator ``hp.advantage`` (see advantages.py); GiGPO and PPO
    add their diagnostics to ``rollout.metrics``, PPO its value targets to the rollout."""
    returns, groups = rollout.episode_returns()
    episode = rollout.episode_ids
    if hp.advantage == "grpo":
        return grpo_advantages(returns, groups, rollout.num_groups, hp.grpo_normalize_std)[episode]
    if hp.advantage == "rloo":
        return rloo_advantages(returns, groups, rollout.num_groups)[episode]
    if hp.advantage in ("reinforce_pp", "reinforce_pp_baseline"):  # whitened over every process's transitions
        values = reinforce_pp_returns(returns, groups, rollout.num_groups, episode, hp.advantage == "reinforce_pp_baseline")
        return global_whiten(values, ranks)
    if hp.advantage == "gigpo":
        anchors = anchor_groups([t.observation for t in rollout.transitions], rollout.group_ids, hp.gigpo_similarity)
        advantages, _, step_part = gigpo_advantages(
            returns, groups, rollout.num_groups, rollout.rewards, episode, rollout.steps, anchors,
            hp.gamma, hp.gigpo_omega, hp.gigpo_norm,
        )
        sizes = torch.bincount(anchors)
        rollout.metrics["gigpo/anchor_groups"] = float(len(sizes))
        rollout.metrics["gigpo/anchor_group_size"] = sizes.float().mean().item()
        rollout.metrics["gigpo/multi_step_groups"] = float((sizes > 1).sum())
        rollout.metrics["gigpo/step_adv_abs"] = step_part.abs().mean().item()
        return advantages
    # ppo: GAE from the critic, whitened over the rollout (every process's)
    advantages, targets = gae_advantages(rollout.rewards, rollout.old_values, episode, rollout.steps, hp.gamma, hp.gae_lambda)
    rollout.value_targets = targets
    rollout.metrics["ppo/explained_variance"] = explained_variance(rollout.old_values, targets).item()
    return global_whiten(advantages, ranks)


# ----- the whole preparation -----------------------------------------------------------------------
@torch.no_grad()
def prepare_rollout(rollout: Rollout, hp, frame: TurnFrame, ranks: Ranks, score: Callable[..., dict],
                    critic: bool) -> None:
    """Score the rollout (old/ref log-probs, action entropy, critic values), compute advantages and set the
    world-model defaults (every transition selected, weight ``wm_coef``). ``score(policy=, reference=,
    values=)`` runs one scoring pass (``score_pass`` with the module's scorer and budget).

    The HF engine's score actor already computed the exact candidate log-prob and entropy with these
    weights while sampling, so a forward pass here is needed only for the generate actor, another engine
    (vLLM: its log-probs are compared with the trainer's, never trained on), the reference policy
    (``kl_coef > 0``) and the critic (PPO)."""
    build_wm_targets(rollout, hp.wm_context, frame, hp.wm_horizon)
    if hp.wm_target == "shuffled":
        shuffle_wm_targets(rollout, hp.model_seed)
    n = len(rollout)
    reuse_actor = rollout.mode == SCORE and rollout.exact_actor_logprobs
    if reuse_actor:
        rollout.old_logprobs = [torch.tensor([t.actor_logprob]) for t in rollout.transitions]
        rollout.action_entropy = torch.tensor([t.actor_entropy for t in rollout.transitions])
    need_ref = hp.kl_coef > 0
    rollout.ref_logprobs = None
    if need_ref or critic or not reuse_actor:
        scored = score(policy=not reuse_actor, reference=need_ref, values=critic)
        if not reuse_actor:
            rollout.old_logprobs = scored["old"]
            rollout.action_entropy = torch.stack(scored["entropy"]) if n else torch.zeros(0)
            gap = engine_logprob_gap(rollout)
            if gap is not None:
                rollout.metrics["rollout/engine_logprob_gap"] = gap
        if need_ref:
            rollout.ref_logprobs = scored["ref"]
        if critic:
            rollout.old_values = torch.stack(scored["values"]) if n else torch.zeros(0)
    rollout.advantages = compute_advantages(rollout, hp, ranks) if n else torch.zeros(0)
    if n:
        rollout.metrics["rollout/zero_adv_group_frac"] = zero_advantage_group_frac(rollout.advantages, rollout.group_ids)
    rollout.wm_selected = torch.ones(n, dtype=torch.bool)
    rollout.wm_weight = torch.full((n,), float(hp.wm_coef))


def finish_wm_rows(rollout: Rollout, wm_dedup: bool, ranks: Ranks) -> None:
    """After the rollout callbacks: drop repeated transitions from the WM loss (``wm_dedup``, over every
    process's transitions) and record the selected share of the update (``wm_normalize: update``)."""
    if wm_dedup and len(rollout):
        keys = [transition_key(t) for t in rollout.transitions]
        kept = global_dedup_mask(keys, rollout.wm_selected, ranks)
        before = int(rollout.wm_selected.sum())
        rollout.metrics["paw/dedup_dropped_frac"] = (before - int(kept.sum())) / max(before, 1)
        rollout.wm_selected = kept
    selected, total = sum_over_ranks([float(rollout.wm_selected.sum()), float(len(rollout))], ranks)
    rollout.wm_selected_frac = selected / total if total else 0.0
