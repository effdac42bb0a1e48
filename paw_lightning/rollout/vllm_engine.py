"""The ``vllm`` rollout engine: a ``vllm.LLM`` colocated in the training process.

Created once per process (and reused by later fits with the same settings, e.g. in tests), after the
trainer's model. Before each rollout the DataModule calls ``sync`` when the weights changed:

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
        gpu_memory_utilization: GPU only: the share of GPU memory vLLM may take (the trainer needs the rest).
        lora_sync: ``merged`` or ``adapter`` (``auto`` resolved by ``resolve_lora_sync``).
        lora_rank: the adapter's rank (``adapter`` mode).
        sleep: GPU only: release the engine's memory between rollouts.
        seed: the engine's own seed.
        trust_remote_code: passed to vLLM.
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


def on_gpu() -> bool:
    return torch.cuda.is_available()


def resolve_lora_sync(lora_sync: str, lora_rank: int) -> str:
    """``merged``/``adapter`` from the option: adapters only exist with LoRA; ``auto`` is per device."""
    if lora_rank <= 0:
        return "merged"
    if lora_sync == "auto":
        return "adapter" if on_gpu() else "merged"
    return lora_sync


_LIVE: dict[str, object] = {}  # the one engine of this process: {"settings": VLLMSettings, "llm": vllm.LLM}


def _prepare_environment(settings: VLLMSettings) -> None:
    # In-process engine: no __main__ guard needed, and no core reserved for an engine process.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # vLLM caps torch at one thread unless OMP_NUM_THREADS is set, and it cannot be changed afterwards.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(torch.get_num_threads(), 1)))
    if not on_gpu():
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = f"{settings.kv_cache_gib:g}"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def shared_llm(settings: VLLMSettings):
    """The process's vLLM engine for these settings (an engine with other settings is shut down first)."""
    live = _LIVE.get("settings")
    if live == settings:
        return _LIVE["llm"]
    shutdown()
    _prepare_environment(settings)
    from vllm import LLM

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
    # Creating the engine re-seeds torch's global RNG; keep the run's RNG stream as it was.
    with torch.random.fork_rng(devices=[]):
        llm = LLM(**kwargs)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() == 1:
        # vLLM set up a one-process group for itself; Lightning then asks for sync_dist on every
        # epoch-level metric, which means nothing with one process.
        warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
    # Rotary embeddings have no weights to reload; vLLM says so on every sync.
    logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)
    _LIVE.update(settings=settings, llm=llm)
    return llm


def shutdown() -> None:
    """Shut the process's engine down and free its memory (a later ``shared_llm`` starts a new one)."""
    llm = _LIVE.pop("llm", None)
    _LIVE.pop("settings", None)
    if llm is None:
        return
    del llm
    with contextlib.suppress(Exception):
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()
    gc.collect()
    if on_gpu():
        torch.cuda.empty_cache()


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
        """Forget this engine's adapters; the vLLM engine stays up for reuse (``shutdown()`` frees it)."""
        self.lora_request = None
        self._adapter_dir.cleanup()
