import pytest
import torch

from paw_lightning.callbacks import ActionEntropySelection, RewardAdaptiveBalancing
from paw_lightning.rollout.types import Episode, Rollout, Transition


def make_rollout(returns, group_of_episode, steps_per_episode=2):
    episodes = [Episode(i, g, seed=g, task_type="t", total_return=r) for i, (r, g) in enumerate(zip(returns, group_of_episode))]
    transitions = [
        Transition([1], [2], "a", [3], "o", 0.0, False, True, e.group_id, e.episode_id, s, "t")
        for e in episodes
        for s in range(steps_per_episode)
    ]
    rollout = Rollout(transitions, episodes, num_groups=max(group_of_episode) + 1, mode="generate", temperature=1.0)
    n = len(transitions)
    rollout.action_entropy = torch.arange(n, dtype=torch.float32)
    rollout.wm_selected = torch.ones(n, dtype=torch.bool)
    rollout.wm_weight = torch.full((n,), 0.5)
    return rollout


def test_entropy_selection_keeps_the_top_fraction_of_the_whole_rollout():
    rollout = make_rollout([0.0, 10.0, 0.0, 0.0], [0, 0, 1, 1])  # 8 transitions, entropy 0..7
    ActionEntropySelection(ratio=0.75).on_rollout_end(None, None, rollout)
    assert rollout.wm_selected.tolist() == [False, False] + [True] * 6


def test_reward_balancing_scales_weights_by_group_lambda():
    rollout = make_rollout([0.0, 10.0, 0.0, 0.0], [0, 0, 1, 1], steps_per_episode=1)
    RewardAdaptiveBalancing(r_max=10.0).on_rollout_end(None, None, rollout)
    # group 0: mean 5 -> lambda 0.5; group 1: all fail -> 1; times wm_coef 0.5
    assert rollout.wm_weight.tolist() == pytest.approx([0.25, 0.25, 0.5, 0.5])
    assert rollout.metrics["paw/lambda_mean"] == pytest.approx(0.75)


def test_callbacks_reject_bad_arguments_at_construction():
    with pytest.raises(ValueError, match="ratio"):
        ActionEntropySelection(ratio=0.0)
    with pytest.raises(ValueError, match="r_max"):
        RewardAdaptiveBalancing(r_max=-1.0)


def test_reward_balancing_uses_the_whole_rollout_when_groups_hold_one_episode():
    rollout = make_rollout([10.0, 0.0, 0.0, 0.0], [0, 1, 2, 3], steps_per_episode=1)  # group_size 1
    RewardAdaptiveBalancing(r_max=10.0).on_rollout_end(None, None, rollout)
    # one group of four with mean return 2.5 -> lambda 0.75 for everyone (x wm_coef 0.5)
    assert rollout.wm_weight.tolist() == pytest.approx([0.375] * 4)
