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
