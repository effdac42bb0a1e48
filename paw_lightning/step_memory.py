"""The update step's memory, as the training step uses memory.py: the planner's probe that resolves
``auto`` at the first update, what an out-of-memory retry puts back, the budget every process agrees
on after a step, and the ``perf/`` memory logs. See docs/memory.md.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from paw_lightning.distributed import Ranks
from paw_lightning.memory import (
    MemoryLine, MemoryPlan, choose_plan, cuda_peak, is_oom, probe_batch, probe_memory_line, usable_cuda_memory,
)
from paw_lightning.models import is_checkpointing, set_gradient_checkpointing

AUTO = "auto"  # max_tokens_per_micro_batch / gradient_checkpointing: the memory planner decides (memory.py)


def step_restorer(params: list[Tensor], device: torch.device) -> Callable[[], None]:
    """What puts the step's starting state back before an out-of-memory retry: the gradients (zero, or
    those of the accumulation window's earlier batches) and the RNG. (The step's own records, the WM
    gradient and the finite-loss flag, are kept by the caller only from the attempt that succeeds.)"""
    window = [None if p.grad is None else p.grad.detach().clone() for p in params] \
        if any(p.grad is not None for p in params) else None
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore() -> None:
        for i, p in enumerate(params):
            p.grad = None if window is None or window[i] is None else window[i].clone()
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, device)

    return restore


def agree_on_budget(budget: int | None, new_retries: int, ranks: Ranks) -> tuple[int | None, int]:
    """(the budget in force from the next step, the retries to count into ``oom_retries``): with several
    processes every process's retries, and every process adopts the smallest budget in force, so a retry on
    one process (its own memory ran out) shrinks every process's next steps alike. Correctness does not
    need it: micro-batches never communicate, so the processes may take different numbers of them."""
    if not ranks.distributed:
        return budget, new_retries
    gathered = ranks.all_gather_object((budget, new_retries))
    budgets = [b for b, _ in gathered if b is not None]
    return (min(budgets) if budgets else None), sum(n for _, n in gathered)


def memory_logs(budget: int | None, oom_retries: int, model: nn.Module, plan_logs: dict[str, float],
                device: torch.device) -> dict[str, float]:
    """``perf/`` memory figures of this step: the budget in force (0 = the whole mini-batch at once),
    checkpointing, out-of-memory retries so far, and on a GPU the step's peak allocated GB."""
    logs = {"perf/micro_batch_budget": float(budget or 0), "perf/oom_retries": float(oom_retries),
            "perf/gradient_checkpointing": float(is_checkpointing(model))} | plan_logs
    if device.type == "cuda":
        logs["perf/peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1024**3
    return logs


def plan_memory(hp, model: nn.Module, ranks: Ranks, device: torch.device, batch: dict, data,
                probe_line: Callable[[bool, int, int, int], MemoryLine]) -> tuple[MemoryPlan, dict[str, float]]:
    """Resolve ``auto`` once, at the first update: on a GPU by probe updates (``probe_plan``; ``data``: the
    DataModule's hparams or None), on a CPU as off / whole mini-batch. With several processes every one
    takes the most frugal plan (checkpointing if any needs it, the smallest budget). Sets the model's
    checkpointing; returns the plan and its logs (``perf/plan_usable_gb`` on a GPU)."""
    ckpt, budget = hp.gradient_checkpointing, hp.max_tokens_per_micro_batch
    logs: dict[str, float] = {}
    if device.type == "cuda":
        plan, logs = probe_plan(batch, hp, data, device, probe_line)
    else:
        plan = MemoryPlan(ckpt is True, None if budget == AUTO else budget,
                          "CPU: auto is no checkpointing and the whole mini-batch (an out-of-memory error halves the budget)")
    if ranks.distributed:
        plans = ranks.all_gather_object(plan)
        budgets = [p.max_tokens_per_micro_batch for p in plans if p.max_tokens_per_micro_batch is not None]
        plan = MemoryPlan(any(p.gradient_checkpointing for p in plans), min(budgets) if budgets else None, plan.reason)
    set_gradient_checkpointing(model, plan.gradient_checkpointing)
    rank_zero_info(f"paw memory plan: gradient checkpointing {'on' if plan.gradient_checkpointing else 'off'}, "
                   f"micro-batch budget {plan.max_tokens_per_micro_batch or 'none (whole mini-batch)'}: {plan.reason}")
    return plan, logs


def probe_plan(batch: dict, hp, data, device: torch.device,
               probe_line: Callable[[bool, int, int, int], MemoryLine]) -> tuple[MemoryPlan, dict[str, float]]:
    """The GPU plan from probe updates of synthetic rows of the run's longest row (``data``: the
    DataModule's hparams, None without one), one memory line per checkpointing setting it needs; and its
    ``perf/plan_usable_gb`` log."""
    longest = int(batch["attention_mask"].sum(dim=1).max())
    if data is not None:
        prompt, action, obs = data.max_prompt_tokens, data.max_new_tokens, data.max_obs_tokens * hp.wm_horizon
        row_tokens, rows = max(prompt + action + obs, longest), max(data.mini_batch_size, len(batch["chosen"]))
    else:
        row_tokens, rows = longest, len(batch["chosen"])
        prompt, action, obs = row_tokens // 2, row_tokens // 4, row_tokens - row_tokens // 2 - row_tokens // 4
    prompt += row_tokens - (prompt + action + obs)  # a longer real row: its extra length goes to the prompt
    usable = usable_cuda_memory(device)
    lines: dict[bool, MemoryLine] = {}
    for ckpt in ([False, True] if hp.gradient_checkpointing == AUTO else [bool(hp.gradient_checkpointing)]):
        lines[ckpt] = probe_line(ckpt, prompt, action, obs)
        if lines[ckpt].peak(rows * row_tokens) <= usable:
            break
    plan = choose_plan(usable, rows * row_tokens, row_tokens, lines, hp.gradient_checkpointing, hp.max_tokens_per_micro_batch)
    return plan, {"perf/plan_usable_gb": usable / 1024**3}


def probe_line(model: nn.Module, terms: Callable, params: list[Tensor], tokenizer, reference: bool, critic: bool,
               device: torch.device, checkpointing: bool, prompt: int, action: int, obs: int) -> MemoryLine:
    """The measured memory line of one checkpointing setting: probe updates (``terms``: the loss terms of
    a batch) of synthetic rows; a probe that runs out of memory gives a line that fits nothing."""
    set_gradient_checkpointing(model, checkpointing)

    def update(rows: int) -> None:
        probe = probe_batch(rows, prompt, action, obs, tokenizer.pad_token_id, len(tokenizer), reference, critic)
        probe = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in probe.items()}
        with torch.random.fork_rng(devices=[device]):
            rl_loss, wm_loss, _ = terms(probe)
            (rl_loss if wm_loss is None else rl_loss + wm_loss).backward()
        for p in params:
            p.grad = None

    try:
        return probe_memory_line(update, prompt + action + obs, lambda run: cuda_peak(run, device=device))
    except Exception as err:  # noqa: BLE001
        if not is_oom(err):
            raise
    for p in params:
        p.grad = None
    torch.cuda.empty_cache()
    return MemoryLine(float("inf"), 0.0)
