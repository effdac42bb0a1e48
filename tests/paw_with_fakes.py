"""The ``paw`` command with the test envs registered (tests/envs/fakes.py).

A script file rather than ``python -c``: under DDP, Lightning starts every further process by running
this same file again.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tests.envs.fakes  # noqa: E402,F401 - registers paw-test/RankCorridor-v0
from paw_lightning.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
