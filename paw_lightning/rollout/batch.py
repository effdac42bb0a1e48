"""Turn transitions into padded tensors ``[prompt | action | next_obs]``, one row per transition.

Generate actor: the row is ``[prompt | response | o_{t+1}]``; action_mask marks the response tokens,
obs_mask marks o_{t+1}.

Score actor: the row packs every admissible candidate as its own branch after the shared prompt,
``[prompt | cand_1 | cand_2 | ... | cand_C]``, and the chosen candidate's branch continues with
o_{t+1}. ``branch`` and ``position_ids`` describe the packing: each branch attends to the prompt and
to itself only, and its positions restart where the prompt ends, so every candidate is scored exactly
as if it stood alone after the prompt, but the prompt is encoded once (see ``packed_attention_mask``).

Per-unit tensors (old/reference log-probs) are (B, A): A = 1 for the score actor (the unit is the
whole chosen candidate), A = T for the generate actor (units sit at the action-token positions).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from paw_lightning.rollout.types import Rollout, Transition

SCORE = "score"  # the score actor's mode; any other mode is one row per response
PROMPT_BRANCH, PAD_BRANCH = -1, -2


def build_rows(
    prompts: Sequence[list[int]],
    branches: Sequence[Sequence[list[int]]],
    pad_id: int,
    obs: Sequence[list[int]] | None = None,
    chosen: Sequence[int] | None = None,
    obs_loss: Sequence[list[bool]] | None = None,
) -> dict:
    """Pack ``prompt + branch_1 + ... + branch_C`` per row; ``obs[b]`` follows branch ``chosen[b]``, and
    ``obs_loss[b]`` (default: all true) says which of its tokens are in ``obs_mask``.

    Returns (R, T) tensors: ``input_ids``, ``attention_mask`` (bool, real tokens), ``position_ids``,
    ``branch`` (-1 prompt, j for branch j, -2 padding), ``source`` (the position whose hidden state
    predicts each token: t - 1, except the first token of every branch, which the last prompt token
    predicts), ``action_mask``, ``action_candidate`` (the branch of each action token, -1 elsewhere)
    and ``obs_mask``.
    """
    rows = []
    for b, (prompt, row_branches) in enumerate(zip(prompts, branches)):
        ids, pos, branch, is_obs = list(prompt), list(range(len(prompt))), [PROMPT_BRANCH] * len(prompt), [False] * len(prompt)
        source = [max(i - 1, 0) for i in range(len(prompt))]
        is_action = [False] * len(prompt)
        for j, cand in enumerate(row_branches):
            tail = list(obs[b]) if obs is not None and chosen is not None and j == chosen[b] else []
            scored = list(obs_loss[b]) if obs_loss is not None and tail else [True] * len(tail)
            first = len(ids)
            source += [len(prompt) - 1] + list(range(first, first + len(cand) + len(tail) - 1))
            ids += cand + tail
            pos += range(len(prompt), len(prompt) + len(cand) + len(tail))
            branch += [j] * (len(cand) + len(tail))
            is_obs += [False] * len(cand) + scored
            is_action += [True] * len(cand) + [False] * len(tail)
        rows.append((ids, pos, branch, is_obs, source, is_action))
    width = max((len(r[0]) for r in rows), default=1)
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    branch = torch.full((n, width), PAD_BRANCH, dtype=torch.long)
    obs_mask = torch.zeros((n, width), dtype=torch.bool)
    source = torch.zeros((n, width), dtype=torch.long)
    action_mask = torch.zeros((n, width), dtype=torch.bool)
    for i, (ids, pos, br, is_obs, src, is_action) in enumerate(rows):
        source[i, : len(src)] = torch.as_tensor(src, dtype=torch.long)
        input_ids[i, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        position_ids[i, : len(pos)] = torch.as_tensor(pos, dtype=torch.long)
        branch[i, : len(br)] = torch.as_tensor(br, dtype=torch.long)
        obs_mask[i, : len(is_obs)] = torch.as_tensor(is_obs, dtype=torch.bool)
        action_mask[i, : len(is_action)] = torch.as_tensor(is_action, dtype=torch.bool)
    return {
        "input_ids": input_ids,
        "attention_mask": branch != PAD_BRANCH,
        "position_ids": position_ids,
        "branch": branch,
        "source": source,
        "action_mask": action_mask,
        "action_candidate": torch.where(action_mask, branch, torch.full_like(branch, -1)),
        "obs_mask": obs_mask,
    }


def collate(transitions: Sequence[Transition], mode: str, pad_id: int) -> dict:
    """One row per transition, with its masks (no training targets yet)."""
    if mode == SCORE:
        for t in transitions:
            if not (t.candidate_ids and 0 <= t.chosen < len(t.candidate_ids)):
                raise ValueError("a score-actor transition needs candidate_ids and a valid chosen index")
        branches = [t.candidate_ids for t in transitions]
        chosen = [t.chosen for t in transitions]
    else:
        branches = [[t.action_ids] for t in transitions]
        chosen = [0] * len(transitions)
    targets = [t.wm_target() for t in transitions]
    batch = build_rows([t.prompt_ids for t in transitions], branches, pad_id, [ids for ids, _ in targets], chosen,
                       [scored for _, scored in targets])
    batch["chosen"] = torch.tensor(chosen, dtype=torch.long)
    batch["num_candidates"] = torch.tensor([len(b) for b in branches], dtype=torch.long)
    batch["mode"] = mode
    return batch


def prompt_end(batch: dict) -> Tensor:
    """(R,) position of each row's last prompt token: where the critic reads the state h_t."""
    return (batch["branch"] == PROMPT_BRANCH).sum(dim=1) - 1


