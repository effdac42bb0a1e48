"""The update step: one optimiser step on one mini-batch of a prepared rollout.

``PaWModule.training_step`` reads as the table of contents; the pieces are here:

- ``loss_terms``: one forward of the trunk over ``[prompt | action | next_obs]`` rows, the policy head on
  action units (PPO-clip surrogate, low-variance KL to the reference, entropy bonus), PPO's clipped value
  loss, and ``world_model_loss`` on observation tokens (CMAE or CE), weighted per transition by PaW's
  callbacks. Every term divides by mini-batch-wide counts (``BatchTotals``), so micro-batches add up.
- ``micro_steps``: forward and backward of every micro-batch of the budget in force (the out-of-memory
  retry, in memory.py / step_memory.py, reruns it whole with half the budget), the finite-loss flag and,
  on measured steps, the WM term's own gradient (``add_wm_grads``).
- ``step_logs``: the step's summed terms as logged (``loss/``, ``paw/``, ``wm/``).
- at the optimiser step (Lightning's clipping hook): ``guard_gradients`` (clip, or drop a non-finite
  step's gradients on every rank), ``grad_term_logs`` (``grad/rl_norm``, ``grad/wm_norm``).

Functions take the model, the hyper-parameters and the callables they need (PaWModule wires them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from torch import Tensor, nn

from paw_lightning.errors import NonFiniteTrainingError
from paw_lightning.logprobs import head_stats, trunk_hidden
from paw_lightning.losses import ce_loss, clipped_policy_loss, clipped_value_loss, cmae_loss, explained_variance, low_var_kl, masked_mean
from paw_lightning.metrics import TokenMean
from paw_lightning.models import trunk_and_head
from paw_lightning.rollout.batch import BatchTotals, micro_batches
from paw_lightning.world_model import grad_term_norms, wm_term

NO_SHARE = {"rl": 1.0, "value": 1.0, "wm": 1.0}  # one process: every loss term as it is
JOINED = ("_values", "_targets")  # per-row logs of a micro-batch: concatenated over the step, not summed


# ----- the loss terms --------------------------------------------------------------------------------
def world_model_loss(hidden: Tensor, lm_head: nn.Module, batch: dict, weight: Tensor, totals: BatchTotals, hp,
                     wm_head: nn.Module | None) -> tuple[Tensor, dict]:
    """The WM term as added to the loss (with several processes: scaled by this rank's share) and its
    metrics' shares, over the rows with WM weight (see ``world_model.wm_term``); the token metrics go out
    as ``_``-keyed numerators over the mini-batch's totals (``step_logs`` feeds the means)."""
    head = wm_head if wm_head is not None else lm_head
    obs_mask = batch["obs_mask"]
    stats = head_stats(head, hidden, batch["input_ids"], obs_mask, 1.0, hp.head_chunk_size, batch["source"])
    if hp.wm_loss == "cmae":
        per_row, clipped = cmae_loss(stats.logp, obs_mask, hp.cmae_rho)
    else:
        per_row = ce_loss(stats.logp, obs_mask)
        clipped = torch.zeros_like(obs_mask)
    share = batch.get("loss_scale", NO_SHARE)
    if hp.wm_normalize == "minibatch":
        normaliser, scale = max(totals.wm_selected, 1.0), share["wm"]
    else:  # the update's selected share of this mini-batch's rows: a row weighs the same in every batch
        normaliser, scale = batch["wm_selected_frac"] * totals.rows, share["value"]
    term = wm_term(per_row, weight, normaliser, obs_mask, clipped, stats.correct, totals.wm_weight, totals.wm_tokens)
    logs = {
        "paw/wm_term": term.term.detach(),
        "paw/wm_loss": term.loss,
        "paw/wm_weight_mean": term.weight_mean,
        "_wm_token_acc": term.token_acc,
        "_clipped_token_frac": term.clipped_token_frac,
        "_token_acc_all_rows": (stats.correct & obs_mask).sum().float() / max(totals.obs_tokens, 1e-12),
    }
    return term.term * scale, logs


@dataclass
class Learner:
    """What a forward of the update reads: the model, the taken units' log-probs and entropies
    (``heads.policy_units`` with the chunk size bound), the critic (None without one), the WM term
    (``world_model_loss`` with hp and the WM head bound), the separate WM head (None when shared), and
    whether several processes train (DDP then needs a gradient of the WM head on every rank)."""

    model: nn.Module
    policy_units: Callable[[nn.Module, Tensor, dict], tuple[Tensor, Tensor]]
    values: Callable[[Tensor, dict], Tensor] | None
    wm_loss: Callable[..., tuple[Tensor, dict]]
    wm_head: nn.Module | None
    distributed: bool


def loss_terms(batch: dict, totals: BatchTotals, hp, learner: Learner) -> tuple[Tensor, Tensor | None, dict]:
    """One forward over a (micro-)batch: (the RL terms: policy + KL + entropy, plus PPO's value loss; the WM
    term, None when no row has WM weight; their logs). Their sum is the training loss. Every term divides
    by ``totals``, so the parts of a split mini-batch add up."""
    trunk, lm_head = trunk_and_head(learner.model)
    hidden = trunk_hidden(trunk, batch)
    mask = batch["unit_mask"]
    logp, entropy = learner.policy_units(learner.model, hidden, batch)
    policy_loss, clip_frac, approx_kl = clipped_policy_loss(
        logp, batch["old_logprobs"], batch["advantages"], mask, hp.clip_eps, totals.units
    )
    entropy_mean = masked_mean(entropy, mask, totals.units)
    # With several processes each term is scaled by this rank's share of the step's global counts
    # (distributed.balanced_minibatches): DDP's gradient mean is then the global token-mean's.
    share = batch.get("loss_scale", NO_SHARE)
    loss = policy_loss - hp.entropy_coef * entropy_mean
    logs = {"loss/policy": policy_loss, "loss/entropy": entropy_mean, "loss/clip_frac": clip_frac,
            "loss/approx_kl": approx_kl}
    if hp.kl_coef > 0:
        kl = low_var_kl(logp, batch["ref_logprobs"], mask, denominator=totals.units)
        loss = loss + hp.kl_coef * kl
        logs["loss/kl"] = kl
    loss = loss * share["rl"]
    if learner.values is not None:
        values = learner.values(hidden, batch).float()
        value_loss = clipped_value_loss(values, batch["old_values"], batch["value_targets"], hp.value_clip, totals.rows)
        loss = loss + hp.value_coef * value_loss * share["value"]
        logs["loss/value"] = value_loss
        logs["_values"], logs["_targets"] = values.detach(), batch["value_targets"]  # explained variance: over the whole step
    weight = batch["wm_weight"] * batch["wm_selected"].float()  # (B,)
    wm_loss = None
    if weight.sum() > 0:
        wm_loss, wm_logs = learner.wm_loss(hidden, lm_head, batch, weight, totals)
        logs |= wm_logs
    elif learner.wm_head is not None and learner.distributed:
        # DDP waits for a gradient of every trainable weight on every rank: the WM head gets a zero one
        loss = loss + 0.0 * sum(p.sum() for p in learner.wm_head.parameters())
    return loss, wm_loss, logs


# ----- micro-batches ---------------------------------------------------------------------------------
@dataclass
class StepResult:
    """One attempt of an update: the value to return to Lightning, the summed logs, the micro-batches, the
    WM term's accumulated gradient (grad-terms steps) and whether every loss so far was finite."""

    loss: Tensor
    parts: dict[str, Tensor]
    micros: list[dict]
    wm_grads: list[Tensor] | None
    loss_finite: Tensor | bool


def add_wm_grads(acc: list[Tensor] | None, wm_loss: Tensor | None, params: list[Tensor], accumulation: int) -> list[Tensor]:
    """``acc`` plus the WM term's own gradient (one extra backward through the kept graph), scaled as
    Lightning scales the loss under gradient accumulation; zeros where this batch has no WM term."""
    if wm_loss is None or not wm_loss.requires_grad:
        grads = [torch.zeros_like(p) for p in params]
    else:
        found = torch.autograd.grad(wm_loss * (1.0 / accumulation), params, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, found)]
    return grads if acc is None else [a + b for a, b in zip(acc, grads)]


