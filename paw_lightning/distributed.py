"""The few collectives PaW needs when Lightning runs several processes (DDP, FSDP), and how the work splits.

How an iteration splits over N processes (ranks):

- every rank plays ``data.num_groups`` groups of ``data.group_size`` episodes (like Lightning's
  per-device batch size: the update holds N x num_groups groups); a group, its GRPO baseline and its
  lambda_g live on one rank. The ranks' task seeds are consecutive slices of one draw, so N ranks play
  the tasks that one process with N x num_groups groups would play.
- the statistics the paper defines over the whole update are global: the top-alpha action-entropy
  selection, REINFORCE++/PPO advantage whitening, and the episode and PaW metrics.
- every rank runs the same number of optimisation steps: ``ceil(max rank transitions / mini_batch_size)``
  per PPO epoch, each rank's shuffled transitions split into that many near-equal mini-batches; each
  mini-batch carries its share of the step's global token counts (``loss_scale``), so that DDP's mean of
  the ranks' gradients is the gradient of the token-mean loss over all ranks' rows of that step.

With one process nothing here runs a collective, and the single-process code paths are unchanged.
The helpers take a ``Ranks`` (rank, world size, gather functions) so that they are testable with a
gloo group or a fake one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from paw_lightning.advantages import whiten
from paw_lightning.selection import top_fraction_mask
from paw_lightning.world_model import dedup_mask

# (shape) on every rank -> (world, shape); the same shape on every rank.
AllGather = Callable[[Tensor], Tensor]


def _local_gather(tensor: Tensor) -> Tensor:
    return tensor.unsqueeze(0)


def _local_gather_object(obj: Any) -> list[Any]:
    return [obj]


@dataclass
class Ranks:
    """This process's place among the training processes and the gathers PaW uses.

    Args:
        rank: this process's global rank.
        world_size: the number of processes.
        all_gather: tensor -> ``(world_size, *tensor.shape)``, identical shapes on every rank.
        all_gather_object: picklable object -> list of every rank's object, in rank order.
    """

    rank: int = 0
    world_size: int = 1
    all_gather: AllGather = field(default=_local_gather, repr=False)
    all_gather_object: Callable[[Any], list[Any]] = field(default=_local_gather_object, repr=False)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def of(cls, trainer) -> "Ranks":
        """The trainer's processes (one process when there is no trainer or a single device)."""
        if trainer is None or trainer.world_size <= 1:
            return cls()
        device, world_size = trainer.strategy.root_device, trainer.world_size

        # torch.distributed directly: Lightning's strategy.all_gather goes through the autograd-aware
        # (and deprecated) torch.distributed.nn path, which these no-grad statistics do not need.
        def gather(tensor: Tensor) -> Tensor:
            local = tensor.to(device).contiguous()  # NCCL gathers GPU tensors only; the rollout's live on the CPU
            out = [torch.empty_like(local) for _ in range(world_size)]
            torch.distributed.all_gather(out, local)
            return torch.stack(out).to(tensor.device)

        def gather_object(obj: Any) -> list[Any]:
            out: list[Any] = [None] * world_size
            torch.distributed.all_gather_object(out, obj)
            return out

        return cls(trainer.global_rank, trainer.world_size, gather, gather_object)


def gather_varlen(values: Tensor, ranks: Ranks) -> list[Tensor]:
    """Every rank's ``values`` (their first dimension may differ), in rank order."""
    if not ranks.distributed:
        return [values]
    sizes = ranks.all_gather(torch.tensor([values.shape[0]], dtype=torch.long)).reshape(-1).tolist()
    padded = values.new_zeros((max(sizes), *values.shape[1:]))
    padded[: values.shape[0]] = values
    gathered = ranks.all_gather(padded)
    return [gathered[r, :n] for r, n in enumerate(sizes)]


def sum_over_ranks(values: Sequence[float], ranks: Ranks) -> list[float]:
    """Element-wise sum of a few numbers over all ranks (float64, so counts stay exact)."""
    if not ranks.distributed:
        return list(values)
    return ranks.all_gather(torch.tensor(list(values), dtype=torch.float64)).sum(0).tolist()


def global_top_fraction_mask(scores: Tensor, ratio: float, ranks: Ranks) -> Tensor:
    """This rank's part of ``top_fraction_mask`` over every rank's scores, concatenated in rank order
    (ties go to the lower rank, then the earlier transition)."""
    parts = gather_varlen(scores, ranks)
    mask = top_fraction_mask(torch.cat(parts), ratio)
    start = sum(len(p) for p in parts[: ranks.rank])
    return mask[start : start + len(scores)]


def global_dedup_mask(keys: Sequence[Any], selected: Tensor, ranks: Ranks) -> Tensor:
    """This rank's part of ``world_model.dedup_mask`` over every rank's transitions in rank order (a
    repeat is dropped wherever its first selected copy lives)."""
    if not ranks.distributed:
        return dedup_mask(keys, selected)
    parts = ranks.all_gather_object((list(keys), selected.tolist()))
    every_key = [k for part, _ in parts for k in part]
    kept = dedup_mask(every_key, torch.tensor([c for _, flags in parts for c in flags], dtype=torch.bool))
    start = sum(len(part) for part, _ in parts[: ranks.rank])
    return kept[start : start + len(keys)]


