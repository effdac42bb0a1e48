import math

import pytest
import torch

from paw_lightning.losses import ce_loss, clipped_policy_loss, cmae_loss, low_var_kl, masked_mean


def logp(*probs):
    return torch.log(torch.tensor([list(probs)], dtype=torch.float32))


def test_cmae_clips_confident_tokens_and_divides_by_full_length():
    # p = 0.1, 0.5 (clipped, > rho), 0.2 (== rho, kept), padding
    token_logp = logp(0.1, 0.5, 0.2, 0.9)
    mask = torch.tensor([[True, True, True, False]])
    loss, clipped = cmae_loss(token_logp, mask, rho=0.2)
    expected = ((1 - 0.1) + (1 - 0.2)) / 3  # the clipped token still counts in |o| = 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert clipped.tolist() == [[False, True, False, False]]


def test_cmae_single_token_and_empty_observation():
    token_logp = logp(0.05, 0.3)
    loss, _ = cmae_loss(token_logp, torch.tensor([[True, False]]), rho=0.2)
    assert loss.item() == pytest.approx(0.95, rel=1e-5)
    empty, clipped = cmae_loss(token_logp, torch.zeros(1, 2, dtype=torch.bool), rho=0.2)
    assert empty.item() == 0.0 and not clipped.any()


def test_cmae_gradient_is_zero_on_clipped_tokens():
    token_logp = logp(0.1, 0.6).requires_grad_(True)
    loss, _ = cmae_loss(token_logp, torch.ones(1, 2, dtype=torch.bool), rho=0.2)
    loss.sum().backward()
    grad = token_logp.grad[0]
    # d/dlogp (1 - exp(logp)) / 2 = -p / 2 for the kept token, 0 for the clipped one
    assert grad[0].item() == pytest.approx(-0.1 / 2, rel=1e-5)
    assert grad[1].item() == 0.0


def test_ce_is_mean_negative_log_likelihood():
    token_logp = logp(0.5, 0.25, 0.9)
    loss = ce_loss(token_logp, torch.tensor([[True, True, False]]))
    assert loss.item() == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-5)


def test_masked_mean_of_empty_mask_is_zero():
    assert masked_mean(torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0


def test_clipped_policy_loss_matches_hand_computation():
    old = torch.log(torch.tensor([[0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.75, 0.25]]))  # ratios 1.5 and 0.5
    adv = torch.tensor([1.0])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, clip_frac, _ = clipped_policy_loss(new, old, adv, mask, clip_eps=0.2)
    # A > 0: min(r * A, clip(r) * A) -> min(1.5, 1.2) = 1.2 and min(0.5, 0.8) = 0.5
    assert loss.item() == pytest.approx(-(1.2 + 0.5) / 2, rel=1e-5)
    assert clip_frac.item() == pytest.approx(1.0)
    loss_neg, _, _ = clipped_policy_loss(new, old, -adv, mask, clip_eps=0.2)
    # A < 0: min(-1.5, -1.2) = -1.5 and min(-0.5, -0.8) = -0.8
    assert loss_neg.item() == pytest.approx((1.5 + 0.8) / 2, rel=1e-5)


def test_clipped_policy_loss_ignores_masked_units():
    old = torch.zeros(1, 3)
    new = torch.tensor([[0.0, 5.0, 0.0]])
    mask = torch.tensor([[True, False, True]])
    loss, clip_frac, approx_kl = clipped_policy_loss(new, old, torch.tensor([2.0]), mask)
    assert loss.item() == pytest.approx(-2.0)
    assert clip_frac.item() == 0.0 and approx_kl.item() == pytest.approx(0.0, abs=1e-7)


def test_low_var_kl_is_zero_at_reference_and_positive_elsewhere():
    a = torch.log(torch.tensor([[0.3, 0.6]]))
    mask = torch.ones(1, 2, dtype=torch.bool)
    assert low_var_kl(a, a, mask).item() == pytest.approx(0.0, abs=1e-7)
    b = torch.log(torch.tensor([[0.6, 0.3]]))
    d = torch.log(torch.tensor([2.0, 0.5]))  # ref - logp
    expected = (torch.exp(d) - d - 1).mean().item()
    assert low_var_kl(a, b, mask).item() == pytest.approx(expected, rel=1e-5)
