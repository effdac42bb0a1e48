"""Memory on one device: updates that survive running out of memory, and the planner behind
``max_tokens_per_micro_batch: auto`` and ``gradient_checkpointing: auto``.

- **Out-of-memory retry** (``run_with_oom_retry``): an update or scoring pass that runs out of memory
  (CUDA's ``torch.OutOfMemoryError``, the CPU allocator's ``RuntimeError``, Python's ``MemoryError``) is
  undone by the caller's ``restore`` (gradients, RNG), the cached memory is freed, the micro-batch budget
  halves and the same rows run again. Micro-batches add up to the unsplit step (see rollout/batch.py), so
  the step taken is the one an unsplit run would take. When every row already ran alone, the run stops
  with ``RowTooLongError`` naming the row and the settings that shorten it.
- **The planner** (``choose_plan``, pure; ``probe_memory_line``, on a GPU): peak memory of an update is
  close to a line in the tokens it holds, ``fixed + per_token x tokens``. Two probe updates of one and two
  rows of the run's longest row measure that line (``torch.cuda.max_memory_allocated``), with and without
  gradient checkpointing as needed; the plan is the fastest setting that stays under the usable memory:
  no checkpointing when the whole mini-batch fits without it, else the largest budget with it.

How the training step uses them (the restore, the probe updates, the budget every process agrees on) is in
step_memory.py. See docs/memory.md for what takes memory in an update and what fits on which card.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from paw_lightning.errors import RowTooLongError

MARGIN = 0.15  # share of the usable memory the planner leaves free (fragmentation, the allocator's cache)
CPU_OOM_TEXT = "can't allocate memory"  # what the CPU allocator's RuntimeError says


def is_oom(err: BaseException) -> bool:
    """True for an out-of-memory error of CUDA, the CPU allocator or Python."""
    return isinstance(err, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(err, RuntimeError) and CPU_OOM_TEXT in str(err)
    )


def release_memory(device: torch.device) -> None:
    """Give back what the failed attempt left: unreachable tensors, and CUDA's cached blocks."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def row_too_long(longest: int, budget: int | None) -> RowTooLongError:
    return RowTooLongError(
        f"a training row of {longest} tokens does not fit in memory even alone (micro-batch budget "
        f"{budget if budget is not None else 'none'}). Shorten rows with data.max_prompt_tokens, data.max_obs_tokens "
        "or data.max_new_tokens, turn on model.gradient_checkpointing, or use a smaller model; the last "
        "checkpoint is kept: resume from it with --ckpt_path last."
    )


def halve_budget(budget: int | None, lengths: Sequence[int]) -> int:
    """The micro-batch budget after an out-of-memory error: half the padded tokens the attempt allowed (the
    whole mini-batch's, rows x longest, when it had no budget). Raises ``RowTooLongError`` when every row
    already ran alone (no micro-batch of two rows fits the budget)."""
    longest, shortest = max(lengths), min(lengths)
    allowed = budget if budget is not None else len(lengths) * longest
    if len(lengths) == 1 or allowed < 2 * shortest:
        raise row_too_long(longest, budget)
    return allowed // 2


def run_with_oom_retry(
    attempt: Callable[[int | None], Any], budget: int | None, lengths: Sequence[int], restore: Callable[[], None],
    device: torch.device,
) -> tuple[Any, int | None, int]:
    """``attempt(budget)`` until it does not run out of memory: after each failure ``restore()`` (the caller
    puts back gradients and RNG), free memory and halve the budget (``halve_budget``).

    Returns:
        (the attempt's result, the budget it ran with, the number of retries).
    """
    retries = 0
    while True:
        try:
            return attempt(budget), budget, retries
        except Exception as err:  # noqa: BLE001 - only out-of-memory errors are retried
            if not is_oom(err):
                raise
        # outside the except block: the failed attempt's frames and tensors are unreachable now
        restore()
        release_memory(device)
        budget = halve_budget(budget, lengths)
        retries += 1


@dataclass(frozen=True)
class MemoryLine:
    """Peak memory of an update as a line in its padded tokens: ``fixed + per_token x tokens`` (bytes)."""

    fixed: float
    per_token: float

    def peak(self, tokens: int) -> float:
        return self.fixed + self.per_token * tokens

    def tokens_within(self, usable: float) -> int:
        """The most tokens whose peak stays within ``usable`` bytes (0 when even the fixed part does not)."""
        if self.per_token <= 0:
            return 0 if self.fixed > usable else 2**62
        return max(0, math.floor((usable - self.fixed) / self.per_token))


def fit_memory_line(points: Sequence[tuple[int, float]]) -> MemoryLine:
    """The line through two (tokens, peak bytes) measurements; one measurement: all of it per token."""
    if len(points) == 1 or points[0][0] == points[-1][0]:
        tokens, peak = points[-1]
        return MemoryLine(0.0, peak / max(tokens, 1))
    (t0, p0), (t1, p1) = points[0], points[-1]
    per_token = max((p1 - p0) / (t1 - t0), 0.0)
    return MemoryLine(p0 - per_token * t0, per_token)


@dataclass(frozen=True)
class MemoryPlan:
    """What the planner chose, and why (``reason`` is logged once)."""

    gradient_checkpointing: bool
    max_tokens_per_micro_batch: int | None  # None: the whole mini-batch at once
    reason: str


