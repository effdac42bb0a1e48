"""``AdapterExport``: write the LoRA adapter in PEFT's own format (plus the tokenizer) with every
checkpoint and when fit ends, so that ``PeftModel.from_pretrained(base_model, path)`` loads it."""

from __future__ import annotations

import os

import lightning as L


class AdapterExport(L.Callback):
    """Export the adapter to ``<dirpath>/iteration-<k>`` at each checkpoint and ``<dirpath>/final``.

    Args:
        dirpath: where adapters go (default: ``<the run's log dir>/adapters``).
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not hasattr(pl_module.model, "peft_config"):
            raise ValueError("AdapterExport needs a LoRA adapter: set model.lora_rank > 0 or remove the callback")

    def folder(self, trainer: L.Trainer) -> str:
        return self.dirpath or os.path.join(trainer.log_dir or trainer.default_root_dir, "adapters")

    def export(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str) -> str:
        path = os.path.join(self.folder(trainer), name)
        if trainer.is_global_zero:
            pl_module.model.save_pretrained(path)
            pl_module.tokenizer.save_pretrained(path)
        return path

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.export(trainer, pl_module, f"iteration-{trainer.current_epoch}")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.export(trainer, pl_module, "final")
