"""``FakeOutOfMemory``: a Lightning callback that makes the module's forward run out of memory on demand, as a
card too small for a micro-batch would (``torch.OutOfMemoryError``), to test the update's out-of-memory retry."""

from __future__ import annotations

import lightning as L
import torch


class FakeOutOfMemory(L.Callback):
    """On process ``rank`` (None: every process), a training forward of a micro-batch of more than ``max_rows``
    rows raises ``torch.OutOfMemoryError`` (``raised`` counts them); from iteration (epoch) ``all_from_epoch`` on,
    every one does (no row fits)."""

    def __init__(self, max_rows: int = 1, rank: int | None = None, all_from_epoch: int | None = None) -> None:
        self.max_rows, self.rank, self.all_from_epoch = max_rows, rank, all_from_epoch
        self.raised = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        original = pl_module.loss_terms

        def loss_terms(batch, totals=None):
            everything = self.all_from_epoch is not None and trainer.current_epoch >= self.all_from_epoch
            if torch.is_grad_enabled() and (everything or len(batch["chosen"]) > self.max_rows):
                self.raised += 1
                raise torch.OutOfMemoryError(f"CUDA out of memory (fake: {len(batch['chosen'])} rows > {self.max_rows})")
            return original(batch, totals)

        pl_module.loss_terms = loss_terms
