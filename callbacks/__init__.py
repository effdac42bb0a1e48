"""Callbacks of paw-lightning (installed as ``paw_lightning.callbacks``).

``ActionEntropySelection`` and ``RewardAdaptiveBalancing`` are PaW's rollout callbacks
(``RolloutCallback``): ``PaWModule.on_rollout`` calls their ``on_rollout_end(trainer, pl_module,
rollout)`` once per rollout.
"""

from paw_lightning.callbacks.adapter_export import AdapterExport
from paw_lightning.callbacks.base import RolloutCallback
from paw_lightning.callbacks.entropy_selection import ActionEntropySelection
from paw_lightning.callbacks.reward_balancing import RewardAdaptiveBalancing
from paw_lightning.callbacks.summary import RunSummary

__all__ = ["ActionEntropySelection", "AdapterExport", "RewardAdaptiveBalancing", "RolloutCallback", "RunSummary"]
