"""``ActionEntropySelection``: PaW's action-entropy data selection as a rollout hook.

After each rollout it keeps the world-model loss only on the top ``ratio`` fraction of all
transitions (all groups together; with several processes, every process's transitions) ranked by
action entropy H(a_t | h_t): high-entropy steps are the decision points; low-entropy steps are
repetitive and teach the world model little.
"""

from __future__ import annotations

import lightning as L

from paw_lightning.callbacks.base import RolloutCallback
from paw_lightning.distributed import Ranks, global_top_fraction_mask
from paw_lightning.selection import check_ratio


class ActionEntropySelection(RolloutCallback):
    """Select the top-alpha transitions by action entropy for the world-model loss.

    Args:
        ratio: alpha, the fraction of the update's transitions kept, in (0, 1] (the paper: 0.75).
    """

    def __init__(self, ratio: float = 0.75) -> None:
        check_ratio(ratio)
        self.ratio = ratio

    def on_rollout_end(self, trainer: L.Trainer, pl_module: L.LightningModule, rollout) -> None:
        selected = global_top_fraction_mask(rollout.action_entropy, self.ratio, Ranks.of(trainer))
        rollout.wm_selected = rollout.wm_selected & selected
