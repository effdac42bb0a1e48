"""Per-token log-probs at loss positions, without ever materialising batch x length x vocab logits.

The trunk runs once over the padded sequences; the hidden states are gathered only where a target
token is scored (action and observation tokens) and the output head is applied there in chunks. With
gradients on, each chunk is checkpointed, so only its (chunk, hidden) input stays alive and its
(chunk, vocab) logits are recomputed in the backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK = 1024


@dataclass
class TokenStats:
    """Per-token statistics aligned with the input: position t holds the values for token t.

    All are (R, T); positions outside the scored mask hold 0 (False for ``correct``).
    """

    logp: Tensor
    entropy: Tensor
    correct: Tensor


def _chunk_stats(head: nn.Module, hidden: Tensor, targets: Tensor, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    weight = getattr(head, "weight", None)
    if weight is not None and weight.dtype != hidden.dtype:
        hidden = hidden.to(weight.dtype)
    logits = head(hidden).float() / temperature  # (n, V), only n rows of the whole batch
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    correct = (logits.argmax(-1) == targets).float()
    return logp, entropy, correct


def head_stats(
    head: nn.Module,
    hidden: Tensor,
    input_ids: Tensor,
    score_mask: Tensor,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK,
    source: Tensor | None = None,
) -> TokenStats:
    """Log-prob, entropy and argmax-correctness of every token in ``score_mask`` under ``head``.

    Args:
        head: the output head, hidden -> vocab logits.
        hidden: (R, T, H) trunk output.
        input_ids: (R, T).
        score_mask: (R, T) bool, the tokens to score; token t is predicted from hidden[t - 1], so the
            first position can never be scored.
        temperature: logits are divided by it before the softmax.
        chunk_size: rows of hidden states sent through the head at once.
        source: (R, T) the position whose hidden state predicts each token (packed rows, see
            ``batch.build_rows``); default t - 1.
    """
    if score_mask[:, 0].any():
        raise ValueError("the first token of a sequence has no context and cannot be scored")
    rows, cols = score_mask.nonzero(as_tuple=True)
    previous = cols - 1 if source is None else source[rows, cols]
    gathered = hidden[rows, previous]  # (n, H)
    targets = input_ids[rows, cols]
    parts = []
    for start in range(0, gathered.shape[0], chunk_size):
        h, t = gathered[start : start + chunk_size], targets[start : start + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            parts.append(checkpoint(_chunk_stats, head, h, t, temperature, use_reentrant=False))
        else:
            parts.append(_chunk_stats(head, h, t, temperature))
    stats = []
    for i in range(3):
        values = torch.cat([p[i] for p in parts]) if parts else hidden.new_zeros(0, dtype=torch.float32)
        full = torch.zeros(score_mask.shape, dtype=torch.float32, device=hidden.device)
        stats.append(full.index_put((rows, cols), values))
    return TokenStats(logp=stats[0], entropy=stats[1], correct=stats[2].bool())


def packed_attention_mask(branch: Tensor, dtype: torch.dtype) -> Tensor:
    """(R, 1, T, T) additive mask for rows packed by ``batch.build_rows``.

    Query token q sees key k when k comes no later than q and k is in the prompt (branch -1) or in q's
    own branch. Padding keys are hidden; padding queries see only themselves (no NaN rows).
    """
    t = branch.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=branch.device).tril()
    q, k = branch.unsqueeze(2), branch.unsqueeze(1)  # (R, T, 1), (R, 1, T)
    allowed = causal & ((k == -1) | (k == q)) & (k != -2)
    allowed = allowed | torch.eye(t, dtype=torch.bool, device=branch.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=branch.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)


def trunk_hidden(trunk: nn.Module, batch: dict) -> Tensor:
    """(R, T, H) last hidden states of a right-padded batch; packed rows get their 4D branch mask."""
    input_ids = batch["input_ids"]
    if "branch" in batch and bool((batch["branch"].amax(dim=1) > 0).any()):
        # The embedding's dtype is the compute dtype (quantised layers store uint8 weights).
        mask = packed_attention_mask(batch["branch"], trunk.get_input_embeddings().weight.dtype)
    else:
        mask = batch["attention_mask"].long()
    out = trunk(input_ids=input_ids, attention_mask=mask, position_ids=batch.get("position_ids"), use_cache=False)
    return out.last_hidden_state


def candidate_scores(token_logp: Tensor, action_candidate: Tensor, num_candidates: Tensor) -> Tensor:
    """Each candidate's length-normalised log-likelihood: the mean log-prob of its tokens.

    Args:
        token_logp: (R, T) log-prob of each token (only action tokens are read).
        action_candidate: (R, T) the candidate of each action token, -1 elsewhere.
        num_candidates: (R,) how many candidates each row has.

    Returns:
        (R, C) scores; -inf beyond a row's own candidates.
    """
    rows = token_logp.shape[0]
    width = max(int(num_candidates.max().item()) if rows else 1, 1)
    is_action = action_candidate >= 0
    r, c = is_action.nonzero(as_tuple=True)
    cand = action_candidate[r, c]
    totals = token_logp.new_zeros(rows, width).index_put((r, cand), token_logp[r, c], accumulate=True)
    counts = token_logp.new_zeros(rows, width).index_put((r, cand), torch.ones_like(token_logp[r, c]), accumulate=True)
    present = torch.arange(width, device=token_logp.device).unsqueeze(0) < num_candidates.unsqueeze(1)
    return torch.where(present, totals / counts.clamp(min=1.0), torch.full_like(totals, float("-inf")))


def candidate_policy(scores: Tensor, temperature: float) -> Tensor:
    """The score actor's policy over candidates: log-softmax of scores / T, (R, C) -> (R, C).

    The one definition of that policy: the actor samples from it (with the engine's scores) and the
    training step differentiates it (with the trainer's scores).
    """
    return torch.log_softmax(scores / max(temperature, 1e-6), dim=-1)


def candidate_log_softmax(
    token_logp: Tensor, action_candidate: Tensor, num_candidates: Tensor, temperature: float
) -> Tensor:
    """(R, C) candidate log-probs straight from token log-probs: ``candidate_policy(candidate_scores(...))``."""
    return candidate_policy(candidate_scores(token_logp, action_candidate, num_candidates), temperature)


def categorical_entropy(log_probs: Tensor) -> Tensor:
    """(B,) entropy of each row of (B, C) log-probs, ignoring -inf entries."""
    probs = log_probs.exp()
    return -(probs * torch.where(probs > 0, log_probs, torch.zeros_like(log_probs))).sum(-1)
