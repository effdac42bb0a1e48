"""The ``paw`` command: LightningCLI over PaWModule and RolloutDataModule.

    paw fit --config configs/quickstart.yaml
    paw fit --config configs/quickstart.yaml --ckpt_path last      # resume
    paw fit --print_config                                         # every option with its default
"""

from __future__ import annotations

import os
import warnings

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from paw_lightning.module import PaWModule
from paw_lightning.rollout.datamodule import RolloutDataModule

TRAINER_DEFAULTS = {
    "max_epochs": 20,
    "log_every_n_steps": 1,
    "num_sanity_val_steps": 0,
    "logger": [
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": "csv"}},
        {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "runs", "name": "tensorboard", "default_hp_metric": False}},
    ],
}


class PaWCLI(LightningCLI):
    """LightningCLI with paw's defaults (loggers, checkpoint of the last iteration)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # One iteration = one epoch: checkpoint at the end of every iteration, whether or not it validated.
        parser.set_defaults(
            {"checkpoint.save_last": True, "checkpoint.every_n_epochs": 1, "checkpoint.save_on_train_epoch_end": True}
        )


def cli_main(args=None) -> PaWCLI:
    """Build and run the CLI; returns it so that tests and notebooks can inspect the trainer."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The frozen reference policy is in eval mode on purpose; Lightning's warning about it is noise.
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    return PaWCLI(
        PaWModule,
        RolloutDataModule,
        seed_everything_default=0,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def main() -> None:
    """The ``paw`` console script."""
    cli_main()


if __name__ == "__main__":
    main()
