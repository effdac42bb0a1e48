"""The output heads PaW reads off the trunk's hidden states: the policy's taken units, the critic's value,
the world model's own head, and the reference policy.

Both the rollout's scoring passes (rollout_prep.py) and the update step (update.py) call these; they take
the model and the batch, never the LightningModule.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn

from paw_lightning.logprobs import candidate_policy, candidate_scores, categorical_entropy, head_stats
from paw_lightning.models import trunk_and_head
from paw_lightning.rollout.batch import SCORE, prompt_end


def policy_units(model: nn.Module, hidden: Tensor, batch: dict, chunk: int) -> tuple[Tensor, Tensor]:
    """(B, A) log-probs and entropies of the taken units under ``model``'s output head: the response tokens
    (generate actor) or the chosen candidate among the scored ones (score actor), ``chunk`` hidden states
    through the head at once."""
    _, head = trunk_and_head(model)
    temperature = max(float(batch.get("temperature", 1.0)), 1e-6)
    if batch["mode"] == SCORE:
        stats = head_stats(head, hidden, batch["input_ids"], batch["action_mask"], 1.0, chunk, batch["source"])
        scores = candidate_scores(stats.logp, batch["action_candidate"], batch["num_candidates"])
        log_probs = candidate_policy(scores, temperature)
        chosen = log_probs.gather(1, batch["chosen"].unsqueeze(1))
        return chosen, categorical_entropy(log_probs).unsqueeze(1)
    stats = head_stats(head, hidden, batch["input_ids"], batch["action_mask"], temperature, chunk, batch["source"])
    return stats.logp, stats.entropy


def critic_values(value_head: nn.Module, hidden: Tensor, batch: dict) -> Tensor:
    """(B,) critic values V(h_t), read at each row's last prompt token."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    state = hidden[rows, prompt_end(batch)]
    return value_head(state.to(value_head.weight.dtype)).squeeze(-1)


def new_wm_head(model: nn.Module) -> nn.Linear:
    """A separate world-model head (``world_model: head``), initialised from the LM head."""
    _, lm_head = trunk_and_head(model)
    head = nn.Linear(lm_head.in_features, lm_head.out_features, bias=False)
    head.weight.data.copy_(lm_head.weight.data)
    return head


def new_value_head(model: nn.Module) -> nn.Linear:
    """PPO's critic head on the trunk's hidden size, zero-initialised (every value starts at 0)."""
    _, lm_head = trunk_and_head(model)
    head = nn.Linear(lm_head.in_features, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def reference_policy(model: nn.Module, ref_model: nn.Module | None, uses_lora: bool):
    """(context, model) that compute the reference policy: the LoRA model with its adapter disabled, or
    the frozen copy of the initial model."""
    if uses_lora:
        return model.disable_adapter(), model
    return nullcontext(), ref_model


def trainable(module: nn.Module) -> list[Tensor]:
    """The weights the optimiser updates, in ``module.parameters()`` order."""
    return [p for p in module.parameters() if p.requires_grad]


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch with its tensors on ``device`` (other entries as they are)."""
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
