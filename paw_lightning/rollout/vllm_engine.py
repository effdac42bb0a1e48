"""The ``vllm`` rollout engine: a ``vllm.LLM`` colocated in the training process.

Created once per process (and reused by later fits with the same settings, e.g. in tests), after the
trainer's model. With several processes (DDP, FSDP) every process owns one engine, as TRL's colocate
mode does: created at the first rollout, so after the trainer's process group and at the same point on
every process (creation runs collectives), through vLLM's ``external_launcher`` with tensor parallel
size 1, the rank variables taken from the trainer and a seed per process; it is shut down when the fit
ends, without destroying the trainer's group. Before each rollout the DataModule calls ``sync`` when the
weights changed (every process pushes its own copy of them to its own engine):

- full fine-tuning, or LoRA with ``lora_sync: merged``: the trainer's weights (W + s * B A merged
  outside the trainer, 4-bit bases de-quantised) are pushed with vLLM's in-place ``reload_weights``;
- LoRA with ``lora_sync: adapter``: the adapter is saved and served as a new ``LoRARequest`` (a new id
  each time: a reused id serves the stale adapter); the engine keeps the base in bf16, so QLoRA works.

Either way the prefix cache is reset afterwards: stale cached KV blocks would otherwise be reused.
``auto`` picks ``merged`` on CPU (adapter serving was 2.5-10x slower there and its prompt log-probs
crash) and ``adapter`` on a GPU (the usual choice there; not measured by this project yet).

On a GPU the engine sleeps between rollouts (``sleep: true``) so that the update has the memory.
On CPU its KV cache size is ``kv_cache_gib`` (always set: vLLM otherwise sizes it from the NUMA
node). What measured facts these choices rest on: shared/notes/vllm-cpu.md of the project.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from paw_lightning.models import merged_state_dict
from paw_lightning.rollout.engines import Generation, RolloutEngine, Sampling, draw_seed

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


def on_gpu() -> bool:
    return torch.cuda.is_available()


def resolve_lora_sync(lora_sync: str, lora_rank: int) -> str:
    """``merged``/``adapter`` from the option: adapters only exist with LoRA; ``auto`` is per device."""
    if lora_rank <= 0:
        return "merged"
    if lora_sync == "auto":
        return "adapter" if on_gpu() else "merged"
    return lora_sync


# the one engine of this process: {"settings": VLLMSettings, "llm": vllm.LLM, "owns_group": bool}
_LIVE: dict[str, object] = {}


def _prepare_environment(settings: VLLMSettings) -> None:
    # In-process engine: no __main__ guard needed, and no core reserved for an engine process.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
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
        kwargs |= dict(gpu_memory_utilization=settings.gpu_memory_utilization, enable_sleep_mode=settings.sleep)
    if settings.lora_sync == "adapter":
        kwargs |= dict(enable_lora=True, max_lora_rank=max(settings.lora_rank, 8), max_loras=1)
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
        return _LIVE["llm"]
    shutdown()
    _prepare_environment(settings)
    from vllm import LLM

    kwargs = engine_kwargs(settings)
    owns_group = not torch.distributed.is_initialized()  # with none, vLLM makes a one-process group
    # Creating the engine re-seeds torch's global RNG; keep the run's RNG stream as it was.
    with torch.random.fork_rng(devices=[]):
        llm = LLM(**kwargs)
    if owns_group and torch.distributed.is_initialized():
        # vLLM set up a one-process group for itself; Lightning then asks for sync_dist on every
        # epoch-level metric, which means nothing with one process.
        warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
    # Rotary embeddings have no weights to reload; vLLM says so on every sync.
    logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)
    _LIVE.update(settings=settings, llm=llm, owns_group=owns_group)
    # vLLM's import keeps a traceback whose frames reach this one: without the del, this frame's local
    # would keep the engine alive after shutdown().
    del llm
    return _LIVE["llm"]


def shutdown() -> None:
    """Shut the process's engine down and free its memory (a later ``shared_llm`` starts a new one).

    A process group that the trainer made stays usable: vLLM's engine shutdown destroys the default
    group, and ``del llm`` alone frees nothing (vLLM froze the garbage collector after start-up).
    """
    llm = _LIVE.pop("llm", None)
    owns_group = _LIVE.pop("owns_group", True)
    _LIVE.pop("settings", None)
    if llm is None:
        return
    with keep_default_group(not owns_group):
        llm.llm_engine.engine_core.shutdown()  # unfreezes the GC, destroys vLLM's own groups
    del llm
    gc.collect()
    if on_gpu():
        torch.cuda.empty_cache()


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


class VLLMEngine(RolloutEngine):
    """Rollouts on vLLM, in this process.

    Args:
        settings: how the engine is built (see ``VLLMSettings``).
        tokenizer: the trainer's tokenizer (pad/eos ids, and the text of each response).
    """

    name = "vllm"
    exact = False

    def __init__(self, settings: VLLMSettings, tokenizer) -> None:
        self.settings = settings
        self.tokenizer = tokenizer
        self.llm = shared_llm(settings)
        self.lora_request = None
        self.syncs = 0
        self.asleep = False
        self._adapter_dir = tempfile.TemporaryDirectory(prefix="paw-vllm-adapters-")

    # ----- weights ------------------------------------------------------------------------------
    def sync(self, model: nn.Module) -> None:
        self._wake()
        self.syncs += 1
        if self.settings.lora_sync == "adapter":
            from vllm.lora.request import LoRARequest

            path = os.path.join(self._adapter_dir.name, f"sync-{self.syncs}")
            model.save_pretrained(path)
            # A new id every time: vLLM keeps serving a cached adapter under an id it has seen.
            self.lora_request = LoRARequest(f"paw-{self.syncs}", self.syncs, path)
        else:
            dtype = getattr(torch, self.settings.dtype)  # cast here: vLLM warns once per tensor otherwise
            weights = [(name, w.to(dtype)) for name, w in merged_state_dict(model).items()]
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    @contextlib.contextmanager
    def rollout_mode(self) -> Iterator[None]:
        self._wake()
        try:
            yield
        finally:
            if self.settings.sleep and on_gpu():
                # Level 2 drops the weights too: the next sync pushes new ones. Adapters need the base kept.
                self.llm.sleep(level=1 if self.settings.lora_sync == "adapter" else 2)
                self.asleep = True

    # ----- requests -----------------------------------------------------------------------------
    def _run(self, prompts: list[list[int]], params, seed: int | None = None):
        from vllm.inputs import TokensPrompt

        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        fork = contextlib.nullcontext() if seed is None else torch.random.fork_rng(devices=[torch.cuda.current_device()] if on_gpu() else [])
        with fork:
            if seed is not None:  # vLLM samples from torch's global RNG when requests carry no seed
                torch.manual_seed(seed)
            return self.llm.generate(requests, params, use_tqdm=False, lora_request=self.lora_request)

    def generate(self, prompts: list[list[int]], sampling: Sampling, generator: torch.Generator) -> list[Generation]:
        from vllm import SamplingParams

        params = SamplingParams(
            temperature=max(sampling.temperature, 0.0),
            top_p=1.0,
            top_k=0,
            max_tokens=sampling.max_new_tokens,
            stop=list(sampling.stop) or None,
            include_stop_str_in_output=True,
            logprobs=0,  # the sampled token's own log-prob
        )
        outputs = self._run(prompts, params, seed=draw_seed(generator))
        generations = []
        for request in outputs:
            out = request.outputs[0]
            ids = list(out.token_ids) or [self.tokenizer.eos_token_id]
            logprobs = [float(step[token].logprob) for step, token in zip(out.logprobs or [], ids)] if out.logprobs else []
            logprobs += [float("nan")] * (len(ids) - len(logprobs))
            generations.append(Generation(ids, self.tokenizer.decode(ids, skip_special_tokens=True), logprobs))
        return generations

    def score(self, prompts: list[list[int]], candidates: list[list[list[int]]]) -> list[torch.Tensor]:
        if self.lora_request is not None and not on_gpu():
            raise ValueError(
                "vLLM's prompt log-probs crash with a LoRA adapter on CPU; use data.vllm_lora_sync: merged "
                "(or auto) with the score actor"
            )
        from vllm import SamplingParams

        # prompt_logprobs turns prefix caching off unless the request asks to read it: with it on, the
        # shared prompt is encoded once per step instead of once per candidate.
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False, skip_reading_prefix_cache=False)
        flat = [p + c for p, cands in zip(prompts, candidates) for c in cands]
        starts = [len(p) for p, cands in zip(prompts, candidates) for _ in cands]
        outputs = self._run(flat, params)
        # A cached block may reach into a candidate (when an identical prompt + candidate start filled
        # it); the log-probs of cached positions are not computed, so those requests run again uncached.
        again = [k for k, out in enumerate(outputs) if out.num_cached_tokens >= starts[k]]
        if again:
            uncached = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False, skip_reading_prefix_cache=True)
            for k, out in zip(again, self._run([flat[k] for k in again], uncached)):
                outputs[k] = out
        means = [
            sum(out.prompt_logprobs[i][ids[i]].logprob for i in range(start, len(ids))) / max(len(ids) - start, 1)
            for out, ids, start in zip(outputs, flat, starts)
        ]
        scores, k = [], 0
        for cands in candidates:
            scores.append(torch.tensor(means[k : k + len(cands)], dtype=torch.float32))
            k += len(cands)
        return scores

    def close(self) -> None:
        """Forget this engine's adapters. With one process the vLLM engine stays up for reuse by a later
        fit (``shutdown()`` frees it); with several it belongs to this fit's process group and is shut down."""
        self.lora_request = None
        self._adapter_dir.cleanup()
        if self.settings.world_size > 1:
            self.llm = None
            shutdown()
