"""How the policy picks an action from a prompt: the ``score`` and ``generate`` actors.

- ``ScoreActor``: the engine scores every admissible command (length-normalised log-likelihood given
  the prompt) and the actor samples from the softmax over candidates at the rollout temperature
  (``candidate_policy``, the same function the training step differentiates). No parse failures.
- ``GenerateActor``: the engine writes a response; the action is parsed from ``<action>...</action>``.
  An unparsable or inadmissible response is an invalid action (the env still gets it), never a crash.

The forward passes belong to the rollout engine (engines.py: HF or vLLM); actors only decide what to
ask it and what to make of the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from paw_lightning.logprobs import candidate_policy, categorical_entropy
from paw_lightning.rollout.engines import Sampling, as_engine
from paw_lightning.rollout.prompts import choose_action

ACTION_END = "</action>"


@dataclass
class ActorOutput:
    """The actor's choice for one env."""

    action_text: str
    action_ids: list[int]
    valid: bool
    logprob: float = float("nan")
    entropy: float = float("nan")
    candidate_ids: list[list[int]] | None = None
    chosen: int = -1
    token_logprobs: list[float] | None = None  # generate: the engine's log-prob of each response token
    candidate_logprobs: list[float] | None = None  # score: the log-prob of every candidate (episode logs)


def encode_candidates(tokenizer, commands: list[str]) -> list[list[int]]:
    """Token ids of each command as it follows the prompt (a leading space, no special tokens)."""
    return [tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in commands]


@dataclass
class ScoreActor:
    """Samples among admissible commands by their length-normalised log-likelihood.

    Args:
        temperature: softmax temperature over candidate scores (0 = greedy).
    """

    temperature: float = 1.0
    mode: str = "score"

    def act(self, engine, tokenizer, prompts: list[list[int]], admissible: list[list[str] | None], generator: torch.Generator) -> list[ActorOutput]:
        """One action per prompt; ``engine`` is a RolloutEngine (a bare model runs on the HF engine)."""
        if any(a is None or len(a) == 0 for a in admissible):
            raise ValueError(
                "the score actor needs admissible commands from the env (info['admissible_commands']); "
                "this env gives none, so use data.actor: generate"
            )
        engine = as_engine(engine, tokenizer)
        candidates = [encode_candidates(tokenizer, cmds) for cmds in admissible]
        outputs: list[ActorOutput] = []
        for i, scores in enumerate(engine.score(prompts, candidates)):
            log_probs = candidate_policy(scores.unsqueeze(0), self.temperature)[0]
            if self.temperature > 0:
                pick = int(torch.multinomial(log_probs.exp(), 1, generator=generator).item())
            else:
                pick = int(log_probs.argmax().item())
            outputs.append(
                ActorOutput(
                    action_text=admissible[i][pick],
                    action_ids=candidates[i][pick],
                    valid=True,
                    logprob=float(log_probs[pick]),
                    entropy=float(categorical_entropy(log_probs.unsqueeze(0))[0]),
                    candidate_ids=candidates[i],
                    chosen=pick,
                    candidate_logprobs=log_probs.tolist(),
                )
            )
        return outputs


@dataclass
class GenerateActor:
    """Free-text responses with the action in ``<action>...</action>``.

    Args:
        temperature: sampling temperature (0 = greedy).
        max_new_tokens: response length limit (the paper: 512).
        response_prefix: the text the prompt already ends with (``PromptBuilder.response_prefix``); the
            action is parsed from prefix + response.
    """

    temperature: float = 1.0
    max_new_tokens: int = 128
    response_prefix: str = ""
    mode: str = "generate"

    def act(self, engine, tokenizer, prompts: list[list[int]], admissible: list[list[str] | None], generator: torch.Generator) -> list[ActorOutput]:
        """One response per prompt; ``engine`` is a RolloutEngine (a bare model runs on the HF engine)."""
        engine = as_engine(engine, tokenizer)
        sampling = Sampling(self.temperature, self.max_new_tokens, stop=[ACTION_END])  # nothing after the action is needed
        outputs = []
        for i, gen in enumerate(engine.generate(prompts, sampling, generator)):
            sent, valid = choose_action(self.response_prefix + gen.text, admissible[i])
            outputs.append(ActorOutput(action_text=sent, action_ids=gen.token_ids, valid=valid, token_logprobs=gen.logprobs))
        return outputs


Actor = Literal["score", "generate"]


def make_actor(kind: Actor, temperature: float, max_new_tokens: int, response_prefix: str = ""):
    """The actor named by ``kind``."""
    if kind == "score":
        return ScoreActor(temperature=temperature)
    if kind == "generate":
        return GenerateActor(temperature=temperature, max_new_tokens=max_new_tokens, response_prefix=response_prefix)
    raise ValueError(f"unknown actor {kind!r}; choose one of {get_args(Actor)}")