def choose_plan(
    usable: float,
    minibatch_tokens: int,
    row_tokens: int,
    lines: dict[bool, MemoryLine],
    checkpointing: bool | str = "auto",
    budget: int | None | str = "auto",
) -> MemoryPlan:
    """The fastest setting whose measured peak stays within ``usable`` bytes.

    Args:
        usable: bytes an update may take (free memory, less ``MARGIN``).
        minibatch_tokens: padded tokens of the largest mini-batch (rows x the longest row).
        row_tokens: tokens of the longest row.
        lines: the measured memory line without (False) and with (True) gradient checkpointing; only the
            settings that ``checkpointing`` allows need one.
        checkpointing: ``auto``, or the user's True / False (kept).
        budget: ``auto``, or the user's number / None (kept).

    Returns:
        no checkpointing when the whole mini-batch fits without it, else the largest budget with it (for a
        fixed setting: the largest budget with that setting). Raises ``RowTooLongError`` when one row does
        not fit with the most frugal setting allowed.
    """
    options = [False, True] if checkpointing == "auto" else [bool(checkpointing)]
    gb = 1024**3
    for ckpt in options:
        line = lines[ckpt]
        name = "with" if ckpt else "without"
        if budget != "auto":  # the user's budget: the first setting under which it fits, else the most frugal
            tokens = minibatch_tokens if budget is None else min(budget, minibatch_tokens)
            if line.peak(tokens) <= usable or ckpt == options[-1]:
                return MemoryPlan(ckpt, budget, f"{tokens} tokens {name} checkpointing: {line.peak(tokens) / gb:.1f} of {usable / gb:.1f} GB")
            continue
        if line.peak(minibatch_tokens) <= usable:
            return MemoryPlan(ckpt, None, f"the whole mini-batch ({minibatch_tokens} tokens) fits {name} checkpointing: "
                                          f"{line.peak(minibatch_tokens) / gb:.1f} of {usable / gb:.1f} GB")
        if ckpt == options[-1]:
            tokens = line.tokens_within(usable)
            if tokens < row_tokens:
                raise row_too_long(row_tokens, tokens)
            return MemoryPlan(ckpt, tokens, f"{tokens} tokens per micro-batch {name} checkpointing: "
                                            f"{line.peak(tokens) / gb:.1f} of {usable / gb:.1f} GB")
    raise AssertionError("unreachable: the last option always returns")


def usable_cuda_memory(device: torch.device) -> float:
    """Bytes an update on ``device`` may take: what is free on the card plus what this process holds
    already (its cache; a colocated vLLM engine's share is neither), within a per-process cap
    (``torch.cuda.set_per_process_memory_fraction``), less ``MARGIN``."""
    free, total = torch.cuda.mem_get_info(device)
    reachable = free + torch.cuda.memory_reserved(device)
    fraction = torch.cuda.get_per_process_memory_fraction(device) if hasattr(torch.cuda, "get_per_process_memory_fraction") else 1.0
    return min(reachable, fraction * total) * (1.0 - MARGIN)


def cuda_peak(run: Callable[[], None], device: torch.device) -> float:
    """Peak allocated bytes on ``device`` while ``run()`` runs."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    torch.cuda.synchronize(device)
    return float(torch.cuda.max_memory_allocated(device))


def probe_memory_line(update: Callable[[int], None], row_tokens: int, peak: Callable[[Callable[[], None]], float]) -> MemoryLine:
    """Measure the memory line with two probe updates, of one and of two rows of ``row_tokens`` tokens:
    ``update(rows)`` runs forward and backward and leaves no gradient behind; ``peak(run)`` measures."""
    points = [(rows * row_tokens, peak(lambda rows=rows: update(rows))) for rows in (1, 2)]
    return fit_memory_line(points)


def probe_batch(rows: int, prompt: int, action: int, obs: int, pad_id: int, vocab: int, reference: bool, values: bool) -> dict:
    """A training mini-batch of ``rows`` synthetic generate-actor rows, ``prompt + action + obs`` tokens each
    (every action token a policy unit, every observation token in the WM loss): the planner's probe."""
    from paw_lightning.rollout.batch import training_batch
    from paw_lightning.rollout.types import Rollout, Transition

    ids = [i % vocab for i in range(prompt + action + obs)]
    ids = [(i + 1) % vocab if i == pad_id else i for i in ids]
    transitions = [
        Transition(prompt_ids=ids[:prompt], action_ids=ids[prompt:prompt + action], action_text="", obs_ids=ids[prompt + action:],
                   next_obs="", reward=0.0, done=False, valid=True, group_id=0, episode_id=r, step=0, task_type="")
        for r in range(rows)
    ]
    rollout = Rollout(transitions=transitions, episodes=[], num_groups=1, mode="generate", temperature=1.0)
    rollout.old_logprobs = [torch.full((action,), -1.0) for _ in range(rows)]
    rollout.ref_logprobs = [torch.full((action,), -1.0) for _ in range(rows)] if reference else None
    rollout.advantages = torch.ones(rows)
    rollout.wm_selected = torch.ones(rows, dtype=torch.bool)
    rollout.wm_weight = torch.ones(rows)
    rollout.wm_selected_frac = 1.0
    if values:
        rollout.old_values, rollout.value_targets = torch.zeros(rows), torch.zeros(rows)
    return training_batch(rollout, list(range(rows)), pad_id)
