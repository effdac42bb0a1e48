"""The ``paw`` command's configuration, below both commands that read it (cli.py: ``paw fit|validate``;
play.py: ``paw play``): LightningCLI over PaWModule and RolloutDataModule with paw's defaults, the config
checks that need no weights, ``--ckpt_path last``, and the marking of setup errors as the user's to fix.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from paw_lightning.errors import PawError
from paw_lightning.permissions import no_world_write
from paw_lightning.module import PaWModule, check_module_options
from paw_lightning.rollout.datamodule import RolloutDataModule, check_data_options, check_env_kwargs

TRAINER_DEFAULTS = {
    "max_epochs": 20,
    "log_every_n_steps": 1,
    "num_sanity_val_steps": 0,
    "logger": [
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": "csv"}},
        {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "runs", "name": "tensorboard", "default_hp_metric": False}},
    ],
}
# Errors of these types raised while the config is checked or the classes are built are the user's to fix.
SETUP_ERRORS = (ValueError, OSError, ImportError)


@contextmanager
def setup_errors():
    """Marks errors raised inside as the user's to fix (``err.paw_user_error``): ``paw`` prints them as one line."""
    try:
        yield
    except SETUP_ERRORS as err:
        err.paw_user_error = True
        raise


def is_user_error(err: BaseException) -> bool:
    """True for paw's own errors and for errors found while the config was checked or the classes were built."""
    return isinstance(err, PawError) or getattr(err, "paw_user_error", False)


class PaWCLI(LightningCLI):
    """LightningCLI with paw's defaults (loggers, checkpoint of the last iteration) and its config checks."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # One iteration = one epoch: checkpoint at the end of every iteration, whether or not it validated.
        parser.set_defaults(
            {"checkpoint.save_last": True, "checkpoint.every_n_epochs": 1, "checkpoint.save_on_train_epoch_end": True}
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        with setup_errors():
            check_config(config)

    def instantiate_classes(self) -> None:
        with setup_errors():
            super().instantiate_classes()


def check_config(config) -> None:
    """Every check that needs no weights, on the parsed config; resolves ``ckpt_path: last`` in place."""
    model, data = config.model.as_dict(), config.data.as_dict()
    check_module_options(**model)
    check_data_options(**data)
    check_env_kwargs(data["env_id"], data["env_kwargs"])
    if data["val_episodes"] > 0:
        check_env_kwargs(data["env_id"], dict(data["env_kwargs"] or {}) | dict(data["val_env_kwargs"] or {}))
    if config.trainer.gradient_clip_val is not None:
        raise ValueError(f"trainer.gradient_clip_val={config.trainer.gradient_clip_val} is not used: set model.grad_clip "
                         "instead (PaWModule clips, and skips non-finite steps, in Lightning's clipping hook)")
    if config.get("ckpt_path") == "last":
        config.ckpt_path = str(last_checkpoint(config))


def checkpoint_dirs(config) -> tuple[list[Path], str]:
    """The checkpoint folders that the run folder of this config holds, and the pattern they were found with:
    ``checkpoint.dirpath`` when set, else ``<save_dir>/<name>/*/checkpoints`` of the first logger (where
    Lightning's ModelCheckpoint writes), else ``<default_root_dir>/checkpoints``."""
    root = Path(config.trainer.default_root_dir or os.getcwd())
    if config.checkpoint.dirpath:
        folder = Path(config.checkpoint.dirpath)
        return [folder], str(folder)
    logger = config.trainer.logger
    first = logger[0] if isinstance(logger, list) and logger else logger
    if first is None or first is False:
        return [root / "checkpoints"], str(root / "checkpoints")
    if first is True:  # Lightning's default TensorBoardLogger
        save_dir, name = root, "lightning_logs"
    else:
        args = first.get("init_args") or {}
        save_dir = args.get("save_dir") or args.get("root_dir")
        if save_dir is None:
            raise ValueError(f"--ckpt_path last: cannot tell where {first.get('class_path')} keeps its checkpoints; "
                             "give the checkpoint's path")
        name = args.get("name") or "lightning_logs"
        save_dir = Path(save_dir) if Path(save_dir).is_absolute() else root / save_dir
    return sorted((save_dir / name).glob("*/checkpoints")), str(save_dir / name / "*" / "checkpoints")


def last_checkpoint(config) -> Path:
    """The newest ``last*.ckpt`` (else ``*.ckpt``) of the run folder; ValueError when there is none."""
    folders, pattern = checkpoint_dirs(config)
    for glob in ("last*.ckpt", "*.ckpt"):
        found = [p for folder in folders for p in folder.glob(glob)]
        if found:
            return max(found, key=lambda p: p.stat().st_mtime)
    raise ValueError(f"--ckpt_path last: no checkpoint under {pattern}; start without --ckpt_path, or give a "
                     "checkpoint's path")


class ConfigOnlyCLI(PaWCLI):
    """PaWCLI that parses and checks the config but builds only the DataModule (``paw play --human``)."""

    def instantiate_classes(self) -> None:
        with setup_errors():
            self.datamodule = RolloutDataModule(**self.config.data.as_dict())
        self.model = self.trainer = None


def build_cli(args: list[str], instantiate_model: bool = True) -> PaWCLI:
    """The config of ``args`` (``--config``, ``--model.*``, ``--data.*``...) parsed, checked and built without
    running a subcommand (``paw play``): model, DataModule and trainer, or only the DataModule."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    no_world_write()
    # `paw play` hands LightningCLI the arguments it does not take itself, so sys.argv differs from args on purpose
    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    cls = PaWCLI if instantiate_model else ConfigOnlyCLI
    return cls(PaWModule, RolloutDataModule, seed_everything_default=0, trainer_defaults=TRAINER_DEFAULTS, run=False,
               args=args)
