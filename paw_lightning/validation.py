"""Validation: the held-out episodes' metrics over every process, and the world model's token accuracy on
their real next observations. ``PaWModule.validation_step`` logs what these return (records.py writes the
per-episode rows and the episode log).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from paw_lightning.distributed import Ranks
from paw_lightning.heads import to_device
from paw_lightning.logprobs import head_stats, trunk_hidden
from paw_lightning.metrics import episode_metrics
from paw_lightning.models import trunk_and_head
from paw_lightning.rollout.batch import collate
from paw_lightning.rollout.types import Episode, Rollout
from paw_lightning.rollout_prep import build_wm_targets, scoring_chunks
from paw_lightning.world_model import TurnFrame


@torch.no_grad()
def heldout_wm_correct(rollout: Rollout, model: nn.Module, wm_head: nn.Module | None, hp, frame: TurnFrame,
                       budget: int | None, pad_id: int, device: torch.device) -> tuple[int, int]:
    """(argmax-correct, total) next-observation tokens of the validation transitions under the world model
    (its head, or the LM head when shared), always with their real o_{t+1} (in the training's
    ``wm_context``, one step): whether the model learned the dynamics, whatever ``wm_target`` or
    ``wm_horizon`` it trained on."""
    was_training = model.training
    model.eval()
    trunk, lm_head = trunk_and_head(model)
    head = wm_head if wm_head is not None else lm_head
    correct = total = 0
    heldout = copy.copy(rollout)
    build_wm_targets(heldout, hp.wm_context, frame, 1)  # o_{t+1} alone, framed as in training
    for rows in scoring_chunks(heldout, budget, hp.score_batch_size):
        batch = to_device(collate([heldout.transitions[i] for i in rows], heldout.mode, pad_id), device)
        hidden = trunk_hidden(trunk, batch)
        obs_mask = batch["obs_mask"]
        stats = head_stats(head, hidden, batch["input_ids"], obs_mask, 1.0, hp.head_chunk_size, batch["source"])
        correct += int((stats.correct & obs_mask).sum())
        total += int(obs_mask.sum())
    model.train(was_training)
    return correct, total


def validation_metrics(episodes: list[Episode], correct: int, total: int, ranks: Ranks) -> tuple[dict[str, float], list[Episode]]:
    """The ``val/`` metrics (success overall and per task type, return, length, validity, ``val/wm_token_acc``)
    and the episodes they cover: with several processes, every process's (one gather)."""
    if ranks.distributed:
        parts = ranks.all_gather_object((episodes, correct, total))
        episodes = [e for part, _, _ in parts for e in part]
        correct, total = sum(c for _, c, _ in parts), sum(t for _, _, t in parts)
    metrics = {k.replace("episode/", "val/", 1): v for k, v in episode_metrics(episodes).items()}
    if total:
        metrics["val/wm_token_acc"] = correct / total
    return metrics, episodes
