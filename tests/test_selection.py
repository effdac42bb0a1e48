import pytest
import torch

from paw_lightning.selection import derangement, reward_adaptive_lambda, top_fraction_mask


def test_top_fraction_keeps_ceil_of_ratio_highest():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7])
    assert top_fraction_mask(scores, 0.75).tolist() == [False, True, True, True]
    assert top_fraction_mask(scores, 0.5).tolist() == [False, True, False, True]
    assert top_fraction_mask(scores, 1.0).all()


def test_top_fraction_breaks_ties_by_position():
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5])
    assert top_fraction_mask(scores, 0.5).tolist() == [True, True, False, False]


def test_top_fraction_tiny_and_empty_rollouts():
    assert top_fraction_mask(torch.tensor([0.3]), 0.1).tolist() == [True]  # ceil(0.1) = 1
    assert top_fraction_mask(torch.tensor([0.3, 0.1, 0.2]), 0.6).tolist() == [True, False, True]  # ceil(1.8) = 2
    assert top_fraction_mask(torch.tensor([0.3, 0.1, 0.2]), 0.7).all()  # ceil(2.1) = 3
    assert top_fraction_mask(torch.zeros(0), 0.75).numel() == 0


def test_top_fraction_rejects_ratio_outside_unit_interval():
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="ratio"):
            top_fraction_mask(torch.ones(3), bad)


def test_lambda_all_fail_all_success_and_mixed():
    returns = torch.tensor([0.0, 0.0, 10.0, 10.0, 10.0, 0.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    lam = reward_adaptive_lambda(returns, groups, num_groups=3, r_max=10.0)
    assert lam.tolist() == pytest.approx([1.0, 0.0, 0.5])


def test_lambda_clamps_negative_returns_and_overshoot():
    returns = torch.tensor([-0.5, -0.3, 12.0])
    groups = torch.tensor([0, 0, 1])
    lam = reward_adaptive_lambda(returns, groups, num_groups=2, r_max=10.0)
    assert lam.tolist() == pytest.approx([1.0, 0.0])


def test_lambda_rejects_non_positive_r_max():
    with pytest.raises(ValueError, match="r_max"):
        reward_adaptive_lambda(torch.zeros(1), torch.zeros(1, dtype=torch.long), 1, 0.0)


def test_derangement_is_a_permutation_without_fixed_points():
    for n in range(2, 40):
        for seed in range(25):
            order = derangement(n, torch.Generator().manual_seed(seed))
            assert sorted(order.tolist()) == list(range(n)), (n, seed)
            assert not (order == torch.arange(n)).any(), (n, seed)


def test_derangement_is_reproducible_and_varies_with_the_seed():
    draw = lambda seed: derangement(12, torch.Generator().manual_seed(seed)).tolist()  # noqa: E731
    assert draw(3) == draw(3)
    assert len({tuple(draw(seed)) for seed in range(20)}) > 10
    # n = 2 has a single derangement, n = 3 two (the two 3-cycles); both are reached
    assert derangement(2, torch.Generator().manual_seed(0)).tolist() == [1, 0]
    assert {tuple(derangement(3, torch.Generator().manual_seed(s)).tolist()) for s in range(30)} == {(1, 2, 0), (2, 0, 1)}


def test_derangement_of_one_and_zero_items():
    assert derangement(1, torch.Generator().manual_seed(0)).tolist() == [0]  # no other transition to borrow from
    empty = derangement(0, torch.Generator().manual_seed(0))
    assert empty.numel() == 0 and empty.dtype == torch.long
    with pytest.raises(ValueError, match="n must be"):
        derangement(-1, torch.Generator())
