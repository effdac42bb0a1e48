"""``RewardAdaptiveBalancing``: PaW's reward-adaptive world-model weight as a rollout hook.

lambda_g = clamp(1 - mean return of group g / r_max, 0, 1): groups that fail everywhere lean on the
world-model signal; groups that already succeed leave the update to the RL loss.

A group is the episodes of one task seed. When every group holds a single episode (``group_size: 1``,
as PPO may run), one episode says little about how hard its task is, so the whole update (with
several processes: every process's episodes) is then treated as one group. Otherwise a group lives on
one process, and so does its lambda_g.
"""

from __future__ import annotations

import lightning as L
import torch

from paw_lightning.callbacks.base import RolloutCallback
from paw_lightning.distributed import Ranks, gather_varlen
from paw_lightning.selection import check_r_max, reward_adaptive_lambda


class RewardAdaptiveBalancing(RolloutCallback):
    """Multiply each transition's world-model weight by its group's lambda_g.

    Args:
        r_max: the return of a successful episode (10 for the TextWorld and ALFWorld envs here).
    """

    def __init__(self, r_max: float = 10.0) -> None:
        check_r_max(r_max)
        self.r_max = r_max

    def on_rollout_end(self, trainer: L.Trainer, pl_module: L.LightningModule, rollout) -> None:
        returns, groups = rollout.episode_returns()
        group_ids = rollout.group_ids
        num_groups = rollout.num_groups
        if len(groups) and torch.bincount(groups).max() <= 1:
            returns = torch.cat(gather_varlen(returns, Ranks.of(trainer)))
            groups, group_ids, num_groups = torch.zeros_like(returns, dtype=torch.long), torch.zeros_like(group_ids), 1
        lam = reward_adaptive_lambda(returns, groups, num_groups, self.r_max)  # (G,)
        rollout.wm_weight = rollout.wm_weight * lam[group_ids]
        rollout.metrics["paw/lambda_mean"] = lam.mean().item()