@dataclass
class MicroPlan:
    """How ``micro_steps`` runs: the loss terms (``(batch, totals) -> (rl, wm, logs)``), Lightning's
    accumulation factor, whether it back-propagates every micro-batch itself (else Lightning does the
    last), the trainable weights when this step measures the WM gradient (None: not measured), and the
    zero whose backward is DDP's gradient all-reduce (``sync_tie``)."""

    terms: Callable[[dict, BatchTotals], tuple[Tensor, Tensor | None, dict]]
    accumulation: int
    backward_all: bool
    measured: list[Tensor] | None
    sync_tie: Callable[[], Tensor]


def micro_steps(batch: dict, totals: BatchTotals, plan: MicroPlan, wm_grads: list[Tensor] | None,
                loss_finite: Tensor | bool, budget: int | None) -> StepResult:
    """Forward and backward of every micro-batch of ``batch`` at ``budget``, starting from the step's
    ``wm_grads`` and ``loss_finite`` (the caller keeps the result's only when the attempt succeeds).

    Every micro-batch is back-propagated here, where DDP does not sync (inside its forward), so the
    gradient accumulates locally; the returned tensor carries the whole mini-batch's loss value and a zero
    whose backward (Lightning's) is DDP's one gradient all-reduce. So an update that runs out of memory
    can be redone whole with half the budget (``run_with_oom_retry``), from the same gradients and RNG,
    whatever micro-batch failed. Each term divides by mini-batch-wide counts (``BatchTotals``), so the
    micro-batches' losses and logs add up to the unsplit step's. (FSDP and fp16 loss scaling keep the
    last micro-batch's backward for Lightning; the step is then retried only up to that backward.)"""
    micros = micro_batches(batch, budget)
    parts: dict[str, Tensor] = {}
    value = last = None
    for i, micro in enumerate(micros):
        rl_loss, wm_loss, logs = plan.terms(micro, totals)
        loss = rl_loss if wm_loss is None else rl_loss + wm_loss
        if plan.measured is not None:
            wm_grads = add_wm_grads(wm_grads, wm_loss, plan.measured, plan.accumulation)
        loss_finite = torch.isfinite(loss.detach()) & loss_finite  # read at the optimiser step (no sync here)
        for key, part in logs.items():  # shares add up; the critic's values and targets are joined
            part = part.detach()
            parts[key] = part if key not in parts else torch.cat([parts[key], part]) if key in JOINED else parts[key] + part
        if plan.backward_all or i < len(micros) - 1:
            (loss / plan.accumulation).backward()
            value = loss.detach() if value is None else value + loss.detach()
        else:
            last = loss
    if last is not None:  # Lightning back-propagates the last micro-batch; the value is the mini-batch's
        return StepResult(last if value is None else last + value, parts, micros, wm_grads, loss_finite)
    return StepResult(value + plan.sync_tie(), parts, micros, wm_grads, loss_finite)


