"""``RewardAdaptiveBalancing``: PaW's reward-adaptive world-model weight as a rollout hook.

lambda_g = clamp(1 - mean return of group g / r_max, 0, 1): groups that fail everywhere lean on the
world-model signal; groups that already succeed leave the update to the RL loss.
"""

from __future__ import annotations

import lightning as L

from paw_lightning.selection import check_r_max, reward_adaptive_lambda


class RewardAdaptiveBalancing(L.Callback):
    """Multiply each transition's world-model weight by its group's lambda_g.

    Args:
        r_max: the return of a successful episode (10 for the TextWorld and ALFWorld envs here).
    """

    def __init__(self, r_max: float = 10.0) -> None:
        check_r_max(r_max)
        self.r_max = r_max

    def on_rollout_end(self, trainer: L.Trainer, pl_module: L.LightningModule, rollout) -> None:
        returns, groups = rollout.episode_returns()
        lam = reward_adaptive_lambda(returns, groups, rollout.num_groups, self.r_max)  # (G,)
        rollout.wm_weight = rollout.wm_weight * lam[rollout.group_ids]
        rollout.metrics["paw/lambda_mean"] = lam.mean().item()
