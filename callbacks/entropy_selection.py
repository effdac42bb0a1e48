"""``ActionEntropySelection``: PaW's action-entropy data selection as a rollout hook.

After each rollout it keeps the world-model loss only on the top ``ratio`` fraction of all
transitions (all groups together; with several processes, every process's transitions) ranked by
action entropy H(a_t | h_t): high-entropy steps are the decision points; low-entropy steps are
repetitive and teach the world model little.

With the score actor the entropy is over the step's admissible commands, so it can be at most
log(number of commands): ``entropy: normalized`` divides by that bound, so that selection ranks how
uncertain the policy was rather than how long the command list was. The generate actor's token
entropy has one bound (log vocabulary) for every step, so both settings rank it alike.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch

from paw_lightning.callbacks.base import RolloutCallback
from paw_lightning.choices import check_choices
from paw_lightning.distributed import Ranks, global_top_fraction_mask
from paw_lightning.selection import check_ratio, normalized_entropy

SelectionEntropy = Literal["raw", "normalized"]


class ActionEntropySelection(RolloutCallback):
    """Select the top-alpha transitions by action entropy for the world-model loss.

    Args:
        ratio: alpha, the fraction of the update's transitions kept, in (0, 1] (the paper: 0.75).
        entropy: ``raw`` (the action entropy as measured, the paper) or ``normalized`` (score actor: over
            log(number of admissible commands)).
    """

    def __init__(self, ratio: float = 0.75, entropy: SelectionEntropy = "raw") -> None:
        check_ratio(ratio)
        check_choices(ActionEntropySelection.__init__, {"entropy": entropy})
        self.ratio = ratio
        self.entropy = entropy

    def on_rollout_end(self, trainer: L.Trainer, pl_module: L.LightningModule, rollout) -> None:
        scores = rollout.action_entropy
        if self.entropy == "normalized" and rollout.mode == "score":
            counts = torch.tensor([len(t.candidate_ids or ()) for t in rollout.transitions])
            scores = normalized_entropy(scores, counts)
        selected = global_top_fraction_mask(scores, self.ratio, Ranks.of(trainer))
        rollout.wm_selected = rollout.wm_selected & selected