# ----- logs ------------------------------------------------------------------------------------------
def step_logs(parts: dict[str, Tensor], totals: BatchTotals, loss: Tensor, wm_token_acc: TokenMean,
              clipped_token_frac: TokenMean, wm_token_acc_all_rows: TokenMean) -> dict:
    """The step's summed terms as logged; the token-weighted WM metrics also feed their per-iteration means."""
    logs = {k: v for k, v in parts.items() if not k.startswith("_")}
    if "_values" in parts:
        logs["loss/explained_variance"] = explained_variance(parts["_values"], parts["_targets"]).nan_to_num(0.0)
    if "_wm_token_acc" in parts:
        wm_token_acc(parts["_wm_token_acc"], weight=totals.wm_tokens)
        clipped_token_frac(parts["_clipped_token_frac"], weight=totals.wm_tokens)
        wm_token_acc_all_rows(parts["_token_acc_all_rows"], weight=max(totals.obs_tokens, 1e-12))
        logs |= {"wm/token_acc": wm_token_acc, "paw/clipped_token_frac": clipped_token_frac,
                 "wm/token_acc_all_rows": wm_token_acc_all_rows}
    logs["loss/total"] = loss.detach()
    return logs


def grad_term_logs(wm: list[Tensor], params: list[Tensor], reduce_mean: Callable[[Tensor], Tensor] | None) -> dict[str, Tensor]:
    """``grad/rl_norm``, ``grad/wm_norm`` and their ratio from the step's gradient (before clipping): WM =
    its own accumulated gradient, RL = the total minus WM; with DDP (``reduce_mean``: the mean over ranks)
    both global."""
    total = [torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in params]
    if reduce_mean is not None:  # p.grad is already DDP's mean over ranks; the WM part must be too
        flat = reduce_mean(torch.cat([g.reshape(-1) for g in wm]))
        wm = list(torch.split(flat, [g.numel() for g in wm]))
        wm = [g.reshape(p.shape) for g, p in zip(wm, params)]
    rl_norm, wm_norm = grad_term_norms(total, wm)
    return {"grad/rl_norm": rl_norm, "grad/wm_norm": wm_norm, "grad/wm_over_rl": wm_norm / rl_norm.clamp(min=1e-12)}


