import math

import pytest
import torch

from paw_lightning.advantages import grpo_advantages


def test_grpo_normalises_within_each_group():
    returns = torch.tensor([10.0, 0.0, 0.0, 0.0, 5.0, 5.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    adv = grpo_advantages(returns, groups, num_groups=2)
    mean, std = 2.5, math.sqrt(((7.5**2) + 3 * (2.5**2)) / 3)  # unbiased std
    assert adv[:4].tolist() == pytest.approx([7.5 / std, -2.5 / std, -2.5 / std, -2.5 / std], rel=1e-4)
    assert adv[4:].tolist() == [0.0, 0.0]  # zero-variance group: no signal


def test_grpo_single_member_groups_and_all_equal_get_zero():
    adv = grpo_advantages(torch.tensor([3.0, 10.0, 10.0]), torch.tensor([0, 1, 1]), num_groups=2)
    assert adv.tolist() == [0.0, 0.0, 0.0]


def test_grpo_without_std_is_mean_centred():
    adv = grpo_advantages(torch.tensor([4.0, 0.0]), torch.tensor([0, 0]), num_groups=1, normalize_std=False)
    assert adv.tolist() == [2.0, -2.0]


# ----- step-level estimators -----------------------------------------------------------------------
from paw_lightning.advantages import (  # noqa: E402
    anchor_groups,
    discounted_returns,
    gae_advantages,
    gigpo_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)
from paw_lightning.losses import clipped_value_loss, explained_variance  # noqa: E402


def test_discounted_returns_per_episode_with_interleaved_steps():
    # lockstep order: (ep0,s0) (ep1,s0) (ep0,s1) (ep1,s1) (ep0,s2)
    rewards = torch.tensor([0.0, 1.0, 0.0, 2.0, 10.0])
    episode = torch.tensor([0, 1, 0, 1, 0])
    step = torch.tensor([0, 0, 1, 1, 2])
    got = discounted_returns(rewards, episode, step, gamma=0.5)
    assert got.tolist() == pytest.approx([2.5, 2.0, 5.0, 2.0, 10.0])


def test_anchor_groups_within_and_across_episodes_but_not_across_groups():
    obs = ["A", "B", "A", "A", "C", "A"]
    group = torch.tensor([0, 0, 0, 0, 0, 1])
    ids = anchor_groups(obs, group).tolist()
    assert ids[0] == ids[2] == ids[3]  # a state repeated within an episode and across episodes
    assert len({ids[0], ids[1], ids[4], ids[5]}) == 4  # "A" of group 1 is another task's state


def test_anchor_groups_similarity_threshold_merges_near_duplicates():
    obs = ["You are in the kitchen. 3 apples.", "You are in the kitchen. 4 apples.", "A dark cellar."]
    group = torch.zeros(3, dtype=torch.long)
    assert len(set(anchor_groups(obs, group, similarity=1.0).tolist())) == 3
    merged = anchor_groups(obs, group, similarity=0.9).tolist()
    assert merged[0] == merged[1] != merged[2]


def gigpo_example(mode):
    # one group, two episodes: ep0 sees A then B and wins at its 2nd step; ep1 sees A then C and fails.
    returns, episode_group = torch.tensor([10.0, 0.0]), torch.tensor([0, 0])
    rewards = torch.tensor([0.0, 0.0, 10.0, 0.0])
    episode, step = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1])
    anchors = anchor_groups(["A", "A", "B", "C"], torch.zeros(4, dtype=torch.long))
    return gigpo_advantages(returns, episode_group, 1, rewards, episode, step, anchors, gamma=0.5, omega=1.0, mode=mode)


def test_gigpo_mean_std_norm_by_hand():
    adv, episode_part, step_part = gigpo_example("mean_std_norm")
    r = 1 / math.sqrt(2)  # (x - mean) / unbiased std of two values is +-1/sqrt(2)
    assert episode_part.tolist() == pytest.approx([r, -r, r, -r], rel=1e-4)
    # anchor A: step returns 5 (ep0) vs 0 (ep1); B and C are single-member anchors -> 0
    assert step_part.tolist() == pytest.approx([r, -r, 0.0, 0.0], rel=1e-4)
    assert adv.tolist() == pytest.approx([2 * r, -2 * r, r, -r], rel=1e-4)


