"""world_model.py on hand-built transitions: targets (context, horizon, truncation), de-duplication, the WM
term and its metrics on one row set, the per-term gradient norms; plus the selection and advantage helpers
that issue's metrics use."""

import math

import pytest
import torch

from paw_lightning.advantages import zero_advantage_group_frac
from paw_lightning.rollout.batch import collate
from paw_lightning.rollout.types import Transition
from paw_lightning.selection import normalized_entropy
from paw_lightning.world_model import (
    PLAIN_AFTER_ACTION,
    TurnFrame,
    build_targets,
    dedup_mask,
    grad_term_norms,
    transition_key,
    turn_frame,
    wm_term,
)

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def step(episode, t, obs_ids, action_ids=(7,), done=False, observation="room", action="go", next_obs=None, candidates=None):
    return Transition(
        prompt_ids=[1, 2], action_ids=list(action_ids), action_text=action, obs_ids=list(obs_ids),
        next_obs=next_obs if next_obs is not None else f"obs {obs_ids}", reward=0.0, done=done, valid=True,
        group_id=0, episode_id=episode, step=t, task_type="x", observation=observation,
        candidate_ids=candidates, chosen=0 if candidates else -1,
    )


def episode_of_three():
    return [step(0, 0, [10, 11], (7,)), step(0, 1, [12], (8,)), step(0, 2, [13, 14], (9,), done=True)]


def test_raw_one_step_targets_are_the_next_observation_with_every_token_scored():
    transitions = episode_of_three()
    for t, target in zip(transitions, build_targets(transitions)):
        assert target.ids == t.obs_ids and target.loss_mask == [True] * len(t.obs_ids)


def test_horizon_appends_the_episode_s_next_action_and_observation_pairs_and_stops_at_its_end():
    transitions = episode_of_three() + [step(1, 0, [20], (5,), done=True)]  # another episode, interleaved after
    frame = TurnFrame(after_action=(90, 91), after_obs=(92,))
    targets = build_targets(transitions, frame, horizon=3)
    # step 0: frame, o1, then (after_obs, a1, frame, o2), then (after_obs, a2, frame, o3)
    assert targets[0].ids == [90, 91, 10, 11, 92, 8, 90, 91, 12, 92, 9, 90, 91, 13, 14]
    assert targets[0].loss_mask == [False, False, True, True, False, False, False, False, True, False, False, False, False, True, True]
    assert targets[1].ids == [90, 91, 12, 92, 9, 90, 91, 13, 14]  # only one step left in the episode
    assert targets[2].ids == [90, 91, 13, 14] and targets[3].ids == [90, 91, 20]  # episode ends: o_{t+1} alone
    cut = build_targets(transitions, frame, horizon=3, max_tokens=6)
    assert cut[0].ids == targets[0].ids[:6] and cut[0].loss_mask == targets[0].loss_mask[:6]
    raw = build_targets(transitions, horizon=2)
    assert raw[0].ids == [10, 11, 8, 12] and raw[0].loss_mask == [True, True, False, True]
    with pytest.raises(ValueError, match="wm_horizon must be >= 1"):
        build_targets(transitions, horizon=0)


def test_the_score_actor_s_horizon_uses_the_chosen_candidates():
    transitions = [step(0, 0, [10], (7,), candidates=[[7], [6, 6]]), step(0, 1, [12], (8, 8), done=True, candidates=[[8, 8], [5]])]
    assert build_targets(transitions, horizon=2)[0].ids == [10, 8, 8, 12]


def test_a_response_that_ended_its_turn_does_not_get_the_end_token_twice():
    frame = TurnFrame(after_action=(3, 91), after_obs=(92,))  # 3: the end-of-turn token the generator stopped at
    stopped, cut_off = step(0, 0, [10], (7, 3), done=True), step(1, 0, [10], (7, 8), done=True)
    assert build_targets([stopped], frame)[0].ids == [91, 10]
    assert build_targets([cut_off], frame)[0].ids == [3, 91, 10]


def test_turn_frames_come_from_the_chat_template(tiny):
    _, tokenizer = tiny
    plain = turn_frame(tokenizer, "turn")
    assert tokenizer.decode(list(plain.after_action)) == PLAIN_AFTER_ACTION  # no template: plain markers
    assert turn_frame(tokenizer, "raw") == TurnFrame()
    tokenizer.chat_template = CHATML
    try:
        frame = turn_frame(tokenizer, "turn")
    finally:
        tokenizer.chat_template = None
    assert tokenizer.decode(list(frame.after_action)) == "<|im_end|>\n<|im_start|>user\n"
    assert tokenizer.decode(list(frame.after_obs)) == "<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("mode", ["score", "generate"])
