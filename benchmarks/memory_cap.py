"""Card-size caps and memory bookkeeping for the GPU benchmarks.

``apply_memory_cap`` limits this process's CUDA caching allocator to N GiB of the device
(``torch.cuda.set_per_process_memory_fraction``), so "fits a 24 GB card" is measured, not inferred.
The cap covers PyTorch's allocator only: a real card also holds the CUDA context (a few hundred MB),
so a peak within about 1 GB of the cap is marginal. ``settle`` brings the allocator back to what is
still referenced (collect, empty the cache) and starts a fresh peak; ``peak_memory`` reads the peaks
since then; ``is_oom`` tells an out-of-memory error (a result to record under a cap) from other errors.
On CPU every figure is ``None`` and the cap is recorded but not applied.
"""

from __future__ import annotations

import gc

import torch

GIB = 2**30


def on_cuda(device: str) -> bool:
    return str(device).startswith("cuda") and torch.cuda.is_available()


def apply_memory_cap(cap_gb: float | None, device: str) -> dict:
    """Cap the allocator at ``cap_gb`` GiB (``None`` or 0: no cap) and describe the cap for the report."""
    if not cap_gb:
        return {"memory_cap_gb": None, "cap_applied": False}
    if not on_cuda(device):
        return {"memory_cap_gb": cap_gb, "cap_applied": False, "cap_note": "not applied: no CUDA device"}
    total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    fraction = cap_gb * GIB / total
    if fraction > 1:
        raise ValueError(f"--memory_cap_gb {cap_gb} is more than the device's {total / GIB:.1f} GiB: "
                         "drop the cap or give a smaller one")
    torch.cuda.set_per_process_memory_fraction(fraction, torch.device(device))
    return {"memory_cap_gb": cap_gb, "cap_applied": True, "cap_fraction": fraction, "device_total_gib": total / GIB}


def settle(device: str) -> float | None:
    """Free what nothing references (reference cycles included), empty the allocator's cache and start a
    fresh peak; the GB still allocated (``None`` on CPU)."""
    gc.collect()
    if not on_cuda(device):
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated() / 1e9


def peak_memory(device: str) -> dict:
    """Peak allocated and reserved GB since the last ``settle`` (``None`` on CPU)."""
    if not on_cuda(device):
        return {"peak_allocated_gb": None, "peak_reserved_gb": None}
    return {"peak_allocated_gb": torch.cuda.max_memory_allocated() / 1e9,
            "peak_reserved_gb": torch.cuda.max_memory_reserved() / 1e9}


def is_oom(err: BaseException) -> bool:
    """Whether ``err`` is the allocator running out of memory (the cap's result, not a bug)."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(err, oom_type) or "out of memory" in str(err).lower()


def oom_result(err: BaseException) -> dict:
    """The report of a step that ran out of memory: ``oom`` and the error's first line."""
    return {"oom": True, "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]}
