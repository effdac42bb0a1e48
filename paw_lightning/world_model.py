"""What the world model learns and how its term enters the loss: pure functions, no Lightning.

The target of transition t is a *tail* that follows its action a_t in the training row, with a per-token
loss mask (``WMTarget``):

- ``wm_context``: ``raw`` (the paper) appends o_{t+1} straight after a_t; ``turn`` frames it as the next
  environment turn of the chat (end of the assistant turn, then the user header, from the tokenizer's
  own chat template; ``TurnFrame``), the context o_{t+1} really has at inference. Frame tokens get no loss.
- ``wm_horizon`` k: o_{t+1} followed by the next k - 1 (action, observation) pairs of the same episode,
  loss on observation tokens only, cut at the episode's end and at ``max_tokens``; k = 1 is o_{t+1} alone.
- ``dedup_mask``: among transitions with the same (o_t, a_t, o_{t+1}) text, only the first selected one keeps
  the world-model loss (the paper names repeated transitions as a limit: an agent that loops would
  otherwise learn the same step many times per update).
- ``wm_term``: the weighted loss added to the objective and its metrics, all over one row set.

Run its tests: ``pytest tests/test_world_model.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from paw_lightning.rollout.types import Transition

WMContext = Literal["raw", "turn"]
WMNormalize = Literal["minibatch", "update"]
# Frames for tokenizers without a chat template (the tiny model): plain text turn markers.
PLAIN_AFTER_ACTION, PLAIN_AFTER_OBS = "\nObservation: ", "\nAction: "
_A, _O, _B = "\u2063ACTION\u2063", "\u2063OBSERVATION\u2063", "\u2063NEXT\u2063"  # sentinels, never in real text


@dataclass(frozen=True)
class TurnFrame:
    """Token ids placed between an action and the observation it caused (``after_action``) and between an
    observation and the next action (``after_obs``); both empty for ``wm_context: raw``."""

    after_action: tuple[int, ...] = ()
    after_obs: tuple[int, ...] = ()

    def after(self, action_ids: Sequence[int]) -> list[int]:
        """``after_action`` without its first token when the action already ends with it (a generated
        response that stopped at the end-of-turn token)."""
        frame = list(self.after_action)
        if frame and action_ids and action_ids[-1] == frame[0]:
            return frame[1:]
        return frame


def turn_frame(tokenizer, context: WMContext) -> TurnFrame:
    """The frame of ``context`` for ``tokenizer``: read off its chat template with sentinel turns (the text
    between the assistant's content and the next user content, and the reverse), or plain markers when
    it has no template."""
    if context == "raw":
        return TurnFrame()
    if getattr(tokenizer, "chat_template", None):
        turns = [{"role": "user", "content": "task"}, {"role": "assistant", "content": _A},
                 {"role": "user", "content": _O}, {"role": "assistant", "content": _B}]
        text = tokenizer.apply_chat_template(turns, tokenize=False)
        after_action = text[text.index(_A) + len(_A) : text.index(_O)]
        after_obs = text[text.index(_O) + len(_O) : text.index(_B)]
    else:
        after_action, after_obs = PLAIN_AFTER_ACTION, PLAIN_AFTER_OBS

    def ids(s: str) -> tuple[int, ...]:
        return tuple(tokenizer(s, add_special_tokens=False)["input_ids"])

    return TurnFrame(ids(after_action), ids(after_obs))


@dataclass(frozen=True)
class WMTarget:
    """The tokens after a_t in a training row and which of them the world-model loss scores."""

    ids: list[int]
    loss_mask: list[bool]


def taken_action(t: Transition) -> list[int]:
    """The tokens of the action the agent took (score actor: the chosen candidate)."""
    return list(t.candidate_ids[t.chosen]) if t.candidate_ids else list(t.action_ids)


def next_in_episode(transitions: Sequence[Transition]) -> list[int | None]:
    """For each transition, the index of the same episode's next step (None at the episode's end)."""
    where = {(t.episode_id, t.step): i for i, t in enumerate(transitions)}
    return [None if t.done else where.get((t.episode_id, t.step + 1)) for t in transitions]


def build_targets(
    transitions: Sequence[Transition], frame: TurnFrame = TurnFrame(), horizon: int = 1, max_tokens: int | None = None
) -> list[WMTarget]:
    """The world-model target of every transition.

    Step t's tail is ``[frame(a_t)] o_{t+1}`` and, for each further step s < t + horizon of the same episode,
    ``[after_obs] a_s [frame(a_s)] o_{s+1}``; only observation tokens are in the loss. The tail is cut at
    ``max_tokens`` (the collector's ``max_obs_tokens``; None = uncut). With the raw frame and horizon 1 the
    tail is exactly ``obs_ids``.
    """
    if horizon < 1:
        raise ValueError(f"wm_horizon must be >= 1, got {horizon}")
    following = next_in_episode(transitions)
    targets = []
    for i, t in enumerate(transitions):
        ids, mask = [], []

        def add(tokens: Sequence[int], scored: bool) -> None:
            ids.extend(tokens)
            mask.extend([scored] * len(tokens))

        add(frame.after(taken_action(t)), False)
        add(t.obs_ids, True)
        j = following[i]
        for _ in range(horizon - 1):
            if j is None:
                break
            step = transitions[j]
            action = taken_action(step)
            add(list(frame.after_obs) + action + frame.after(action), False)
            add(step.obs_ids, True)
            j = following[j]
        if max_tokens is not None:
            ids, mask = ids[:max_tokens], mask[:max_tokens]
        targets.append(WMTarget(ids, mask))
    return targets


def transition_key(t: Transition) -> tuple[str, str, str]:
    """What makes two transitions the same for de-duplication: (o_t, a_t, o_{t+1}) text."""
    return (t.observation, t.action_text, t.next_obs)


def dedup_mask(keys: Sequence[object], selected: Tensor) -> Tensor:
    """(N,) bool: the first selected transition of each key; repeats and unselected transitions are False.

    Args:
        keys: one hashable key per transition, in the order that decides which repeat is kept.
        selected: (N,) bool, the transitions the world-model loss would take.
    """
    seen: set = set()
    keep = torch.zeros(len(keys), dtype=torch.bool)
    for i, (key, chosen) in enumerate(zip(keys, selected.tolist())):
        if chosen and key not in seen:
            seen.add(key)
            keep[i] = True
    return keep


@dataclass
class WMTerm:
    """The world-model term of one mini-batch and its metrics, all over the same rows: those with a
    weight w_i = wm_weight * selected > 0 (``rows``), each row or token weighted by w_i. Given the
    mini-batch's totals, every field of a micro-batch is its share: the micro-batches' fields add up."""

    term: Tensor  # what is added to the loss: sum_i w_i l_i / normaliser
    loss: Tensor  # sum_i w_i l_i / sum_i w_i: the weighted mean per-transition loss
    weight_mean: Tensor  # sum_i w_i / normaliser, so term = loss * weight_mean
    clipped_token_frac: Tensor  # w-weighted share of the rows' observation tokens with p > rho (CMAE)
    token_acc: Tensor  # w-weighted share of the rows' observation tokens predicted by argmax
    rows: Tensor  # number of rows with w_i > 0


def wm_term(
    per_row: Tensor, weight: Tensor, normaliser: Tensor | float, obs_mask: Tensor, clipped: Tensor, correct: Tensor,
    weight_total: float | None = None, token_total: float | None = None,
) -> WMTerm:
    """Combine the per-transition WM loss into the term and its metrics.

    Args:
        per_row: (R,) the per-transition loss l_i (CMAE or CE).
        weight: (R,) w_i: the transition's wm_weight (wm_coef x lambda_g) where selected, else 0.
        normaliser: what the weighted sum is divided by (selected rows of the mini-batch, or the
            update's selected share x the mini-batch's rows: ``wm_normalize``).
        obs_mask: (R, T) the scored observation tokens; clipped, correct: (R, T) bool.
        weight_total, token_total: the whole mini-batch's sum of w_i and of w_i x ``|o_i|`` when these rows
            are one micro-batch of it (default: these rows' own).
    """
    w = weight.to(per_row.dtype)
    norm = torch.as_tensor(normaliser, dtype=w.dtype, device=w.device).clamp(min=1e-12)
    term = (w * per_row).sum() / norm
    with torch.no_grad():
        token_w = w.unsqueeze(-1) * obs_mask.to(w.dtype)  # (R, T): every token of row i weighs w_i
        weights = max(float(w.sum()) if weight_total is None else weight_total, 1e-12)
        tokens = max(float(token_w.sum()) if token_total is None else token_total, 1e-12)
        return WMTerm(
            term=term,
            loss=(w * per_row).sum() / weights,
            weight_mean=w.sum() / norm,
            clipped_token_frac=(token_w * clipped.to(w.dtype)).sum() / tokens,
            token_acc=(token_w * correct.to(w.dtype)).sum() / tokens,
            rows=(w > 0).sum().to(w.dtype),
        )


def grad_term_norms(total: Sequence[Tensor], wm: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """(norm of the RL part, norm of the WM part) of one step's gradient, per parameter lists: the WM part
    is ``wm`` (the WM term's own gradient) and the RL part ``total - wm`` (every other term)."""
    rl_sq = sum(((t.float() - w.float()) ** 2).sum() for t, w in zip(total, wm))
    wm_sq = sum((w.float() ** 2).sum() for w in wm)
    return torch.as_tensor(rl_sq).sqrt(), torch.as_tensor(wm_sq).sqrt()
