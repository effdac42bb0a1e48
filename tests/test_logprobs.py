import pytest
import torch

from paw_lightning.logprobs import candidate_log_softmax, categorical_entropy, head_stats, trunk_hidden
from paw_lightning.models import trunk_and_head
from paw_lightning.rollout.batch import build_rows


def token_logps(model, batch, mask, temperature=1.0, chunk=1024):
    trunk, head = trunk_and_head(model)
    with torch.no_grad():
        return head_stats(head, trunk_hidden(trunk, batch), batch["input_ids"], mask, temperature, chunk, batch["source"])


def test_action_logprobs_do_not_change_when_the_observation_is_appended(tiny):
    """Causal attention: o_{t+1} after a_t cannot change the action's log-probs (the policy loss is the baseline's)."""
    model, _ = tiny
    prompt, action, obs = [5, 17, 42, 99, 7], [300, 301, 302], [400, 401, 402, 403]
    without = build_rows([prompt], [[action]], pad_id=0)
    with_obs = build_rows([prompt], [[action]], pad_id=0, obs=[obs], chosen=[0])
    a = token_logps(model, without, without["action_mask"]).logp[without["action_mask"]]
    b = token_logps(model, with_obs, with_obs["action_mask"]).logp[with_obs["action_mask"]]
    assert torch.allclose(a, b, atol=1e-5)
    assert with_obs["obs_mask"].sum().item() == len(obs)


def test_packed_candidates_score_exactly_as_separate_rows(tiny):
    """Packing all candidates after one prompt gives each the log-probs it has when it stands alone."""
    model, _ = tiny
    prompt = [11, 12, 13, 14, 15, 16]
    cands = [[200, 201], [210], [220, 221, 222]]
    packed = build_rows([prompt], [cands], pad_id=0, obs=[[500, 501]], chosen=[1])
    packed_stats = token_logps(model, packed, packed["action_mask"])
    for j, cand in enumerate(cands):
        alone = build_rows([prompt], [[cand]], pad_id=0)
        expected = token_logps(model, alone, alone["action_mask"]).logp[alone["action_mask"]]
        got = packed_stats.logp[packed["action_mask"] & (packed["action_candidate"] == j)]
        assert torch.allclose(got, expected, atol=1e-5), j
    # the observation follows candidate 1 only
    obs_alone = build_rows([prompt], [[cands[1]]], pad_id=0, obs=[[500, 501]], chosen=[0])
    expected_obs = token_logps(model, obs_alone, obs_alone["obs_mask"]).logp[obs_alone["obs_mask"]]
    got_obs = token_logps(model, packed, packed["obs_mask"]).logp[packed["obs_mask"]]
    assert torch.allclose(got_obs, expected_obs, atol=1e-5)


def test_padding_rows_in_a_batch_do_not_change_scores(tiny):
    model, _ = tiny
    short = build_rows([[3, 4, 5]], [[[60], [61]]], pad_id=0)
    both = build_rows([[3, 4, 5], [7, 8, 9, 10, 11, 12, 13]], [[[60], [61]], [[70, 71], [72]]], pad_id=0)
    a = token_logps(model, short, short["action_mask"]).logp[0][short["action_mask"][0]]
    b = token_logps(model, both, both["action_mask"]).logp[0][both["action_mask"][0]]
    assert torch.allclose(a, b, atol=1e-5)


def test_chunked_head_equals_full_logits(tiny):
    model, _ = tiny
    batch = build_rows([[1, 2, 3, 4], [5, 6]], [[[7, 8, 9]], [[10, 11]]], pad_id=0, obs=[[12, 13], [14]], chosen=[0, 0])
    mask = batch["action_mask"] | batch["obs_mask"]
    chunked = token_logps(model, batch, mask, temperature=0.7, chunk=2)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"].long()).logits / 0.7
    full = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    assert torch.allclose(chunked.logp[:, 1:][mask[:, 1:]], full[mask[:, 1:]], atol=1e-5)


def test_head_only_sees_loss_positions(tiny):
    """The output head is applied to the scored tokens only, never to batch x length."""
    model, _ = tiny
    trunk, head = trunk_and_head(model)
    seen = []
    handle = head.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    batch = build_rows([[1] * 50], [[[7, 8, 9]]], pad_id=0)
    with torch.no_grad():
        head_stats(head, trunk_hidden(trunk, batch), batch["input_ids"], batch["action_mask"])
    handle.remove()
    assert [s[0] for s in seen] == [3]


def test_first_token_cannot_be_scored():
    with pytest.raises(ValueError, match="first token"):
        head_stats(torch.nn.Identity(), torch.zeros(1, 2, 4), torch.zeros(1, 2, dtype=torch.long), torch.tensor([[True, False]]))


def test_candidate_log_softmax_and_entropy_by_hand():
    token_logp = torch.tensor([[0.0, -1.0, -3.0, -2.0, 0.0]])
    action_candidate = torch.tensor([[-1, 0, 0, 1, -1]])
    log_probs = candidate_log_softmax(token_logp, action_candidate, torch.tensor([2]), temperature=1.0)
    # candidate scores: mean(-1, -3) = -2 and -2 -> uniform
    assert log_probs.exp().tolist()[0] == pytest.approx([0.5, 0.5])
    assert categorical_entropy(log_probs).item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    # a second row with one candidate is padded with -inf: probability 1 on its only candidate
    two_rows = candidate_log_softmax(
        torch.cat([token_logp, token_logp]), torch.cat([action_candidate, torch.tensor([[-1, 0, 0, -1, -1]])]),
        torch.tensor([2, 1]), temperature=1.0,
    )
    assert two_rows.exp().tolist()[1] == pytest.approx([1.0, 0.0])
    assert categorical_entropy(two_rows)[1].item() == pytest.approx(0.0)