# ----- the optimiser step's guard --------------------------------------------------------------------
def clip_and_norm(strategy, params: list[Tensor], max_norm: float) -> Tensor:
    """The gradients' total norm before clipping, after clipping them to ``max_norm`` (0 = no clipping).
    A non-finite norm leaves the gradients non-finite (the caller skips the step)."""
    max_norm = max_norm if max_norm > 0 else float("inf")
    sharded = getattr(getattr(strategy, "model", None), "clip_grad_norm_", None)
    if callable(sharded):  # FSDP: its own method sees every rank's shard
        return sharded(max_norm)
    if not params:
        return torch.zeros(())
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def guard_gradients(strategy, params: list[Tensor], grad_clip: float, loss_finite: Tensor | bool) -> tuple[Tensor, bool]:
    """(the pre-clip norm, whether the step is skipped): with a non-finite loss or gradient norm on any rank
    every rank drops its gradients (torch optimisers pass over parameters without one: no update, no state
    change); otherwise the gradient is clipped to ``grad_clip``."""
    norm = clip_and_norm(strategy, params, grad_clip)
    bad = not bool(torch.isfinite(norm) & loss_finite)
    skip = strategy.reduce_boolean_decision(bad, all=False)  # every rank skips together
    if skip:
        for p in params:
            p.grad = None
    return norm, skip


def too_many_skipped(in_a_row: int, skipped: int, hp) -> NonFiniteTrainingError:
    """The error that stops a run after ``max_skipped_steps`` skipped steps in a row, with what to do."""
    return NonFiniteTrainingError(
        f"{in_a_row} optimiser steps in a row had a non-finite loss or gradient "
        f"({skipped} skipped in all); the weights stay those of the last good step and no checkpoint "
        f"was written with them. Lower model.lr (now {hp.lr:g}), keep model.grad_clip on (now {hp.grad_clip:g})"
        f"{'' if hp.dtype == 'float32' else f' or train in float32 (now {hp.dtype})'}; then resume from the last "
        "checkpoint or start again."
    )


# ----- how the trainer runs the step -----------------------------------------------------------------
def accumulation(trainer) -> int:
    """Lightning's gradient accumulation factor (it divides the returned loss by it); 1 without a trainer."""
    return trainer.accumulate_grad_batches if trainer is not None else 1


def fp16_scaler(trainer) -> bool:
    """Whether fp16 loss scaling runs (its scaler sees one backward: no split, no retry)."""
    precision = str(trainer.precision) if trainer is not None else ""
    return "16" in precision and "bf16" not in precision


def backward_in_step(trainer) -> bool:
    """Whether the training step back-propagates every micro-batch itself: under a trainer, but not under
    FSDP (its reduce-scatter runs in each backward) nor fp16 loss scaling. Without a trainer (tests,
    benchmarks) the caller back-propagates the returned loss, as Lightning's backward would."""
    return trainer is not None and not (isinstance(trainer.strategy, FSDPStrategy) or fp16_scaler(trainer))


def sync_tie(trainer, params: list[Tensor], device: torch.device) -> Tensor:
    """A zero for Lightning's backward: under DDP it reaches every trainable weight, so that backward is
    DDP's gradient all-reduce of what the micro-batches accumulated; otherwise a lone leaf (no work)."""
    if trainer is not None and isinstance(trainer.strategy, DDPStrategy):
        return torch.stack([p.reshape(-1)[0] for p in params]).sum() * 0.0
    return torch.zeros((), device=device, requires_grad=True)


def grad_terms_step(trainer, every_n: int) -> bool:
    """Whether this optimiser step logs the per-term gradient norms (every rank decides alike); not under
    FSDP (sharded gradients) nor without a trainer or grad mode."""
    if every_n <= 0 or trainer is None or not torch.is_grad_enabled():
        return False
    if isinstance(trainer.strategy, FSDPStrategy):
        return False
    return trainer.global_step % every_n == 0


def adamw(params: list[Tensor], value_params: list[Tensor], hp) -> torch.optim.AdamW:
    """AdamW over the trainable weights; the critic's (PPO) in a group of its own at ``value_lr``."""
    value_ids = {id(p) for p in value_params}
    groups = [{"params": [p for p in params if id(p) not in value_ids]}]
    if value_params:
        groups.append({"params": value_params, "lr": hp.value_lr if hp.value_lr is not None else hp.lr})
    return torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
