"""``EpisodeDump``: a rollout callback for the DDP tests (``tests.envs.fakes.EpisodeDump`` loads it lazily)."""

from __future__ import annotations

import json
import os

from paw_lightning.callbacks.base import RolloutCallback


class EpisodeDump(RolloutCallback):
    """Writes each rollout's episodes (won, length) to ``<dirpath>/rank<r>-iteration<i>.json``, so that a
    test can compare the logged metrics with every process's episodes."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_rollout_end(self, trainer, pl_module, rollout) -> None:
        path = os.path.join(self.dirpath, f"rank{trainer.global_rank}-iteration{rollout.iteration}.json")
        with open(path, "w") as f:
            json.dump({"won": [e.won for e in rollout.episodes], "length": [e.length for e in rollout.episodes],
                       "transitions": len(rollout)}, f)