def test_gigpo_mean_norm_by_hand():
    adv, _, _ = gigpo_example("mean_norm")
    assert adv.tolist() == pytest.approx([5.0 + 2.5, -5.0 - 2.5, 5.0, -5.0])


def test_gigpo_single_member_group_and_truncated_episode():
    # one episode alone in its group, truncated after two steps without reward
    adv, episode_part, step_part = gigpo_advantages(
        torch.tensor([0.0]), torch.tensor([0]), 1, torch.tensor([0.0, 0.0]), torch.tensor([0, 0]),
        torch.tensor([0, 1]), anchor_groups(["A", "A"], torch.zeros(2, dtype=torch.long)), gamma=0.95,
    )
    assert adv.tolist() == [0.0, 0.0] and episode_part.tolist() == [0.0, 0.0] and step_part.tolist() == [0.0, 0.0]


def test_rloo_group_sizes_one_two_three():
    returns = torch.tensor([7.0, 10.0, 0.0, 3.0, 6.0, 9.0])
    groups = torch.tensor([0, 1, 1, 2, 2, 2])
    assert rloo_advantages(returns, groups, 3).tolist() == pytest.approx([7.0, 10.0, -10.0, -4.5, 0.0, 4.5])


def test_reinforce_pp_whitens_over_all_transitions():
    returns, groups = torch.tensor([10.0, 0.0, 10.0, 10.0]), torch.tensor([0, 0, 1, 1])
    episode = torch.tensor([0, 1, 2, 3])
    plain = reinforce_pp_advantages(returns, groups, 2, episode)
    assert plain.mean().item() == pytest.approx(0.0, abs=1e-6) and plain.std().item() == pytest.approx(1.0, rel=1e-4)
    assert plain[0] > 0 > plain[1]
    baseline = reinforce_pp_advantages(returns, groups, 2, episode, group_baseline=True)
    # after the group mean: [5, -5, 0, 0]; whitened: the all-success group stays at 0
    assert baseline[2].item() == pytest.approx(0.0, abs=1e-6) and baseline[0] == -baseline[1]


def test_gae_matches_a_direct_sum_of_discounted_deltas():
    torch.manual_seed(0)
    rewards, values = torch.randn(7), torch.randn(7)
    episode, step = torch.tensor([0, 1, 0, 1, 0, 1, 0]), torch.tensor([0, 0, 1, 1, 2, 2, 3])
    gamma, lam = 0.9, 0.8
    adv, targets = gae_advantages(rewards, values, episode, step, gamma, lam)
    for e in (0, 1):
        idx = [i for i in range(7) if episode[i] == e]
        v = [values[i].item() for i in idx] + [0.0]
        deltas = [rewards[i].item() + gamma * v[k + 1] - v[k] for k, i in enumerate(idx)]
        for k, i in enumerate(idx):
            expected = sum((gamma * lam) ** j * deltas[k + j] for j in range(len(idx) - k))
            assert adv[i].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert torch.allclose(targets, adv + values)


def test_clipped_value_loss_by_hand():
    old, target = torch.tensor([1.0, 1.0]), torch.tensor([3.0, 0.0])
    new = torch.tensor([2.0, 1.1])
    # row 0: unclipped (2-3)^2 = 1, clipped V = 1.2 -> (1.2-3)^2 = 3.24 -> max 3.24
    # row 1: unclipped (1.1-0)^2 = 1.21, clipped V = 1.1 -> 1.21
    assert clipped_value_loss(new, old, target, clip=0.2).item() == pytest.approx(0.5 * (3.24 + 1.21) / 2, rel=1e-5)
    assert clipped_value_loss(new, old, target, clip=0.0).item() == pytest.approx(0.5 * (1.0 + 1.21) / 2, rel=1e-5)


def test_explained_variance():
    targets = torch.tensor([1.0, 2.0, 3.0])
    assert explained_variance(targets, targets).item() == pytest.approx(1.0)
    assert explained_variance(torch.full((3,), 2.0), targets).item() == pytest.approx(0.0)
    assert math.isnan(explained_variance(targets, torch.ones(3)).item())
