"""The process's one vLLM engine: its settings, its build (after the checks of vllm_compat.py), its sleep
state and its shutdown. ``VLLMEngine`` (vllm_engine.py) runs the rollouts on it.

One ``vllm.LLM`` per process, reused by a later fit with equal settings (a notebook, the experiment
runner, the tests). What belongs to that engine rather than to one ``VLLMEngine`` lives here, in
``_LIVE``: how it sleeps (0 awake, 1 weights in host memory, 2 weights dropped) and whether its
weights are valid (not after a level-2 sleep until a reload). A sleeping engine is woken before it is
handed to another fit (vLLM pauses its scheduler until it is fully awake) or shut down (shutting a
sleeping engine down gives CUDA driver errors, vLLM issue #36651).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from paw_lightning.rollout import vllm_compat

log = logging.getLogger(__name__)

LoraSync = Literal["auto", "merged", "adapter"]


@dataclass(frozen=True)
class VLLMSettings:
    """What the engine is built with (the DataModule's ``vllm_*`` options); equal settings share one engine.

    Args:
        folder: HF folder (or hub id) of the base model, with its tokenizer.
        dtype: weights and compute dtype of the engine (``bfloat16`` is the fast one on CPU and GPU).
        max_model_len: longest prompt + response.
        kv_cache_gib: CPU only: KV cache size.
        gpu_memory_utilization: GPU only: the share of this process's GPU that vLLM may take (the trainer needs the rest).
        lora_sync: ``merged`` or ``adapter`` (``auto`` resolved by ``resolve_lora_sync``).
        lora_rank: the adapter's rank (``adapter`` mode).
        sleep: GPU only: release the engine's memory between rollouts.
        seed: the engine's own seed (the DataModule adds the rank: every process samples its own way).
        trust_remote_code: passed to vLLM.
        rank: this training process's global rank.
        local_rank: its rank on this machine (on GPUs: the device its engine runs on, as the trainer's).
        world_size: the training processes; above 1, the engine joins the trainer's process group through
            vLLM's ``external_launcher`` (tensor parallel size 1: one whole engine per process).
        device: the trainer's device (``cpu``, ``cuda:1``): a GPU engine must run on it, and sleeping
            only pays when the trainer shares the GPU.
    """

    folder: str
    dtype: str = "bfloat16"
    max_model_len: int = 4096
    kv_cache_gib: float = 2.0
    gpu_memory_utilization: float = 0.3
    lora_sync: str = "merged"
    lora_rank: int = 0
    sleep: bool = True
    seed: int = 0
    trust_remote_code: bool = False
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str = "cpu"


def on_gpu() -> bool:
    """Whether vLLM runs on a GPU in this process (its platform: CUDA or ROCm)."""
    return vllm_compat.gpu_platform()


def resolve_lora_sync(lora_sync: str, lora_rank: int) -> str:
    """``merged``/``adapter`` from the option: adapters only exist with LoRA; ``auto`` is per device."""
    if lora_rank <= 0:
        return "merged"
    if lora_sync == "auto":
        return "adapter" if on_gpu() else "merged"
    return lora_sync


# the one engine of this process: {"settings": VLLMSettings, "llm": vllm.LLM, "owns_group": bool,
# "sleep_level": 0 awake / 1 / 2 (weights dropped), "weights_valid": False after level 2 until a reload}
_LIVE: dict[str, object] = {}


def _prepare_environment(settings: VLLMSettings) -> None:
    # In-process engine: no __main__ guard needed, no core reserved for an engine process, and the
    # weight sync and DDP reach the engine's workers directly.
    vllm_compat.force_in_process()
    # vLLM caps torch at one thread unless OMP_NUM_THREADS is set, and it cannot be changed afterwards.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(torch.get_num_threads(), 1)))
    if not on_gpu():
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = f"{settings.kv_cache_gib:g}"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if settings.world_size > 1:
        # external_launcher reads these (Lightning exports LOCAL_RANK but not RANK); MASTER_ADDR/PORT
        # are the trainer's, and the group already exists, so vLLM joins it instead of making its own.
        os.environ |= {"RANK": str(settings.rank), "LOCAL_RANK": str(settings.local_rank), "WORLD_SIZE": str(settings.world_size)}


def check_process_group(settings: VLLMSettings) -> None:
    """With several processes the engine must join the trainer's process group: vLLM creates a group only
    when none exists, and one made before the trainer's makes Lightning fail ("initialize the default
    process group twice")."""
    if settings.world_size <= 1:
        return
    dist = torch.distributed
    found = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 0
    if found != settings.world_size:
        raise RuntimeError(
            f"the vLLM engine of process {settings.rank} of {settings.world_size} must be created after the trainer's "
            f"process group ({found or 'none'} found): let RolloutDataModule build it at the first rollout, inside trainer.fit"
        )


def sleeps(settings: VLLMSettings) -> bool:
    """The engine sleeps during updates: asked for, vLLM on a GPU and the trainer on one too."""
    return settings.sleep and on_gpu() and torch.device(settings.device).type == "cuda"


def check_settings(settings: VLLMSettings) -> None:
    """Everything vLLM would refuse mid-build or mid-run, refused here with one line (see vllm_compat)."""
    vllm_compat.check_vllm_api()
    if on_gpu():
        # vLLM takes cuda:<local rank> (cuda:0 with one process), whichever the trainer's device is
        engine_device = torch.device("cuda", settings.local_rank if settings.world_size > 1 else 0)
        vllm_compat.check_device(torch.device(settings.device), engine_device.index)
        vllm_compat.check_dtype(settings.dtype, engine_device)
        vllm_compat.check_sleep_allocator(sleeps(settings), vllm_compat.vllm_version())


def engine_kwargs(settings: VLLMSettings) -> dict:
    """The ``vllm.LLM`` arguments for these settings (checks the trainer's process group with several processes)."""
    kwargs = dict(
        model=settings.folder,
        tokenizer=settings.folder,
        dtype=settings.dtype,
        seed=settings.seed,
        max_model_len=settings.max_model_len,
        enforce_eager=not on_gpu(),  # CPU: 3 s to start eager vs ~55 s compiled, for ~25 % speed
        enable_prefix_caching=True,
        logprobs_mode="processed_logprobs",  # after temperature, as the trainer computes them
        trust_remote_code=settings.trust_remote_code,
    )
    if on_gpu():
        kwargs |= dict(gpu_memory_utilization=settings.gpu_memory_utilization, enable_sleep_mode=sleeps(settings))
    if settings.lora_sync == "adapter":
        # vLLM takes only some ranks (1, 8, 16, 32, ...): the smallest that holds the adapter's
        kwargs |= dict(enable_lora=True, max_lora_rank=vllm_compat.served_lora_rank(settings.lora_rank), max_loras=1)
    if settings.world_size > 1:
        # One engine per process in the trainer's group (TRL's colocate mode); the default executor
        # would also join it but give every process local rank 0 (on GPUs: every engine on cuda:0).
        check_process_group(settings)
        kwargs |= dict(distributed_executor_backend="external_launcher", tensor_parallel_size=1)
    return kwargs


def shared_llm(settings: VLLMSettings):
    """The process's vLLM engine for these settings (an engine with other settings is shut down first)."""
    live = _LIVE.get("settings")
    if live == settings:
        wake()  # a sleeping engine handed on: vLLM pauses its scheduler until it is fully awake
        return _LIVE["llm"]
    shutdown()
    _prepare_environment(settings)
    check_settings(settings)
    from vllm import LLM

    kwargs = engine_kwargs(settings)
    if settings.lora_sync == "adapter":  # a warning when rounded up: vLLM has no max_lora_rank of the adapter's own
        served = kwargs["max_lora_rank"]
        log.log(logging.INFO if served == settings.lora_rank else logging.WARNING,
                "vLLM serves the rank-%d LoRA adapter with max_lora_rank %d", settings.lora_rank, served)
    owns_group = not torch.distributed.is_initialized()  # with none, vLLM makes a one-process group
    # Creating the engine re-seeds torch's global RNG and (on a GPU) switches the current device;
    # keep the run's RNG stream and device as they were.
    with torch.random.fork_rng(devices=[]), _keep_current_device():
        llm = LLM(**kwargs)
    if owns_group and torch.distributed.is_initialized():
        # vLLM set up a one-process group for itself; Lightning then asks for sync_dist on every
        # epoch-level metric, which means nothing with one process.
        warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
    # Rotary embeddings have no weights to reload; vLLM says so on every sync.
    logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)
    _LIVE.update(settings=settings, llm=llm, owns_group=owns_group, sleep_level=0, weights_valid=True, woken=set())
    # vLLM's import keeps a traceback whose frames reach this one: without the del, this frame's local
    # would keep the engine alive after shutdown().
    del llm
    return _LIVE["llm"]


def shutdown() -> None:
    """Shut the process's engine down and free its memory (a later ``shared_llm`` starts a new one).

    A process group that the trainer made stays usable: vLLM's engine shutdown destroys the default
    group, and ``del llm`` alone frees nothing (vLLM froze the garbage collector after start-up).
    """
    if _LIVE.get("llm") is not None:
        try:
            wake()  # shutting a sleeping engine down gives CUDA driver errors (vLLM issue #36651)
        except Exception as err:  # noqa: BLE001 - e.g. out of memory after a failed fit: shut it down anyway
            log.warning("could not wake the sleeping vLLM engine before its shutdown: %r", err)
    llm = _LIVE.pop("llm", None)
    owns_group = _LIVE.pop("owns_group", True)
    for key in ("settings", "sleep_level", "weights_valid", "woken"):
        _LIVE.pop(key, None)
    if llm is None:
        return
    with keep_default_group(not owns_group):
        llm.llm_engine.engine_core.shutdown()  # unfreezes the GC, destroys vLLM's own groups
    del llm
    gc.collect()
    if on_gpu():
        torch.cuda.empty_cache()


def sleep_level() -> int:
    """How the shared engine sleeps: 0 awake, 1 (weights in host memory) or 2 (weights dropped)."""
    return int(_LIVE.get("sleep_level", 0))


def sleep(level: int) -> None:
    """Put the shared engine to sleep; level 2 drops its weights (a reload must come before any request)."""
    _LIVE["llm"].sleep(level=level)
    _LIVE["sleep_level"] = max(level, sleep_level())
    if level >= 2:
        _LIVE["weights_valid"] = False


def weights_valid() -> bool:
    """Whether the shared engine holds weights (not after a level-2 sleep until a reload)."""
    return bool(_LIVE.get("weights_valid", True))


def mark_reloaded() -> None:
    """A reload has filled the shared engine's weights."""
    _LIVE["weights_valid"] = True


def wake(tags: list[str] | None = None) -> None:
    """Wake the shared engine (all of it, or the memory of ``tags``: ``weights``, ``kv_cache``). After a
    level-2 sleep its weights stay invalid until a reload."""
    if not sleep_level():
        return
    _LIVE["llm"].wake_up(tags=tags)
    woken = set(_LIVE.setdefault("woken", set())) | set(tags or ("weights", "kv_cache"))
    if {"weights", "kv_cache"} <= woken:
        _LIVE["sleep_level"] = 0
        woken = set()
    _LIVE["woken"] = woken


@contextlib.contextmanager
def _keep_current_device() -> Iterator[None]:
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        yield
        return
    device = torch.cuda.current_device()
    try:
        yield
    finally:
        torch.cuda.set_device(device)


@contextlib.contextmanager
def keep_default_group(keep: bool) -> Iterator[None]:
    """Inside, ``torch.distributed.destroy_process_group`` leaves the default (trainer's) group alone when
    ``keep``; vLLM's own sub-groups are still destroyed."""
    if not keep:
        yield
        return
    destroy = torch.distributed.destroy_process_group

    def destroy_but_default(group=None):
        if group is not None and group is not torch.distributed.group.WORLD:
            destroy(group)

    torch.distributed.destroy_process_group = destroy_but_default
    try:
        yield
    finally:
        torch.distributed.destroy_process_group = destroy