def test_the_batch_scores_only_the_observation_tokens_of_a_framed_target(mode):
    candidates = [[7], [6, 6]] if mode == "score" else None
    transitions = [step(0, 0, [10, 11], (7,), candidates=candidates), step(0, 1, [12], (7,), done=True, candidates=candidates)]
    frame = TurnFrame(after_action=(90, 91), after_obs=(92,))
    for t, target in zip(transitions, build_targets(transitions, frame, horizon=2)):
        t.wm_ids, t.wm_loss_mask = target.ids, target.loss_mask
    batch = collate(transitions, mode, pad_id=0)
    row = batch["input_ids"][0]
    assert row[batch["obs_mask"][0]].tolist() == [10, 11, 12]  # o1 and o2, not the frame or a1
    assert row[batch["action_mask"][0]].tolist() == ([7, 6, 6] if mode == "score" else [7])  # a0 only
    assert row[batch["branch"][0] == 0].tolist() == [7, 90, 91, 10, 11, 92, 7, 90, 91, 12]  # the chosen branch


def test_dedup_keeps_the_first_selected_copy_of_each_repeated_transition():
    # an agent looping "go west" / "go east" between two rooms: steps 0/2/4 and 1/3 repeat
    loop = [step(0, t, [30 + t % 2], observation=f"room {t % 2}", action="go west" if t % 2 == 0 else "go east",
                 next_obs=f"room {(t + 1) % 2}") for t in range(5)]
    keys = [transition_key(t) for t in loop]
    assert dedup_mask(keys, torch.ones(5, dtype=torch.bool)).tolist() == [True, True, False, False, False]
    selected = torch.tensor([False, True, True, True, False])  # the first copy unselected: the next selected one stays
    assert dedup_mask(keys, selected).tolist() == [False, True, True, False, False]
    assert dedup_mask([], torch.zeros(0, dtype=torch.bool)).tolist() == []


def test_the_wm_term_and_its_metrics_describe_the_same_weighted_rows():
    per_row = torch.tensor([0.4, 0.2, 0.9])
    weight = torch.tensor([1.0, 0.5, 0.0])  # the third row is unselected (or lambda 0)
    obs_mask = torch.tensor([[True, True, False], [True, True, True], [True, True, True]])
    clipped = torch.tensor([[True, False, False], [True, True, True], [False, False, False]])
    correct = torch.tensor([[True, True, False], [False, False, True], [True, True, True]])
    out = wm_term(per_row, weight, 2.0, obs_mask, clipped, correct)
    assert out.term.item() == pytest.approx((0.4 + 0.1) / 2)
    assert out.loss.item() == pytest.approx(0.5 / 1.5)  # weighted mean of l_i over the weighted rows
    assert out.weight_mean.item() == pytest.approx(0.75)
    assert out.term.item() == pytest.approx(out.loss.item() * out.weight_mean.item())
    # tokens: row 0 has 2 (weight 1), row 1 has 3 (weight 0.5); row 2 never counts
    assert out.clipped_token_frac.item() == pytest.approx((1 + 0.5 * 3) / (2 + 1.5))
    assert out.token_acc.item() == pytest.approx((2 + 0.5 * 1) / (2 + 1.5))
    assert out.rows.item() == 2


def test_grad_term_norms_split_the_total_gradient():
    total, wm = [torch.tensor([3.0, 4.0]), torch.tensor([1.0])], [torch.tensor([3.0, 0.0]), torch.tensor([1.0])]
    rl_norm, wm_norm = grad_term_norms(total, wm)
    assert rl_norm.item() == pytest.approx(4.0) and wm_norm.item() == pytest.approx(math.sqrt(10.0))


def test_zero_advantage_groups_are_those_without_any_signal():
    advantages = torch.tensor([0.0, 0.0, 1.0, -1.0, 0.0, 1e-9])
    groups = torch.tensor([0, 0, 1, 1, 3, 3])  # group 2 has no transition: not counted
    assert zero_advantage_group_frac(advantages, groups) == pytest.approx(2 / 3)
    assert zero_advantage_group_frac(torch.zeros(0), torch.zeros(0, dtype=torch.long)) == 0.0


def test_normalized_entropy_divides_by_the_most_a_step_could_have():
    entropy = torch.tensor([math.log(2), math.log(2), 0.0])
    out = normalized_entropy(entropy, torch.tensor([2, 8, 1]))
    assert out.tolist() == pytest.approx([1.0, 1 / 3, 0.0])
