"""The checks on ``PaWModule``'s options: their ranges (cheap, so the CLI runs them on the parsed config
before any model loads) and the trainer settings the module refuses (at ``setup``, which also sets the
FSDP defaults it needs). The options
themselves are declared, with their documentation, in ``PaWModule.__init__``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from paw_lightning.choices import check_choices
from paw_lightning.distributed import fsdp_defaults
from paw_lightning.models import check_model_options, check_model_source
from paw_lightning.step_memory import AUTO


def check_options(options: dict, init: Callable) -> None:
    """Raise ValueError on an option of ``options`` (the module's constructor ``init`` gives the defaults of
    those not set) outside its range or its ``Literal`` choices; options ``init`` does not take are ignored."""
    defaults = {k: p.default for k, p in inspect.signature(init).parameters.items() if k != "self"}
    o = defaults | options
    check_choices(init, o)
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


def check_trainer_settings(trainer, max_tokens_per_micro_batch, uses_lora: bool) -> None:
    """Raise ValueError on a trainer setting the module refuses: Lightning's own gradient clipping (the
    module clips, and skips non-finite steps, itself) and fp16 loss scaling with micro-batches. Then set
    the FSDP defaults the module needs, before the strategy wraps it."""
    if trainer.gradient_clip_val is not None:
        raise ValueError(
            f"trainer.gradient_clip_val={trainer.gradient_clip_val} is not used: set model.grad_clip instead "
            "(PaWModule clips, and skips non-finite steps, in Lightning's clipping hook)"
        )
    if max_tokens_per_micro_batch is not None and "16" in str(trainer.precision) and "bf16" not in str(trainer.precision):
        raise ValueError(
            f"max_tokens_per_micro_batch does not work with trainer.precision={trainer.precision} (its loss scaler "
            "sees only the last micro-batch): use bf16-mixed or 32-true, or set max_tokens_per_micro_batch to null"
        )
    # With LoRA the model stays one FSDP unit: per-layer units trip a torch FSDP assertion on PEFT models
    # with tied embeddings.
    fsdp_defaults(trainer.strategy, per_layer=not uses_lora)
