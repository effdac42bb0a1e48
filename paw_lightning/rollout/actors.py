"""How the policy picks an action from a prompt: the ``score`` and ``generate`` actors.

- ``ScoreActor``: the LM scores every admissible command (length-normalised log-likelihood given the
  prompt) and samples from the softmax over candidates at the rollout temperature. No parse failures.
- ``GenerateActor``: the LM writes a response; the action is parsed from ``<action>...</action>``. An
  unparsable or inadmissible response is an invalid action (the env still gets it), never a crash.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from paw_lightning.logprobs import candidate_log_softmax, categorical_entropy, head_stats, trunk_hidden
from paw_lightning.models import trunk_and_head
from paw_lightning.rollout.batch import build_rows
from paw_lightning.rollout.prompts import is_admissible, parse_action

ACTORS = ("score", "generate")
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


def encode_candidates(tokenizer, commands: list[str]) -> list[list[int]]:
    """Token ids of each command as it follows the prompt (a leading space, no special tokens)."""
    return [tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in commands]


@dataclass
class ScoreActor:
    """Samples among admissible commands by their length-normalised log-likelihood.

    Args:
        temperature: softmax temperature over candidate scores (0 = greedy).
        envs_per_forward: prompts (each packed with all its candidates) per forward pass.
    """

    temperature: float = 1.0
    envs_per_forward: int = 16
    mode: str = "score"

    @torch.no_grad()
    def act(self, model, tokenizer, prompts: list[list[int]], admissible: list[list[str] | None], generator: torch.Generator) -> list[ActorOutput]:
        if any(a is None or len(a) == 0 for a in admissible):
            raise ValueError(
                "the score actor needs admissible commands from the env (info['admissible_commands']); "
                "this env gives none, so use data.actor: generate"
            )
        trunk, head = trunk_and_head(model)
        device = next(model.parameters()).device
        candidates = [encode_candidates(tokenizer, cmds) for cmds in admissible]
        outputs: list[ActorOutput] = []
        for start in range(0, len(prompts), self.envs_per_forward):
            stop = start + self.envs_per_forward
            batch = build_rows(prompts[start:stop], candidates[start:stop], tokenizer.pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            stats = head_stats(head, trunk_hidden(trunk, batch), batch["input_ids"], batch["action_mask"], source=batch["source"])
            num = torch.tensor([len(c) for c in candidates[start:stop]], device=device)
            log_probs = candidate_log_softmax(stats.logp, batch["action_candidate"], num, max(self.temperature, 1e-6)).cpu()
            entropies = categorical_entropy(log_probs)
            for j, lp in enumerate(log_probs):
                i = start + j
                if self.temperature > 0:
                    pick = int(torch.multinomial(lp.exp(), 1, generator=generator).item())
                else:
                    pick = int(lp.argmax().item())
                outputs.append(
                    ActorOutput(
                        action_text=admissible[i][pick],
                        action_ids=candidates[i][pick],
                        valid=True,
                        logprob=float(lp[pick]),
                        entropy=float(entropies[j]),
                        candidate_ids=candidates[i],
                        chosen=pick,
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

    @torch.no_grad()
    def act(self, model, tokenizer, prompts: list[list[int]], admissible: list[list[str] | None], generator: torch.Generator) -> list[ActorOutput]:
        device = next(model.parameters()).device
        pad = tokenizer.pad_token_id
        width = max(len(p) for p in prompts)
        # Left padding, so every prompt ends where generation starts.
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p) :] = torch.as_tensor(p)
            attention[i, width - len(p) :] = 1
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            sequences = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                do_sample=self.temperature > 0,
                temperature=self.temperature if self.temperature > 0 else None,
                top_p=1.0,
                top_k=0,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
                stop_strings=[ACTION_END],  # nothing after the action is needed
                tokenizer=tokenizer,
            )
        outputs = []
        for i, seq in enumerate(sequences[:, width:].tolist()):
            response_ids = self._until_eos(seq, tokenizer.eos_token_id, pad)
            text = tokenizer.decode(response_ids, skip_special_tokens=True)
            action = parse_action(self.response_prefix + text)
            valid = action is not None and is_admissible(action, admissible[i])
            sent = action if action is not None else " ".join(text.split())[:200]
            outputs.append(ActorOutput(action_text=sent, action_ids=response_ids, valid=valid))
        return outputs

    @staticmethod
    def _until_eos(ids: list[int], eos: int | None, pad: int) -> list[int]:
        """The response up to and including the first eos; the padding of rows that stopped early removed."""
        if eos is not None and eos in ids:
            return ids[: ids.index(eos) + 1]
        while len(ids) > 1 and ids[-1] == pad:
            ids = ids[:-1]
        return ids or [eos if eos is not None else pad]


def make_actor(kind: str, temperature: float, max_new_tokens: int, response_prefix: str = ""):
    """The actor named by ``kind`` (one of ``ACTORS``)."""
    if kind == "score":
        return ScoreActor(temperature=temperature)
    if kind == "generate":
        return GenerateActor(temperature=temperature, max_new_tokens=max_new_tokens, response_prefix=response_prefix)
    raise ValueError(f"unknown actor {kind!r}; choose one of {ACTORS}")