def units_to_padded(values: Sequence[Tensor], batch: dict) -> Tensor:
    """Place per-transition unit values (1D each) into the (B, A) layout of ``batch``."""
    if batch["mode"] == SCORE:
        return torch.stack([v.reshape(1) for v in values]).float()
    mask = batch["action_mask"]
    out = torch.zeros(mask.shape, dtype=torch.float32)
    return out.masked_scatter(mask, torch.cat([v.float() for v in values]))


def unit_mask(batch: dict) -> Tensor:
    """(B, A) bool: which units of the batch exist."""
    if batch["mode"] == SCORE:
        return torch.ones((len(batch["chosen"]), 1), dtype=torch.bool, device=batch["chosen"].device)
    return batch["action_mask"]


def training_batch(rollout: Rollout, indices: Sequence[int], pad_id: int) -> dict:
    """A mini-batch of the rollout with everything the training step needs."""
    transitions = [rollout.transitions[i] for i in indices]
    batch = collate(transitions, rollout.mode, pad_id)
    idx = torch.as_tensor(list(indices), dtype=torch.long)
    batch["old_logprobs"] = units_to_padded([rollout.old_logprobs[i] for i in indices], batch)
    if rollout.ref_logprobs is not None:
        batch["ref_logprobs"] = units_to_padded([rollout.ref_logprobs[i] for i in indices], batch)
    batch["unit_mask"] = unit_mask(batch)
    batch["advantages"] = rollout.advantages[idx]
    batch["wm_selected"] = rollout.wm_selected[idx]
    batch["wm_weight"] = rollout.wm_weight[idx]
    batch["wm_selected_frac"] = rollout.wm_selected_frac
    if rollout.old_values is not None:
        batch["old_values"] = rollout.old_values[idx]
        batch["value_targets"] = rollout.value_targets[idx]
    batch["temperature"] = rollout.temperature
    return batch


def minibatches(
    rollout: Rollout, epochs: int, batch_size: int, pad_id: int, rng: np.random.Generator
) -> Iterator[dict]:
    """``epochs`` shuffled passes over the rollout in mini-batches of ``batch_size`` transitions."""
    n = len(rollout)
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            yield training_batch(rollout, order[start : start + batch_size].tolist(), pad_id)


