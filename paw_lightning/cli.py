"""The ``paw`` command: LightningCLI over PaWModule and RolloutDataModule.

    paw fit --config configs/quickstart.yaml
    paw fit --config configs/quickstart.yaml --ckpt_path last      # resume the run folder's latest checkpoint
    paw fit --print_config                                         # every option with its default
    paw play --config configs/quickstart.yaml --ckpt_path last     # watch the trained policy (play.py)
    paw plot runs/csv/version_0 --out curves.png                   # learning curves as PNG (plots.py)

Every value check that needs no weights (ranges, env id, env arguments, the ALFWorld data folder, that the
offline model is installed, ``--ckpt_path last``; cli_config.py, which ``paw play`` shares) runs before any
class is built: LightningCLI builds the model before the DataModule, so a bad env id would otherwise cost a
model load. An error found while the config is checked or the classes are built, and paw's own errors
(``paw_lightning.errors``), print as one line, ``paw: error: ...``, with exit code 2 (1 for a run stopped
by non-finite training).
"""

from __future__ import annotations

import os
import sys
import warnings

from paw_lightning.cli_config import TRAINER_DEFAULTS, PaWCLI, is_user_error, setup_errors
from paw_lightning.module import PaWModule
from paw_lightning.permissions import no_world_write
from paw_lightning.rollout.datamodule import RolloutDataModule


def cli_main(args=None) -> PaWCLI:
    """Build and run the CLI; returns it so that tests and notebooks can inspect the trainer."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    no_world_write()  # nothing the run writes is writable by other accounts (permissions.py)
    # The frozen reference policy is in eval mode on purpose; Lightning's warning about it is noise.
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    # With several processes the rollout and episode metrics are already global (paw_lightning/distributed.py).
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting.*")
    return PaWCLI(
        PaWModule,
        RolloutDataModule,
        seed_everything_default=0,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def error_line(err: BaseException) -> str:
    """The error's message on one line. jsonargparse reports a class that failed to build (a callback with a
    bad ratio) as a list of "Errors:" for every type it tried; the first one is the class's own."""
    text = str(err)
    if "\nErrors:\n" in text:
        text = text.split("\nErrors:\n", 1)[1].strip().splitlines()[0].removeprefix("- ") or text
    return " ".join(text.split())


def main(args=None) -> None:
    """The ``paw`` console script: ``paw fit|validate`` (LightningCLI), ``paw play`` (paw_lightning/play.py)
    and ``paw plot`` (paw_lightning/plots.py); user errors print as one line, anything else with its traceback."""
    argv = sys.argv[1:] if args is None else list(args)
    no_world_write()
    try:
        if argv[:1] == ["play"]:
            from paw_lightning.play import main as play

            play(argv[1:])
        elif argv[:1] == ["plot"]:
            from paw_lightning.plots import main as plot

            with setup_errors():
                plot(argv[1:])
        else:
            if argv[:1] in (["-h"], ["--help"]):  # LightningCLI lists only the trainer's subcommands
                print("paw play --help | paw plot --help: watch a policy play (or play by hand), plot learning curves\n")
            cli_main(args)
    except Exception as err:
        if not is_user_error(err):
            raise
        print(f"paw: error: {error_line(err)}", file=sys.stderr)
        raise SystemExit(getattr(err, "exit_code", 2)) from None


if __name__ == "__main__":
    main()
