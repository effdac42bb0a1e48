"""``RolloutCallback``: a Lightning callback that also sees every rollout before training on it.

``PaWModule.on_rollout`` calls ``on_rollout_end(trainer, pl_module, rollout)`` on every callback of
this kind, in the trainer's callback order, after the rollout is scored (old/reference log-probs,
action entropy, advantages) and before its mini-batches are built. PaW's selection and weighting are
rollout callbacks; write your own by subclassing this one.
"""

from __future__ import annotations

import lightning as L


class RolloutCallback(L.Callback):
    """A callback with a rollout hook (a no-op here)."""

    def on_rollout_end(self, trainer: L.Trainer, pl_module: L.LightningModule, rollout) -> None:
        """Read or change ``rollout`` (e.g. ``rollout.wm_selected``, ``rollout.wm_weight``,
        ``rollout.metrics``) before the module trains on it."""