# ----- micro-batches: a mini-batch (one optimiser step) cut to a token budget ------------------------
TOKEN_KEYS = ("input_ids", "attention_mask", "position_ids", "branch", "source", "action_mask", "action_candidate", "obs_mask")
UNIT_KEYS = ("old_logprobs", "ref_logprobs", "unit_mask")  # (B, A): per action token (generate) or (B, 1) (score)
ROW_KEYS = ("chosen", "num_candidates", "advantages", "wm_selected", "wm_weight", "old_values", "value_targets")


def row_length(t: Transition, mode: str) -> int:
    """The tokens of transition ``t``'s row as ``collate`` packs it (prompt, action(s), WM target)."""
    action = sum(len(c) for c in t.candidate_ids) if mode == SCORE else len(t.action_ids)
    return len(t.prompt_ids) + action + len(t.wm_target()[0])


def token_budget_groups(lengths: Sequence[int], budget: int | None, max_rows: int | None = None) -> list[list[int]]:
    """Rows grouped into micro-batches of at most ``budget`` padded tokens (rows x their longest row) and
    at most ``max_rows`` rows. Rows go longest first, so rows of like length share a micro-batch and
    little of it is padding; a row longer than the budget gets a micro-batch of its own (no row is split).

    Args:
        lengths: each row's real length.
        budget: padded tokens per micro-batch; None = no token limit.
        max_rows: rows per micro-batch at most; None = no row limit. Both None: one group, rows in order.

    Returns:
        lists of row indices; every row in exactly one.
    """
    if budget is None and max_rows is None:
        return [list(range(len(lengths)))] if len(lengths) else []
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    for i in order:
        current = groups[-1] if groups else None
        fits = current is not None and (budget is None or (len(current) + 1) * lengths[current[0]] <= budget) \
            and (max_rows is None or len(current) < max_rows)
        if fits:
            current.append(i)
        else:
            groups.append([i])
    return groups


def micro_batches(batch: dict, budget: int | None) -> list[dict]:
    """``batch`` cut into micro-batches of at most ``budget`` padded tokens (``token_budget_groups``), each
    trimmed to its own longest row; the whole batch when ``budget`` is None. Other keys are shared."""
    if budget is None:
        return [batch]
    lengths = batch["attention_mask"].sum(dim=1).tolist()  # rows are right-padded
    out = []
    for rows in token_budget_groups(lengths, budget):
        idx = torch.as_tensor(rows, dtype=torch.long)
        width = max(lengths[i] for i in rows)
        micro = dict(batch)
        for key in TOKEN_KEYS + UNIT_KEYS + ROW_KEYS:
            if key not in batch:
                continue
            value = batch[key][idx.to(batch[key].device)]
            if key in TOKEN_KEYS or (key in UNIT_KEYS and batch["mode"] != SCORE):
                value = value[:, :width]
            micro[key] = value
        out.append(micro)
    return out


@dataclass(frozen=True)
class BatchTotals:
    """Mini-batch-wide counts that every loss term and WM metric divides by, so that the sum over its
    micro-batches equals the unsplit mini-batch's value."""

    units: float  # action units (tokens, or one per score-actor transition): policy, KL, entropy
    rows: int  # transitions: the critic's loss
    wm_selected: float  # rows selected for the WM loss
    wm_weight: float  # sum of w_i = wm_weight x selected
    wm_tokens: float  # sum of w_i x |observation tokens of row i|: the WM token metrics
    obs_tokens: float  # observation tokens of every row: ``wm/token_acc_all_rows``

    @classmethod
    def of(cls, batch: dict) -> "BatchTotals":
        weight = batch["wm_weight"] * batch["wm_selected"].float()
        obs = batch["obs_mask"].sum(dim=1).float()
        return cls(units=float(batch["unit_mask"].sum()), rows=len(batch["chosen"]), wm_selected=float(batch["wm_selected"].sum()),
                   wm_weight=float(weight.sum()), wm_tokens=float((weight * obs).sum()), obs_tokens=float(obs.sum()))