def global_whiten(values: Tensor, ranks: Ranks) -> Tensor:
    """``whiten`` with the mean and std of every rank's values (one process: plain ``whiten``)."""
    if not ranks.distributed:
        return whiten(values)
    return whiten(values, population=torch.cat(gather_varlen(values, ranks)))


def split_steps(order: np.ndarray, steps: int) -> list[np.ndarray]:
    """``order`` cut into ``steps`` consecutive chunks whose sizes differ by at most one (some are empty
    when ``len(order) < steps``)."""
    return np.array_split(order, steps)


def loss_scales(local: Tensor, world: Tensor, world_size: int) -> Tensor:
    """(S, K) share of each step's loss terms: local_count * world_size / global_count (0 where the
    global count is 0). A rank's token-mean over its rows times this share, averaged over the ranks
    as DDP averages gradients, is the token-mean over every rank's rows.

    Args:
        local: (S, K) this rank's counts per step and loss term (units, rows, selected WM rows).
        world: (S, K) the counts summed over the ranks.
        world_size: N.
    """
    local, world = local.to(torch.float64), world.to(torch.float64)
    return torch.where(world > 0, local * world_size / world.clamp(min=1.0), torch.zeros_like(world))


# the loss terms that training_step scales, and what each one is a mean over
SCALE_TERMS = ("rl", "value", "wm")  # action units (policy, KL, entropy), rows (critic), selected WM rows


def step_counts(rollout, indices: Sequence[int]) -> list[float]:
    """The counts that normalise each loss term of a mini-batch of ``rollout`` (see ``SCALE_TERMS``)."""
    if rollout.mode == "score":
        units = len(indices)
    else:
        units = sum(len(rollout.transitions[i].action_ids) for i in indices)
    selected = int(rollout.wm_selected[list(indices)].sum()) if len(indices) else 0
    return [float(units), float(len(indices)), float(selected)]


def balanced_minibatches(
    rollout, epochs: int, batch_size: int, pad_id: int, rng: np.random.Generator, ranks: Ranks, build
) -> Iterator[dict]:
    """``epochs`` shuffled passes over this rank's rollout in as many mini-batches as every other rank.

    One all-reduce agrees on the step count (from the rank with the most transitions); one all-gather
    sums each step's counts, from which every batch gets its ``loss_scale``. A rank with fewer
    transitions than steps fills its empty steps with one zero-weight row (``loss_scale`` 0): DDP needs
    every rank in every step.

    Args:
        build: ``(rollout, indices, pad_id) -> batch`` (``rollout.batch.training_batch``).
    """
    n = len(rollout)
    steps = max(1, math.ceil(int(ranks.all_gather(torch.tensor([n])).max()) / batch_size))
    plan = [split_steps(rng.permutation(n), steps) for _ in range(epochs)]
    chunks = [chunk.tolist() for epoch in plan for chunk in epoch]
    local = torch.tensor([step_counts(rollout, c) for c in chunks], dtype=torch.float64)  # (S, 3)
    scales = loss_scales(local, ranks.all_gather(local).sum(0), ranks.world_size).tolist()
    for chunk, scale in zip(chunks, scales):
        if chunk:
            batch = build(rollout, chunk, pad_id)
        else:  # a filler row: computed, but weighs nothing
            batch = build(rollout, [0], pad_id)
            batch["unit_mask"] = torch.zeros_like(batch["unit_mask"])
            batch["wm_selected"] = torch.zeros_like(batch["wm_selected"])
            batch["wm_weight"] = torch.zeros_like(batch["wm_weight"])
        batch["loss_scale"] = dict(zip(SCALE_TERMS, scale))
        yield batch


# ----- FSDP ---------------------------------------------------------------------------------------
def decoder_layer_policy(module: torch.nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
    """FSDP auto-wrap policy: one FSDP unit per transformer block (any module whose class name ends in
    ``DecoderLayer``: Qwen2, Llama, Mistral, ...), so that one block's weights are gathered at a time."""
    return True if recurse else type(module).__name__.endswith("DecoderLayer")


def fsdp_defaults(strategy, per_layer: bool = True) -> None:
    """Give Lightning's FSDP strategy what PaWModule needs, unless the user set it: ``use_orig_params``
    (LoRA and the frozen reference mix trainable and frozen weights, which FSDP's flat parameters
    refuse otherwise) and, with ``per_layer``, one FSDP unit per decoder layer. Call it before the
    strategy wraps the model."""
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(strategy, FSDPStrategy):
        strategy.kwargs.setdefault("use_orig_params", True)
        if per_layer:
            strategy.kwargs.setdefault("auto_wrap_policy", decoder_layer_policy)


def full_params(trainer) -> contextlib.AbstractContextManager:
    """Under FSDP, the whole model's weights on every process (not written back) while the rollout and
    its scoring pass run, which happen outside the sharded training forward; otherwise nothing."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    model = getattr(trainer.strategy, "model", None) if trainer is not None else None
    if isinstance(model, FullyShardedDataParallel):
        return FullyShardedDataParallel.summon_full_params(model, writeback=False)
    return contextlib.nullcontext()
