"""Episode records from a hand-made rollout: the sampled episodes, per-step fields of both actors, text."""

import math

import torch

from paw_lightning.episode_log import episode_records, episode_text, sample_episodes, step_record
from paw_lightning.rollout.types import Episode, Rollout, Transition


def transition(episode, step, action, **kw):
    return Transition(prompt_ids=[1], action_ids=[5, 6], action_text=action, obs_ids=[2], next_obs=f"after {action}",
                      reward=kw.pop("reward", 0.0), done=kw.pop("done", False), valid=kw.pop("valid", True), group_id=0,
                      episode_id=episode, step=step, task_type="t", observation=f"obs {episode}.{step}", **kw)


def score_rollout():
    logp = [math.log(0.6), math.log(0.3), math.log(0.1)]
    steps = [transition(0, 0, "go", chosen=0, candidate_logprobs=logp, candidates=["go", "wait", "look"]),
             transition(1, 0, "look", chosen=2, candidate_logprobs=logp, candidates=["go", "wait", "look"]),
             transition(0, 1, "go", chosen=0, candidate_logprobs=logp, candidates=["go", "wait", "look"], reward=10.0, done=True)]
    episodes = [Episode(0, 0, 7, "t", task="reach the end", total_return=10.0, length=2, won=True),
                Episode(1, 0, 7, "t", task="reach the end", length=1)]
    rollout = Rollout(steps, episodes, num_groups=1, mode="score", temperature=1.0, iteration=3)
    rollout.action_entropy = torch.tensor([0.9, 0.5, 0.1])
    rollout.wm_selected = torch.tensor([True, False, True])
    rollout.wm_weight = torch.tensor([0.5, 0.5, 0.5])
    return rollout


def test_sampling_is_repeatable_capped_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    assert sample_episodes(10, 3, "train-4") == sample_episodes(10, 3, "train-4")
    assert len(set(sample_episodes(10, 3, "train-4"))) == 3
    assert sample_episodes(2, 5, "x") == [0, 1] and sample_episodes(5, 0, "x") == []
    assert torch.equal(state, torch.random.get_rng_state())


def test_score_actor_steps_carry_probability_alternatives_selection_and_lambda():
    (first,) = episode_records(score_rollout(), "train", 3, 1, wm_coef=0.25, episodes=[0])
    assert (first["task"], first["won"], first["iteration"], first["split"], first["seed"]) == ("reach the end", True, 3, "train", 7)
    assert [s["step"] for s in first["steps"]] == [0, 1]  # only episode 0's transitions, in order
    step = first["steps"][0]
    assert math.isclose(step["prob"], 0.6)
    assert [a["action"] for a in step["alternatives"]] == ["wait", "look"]
    assert math.isclose(step["alternatives"][0]["prob"], 0.3)
    assert step["wm_selected"] is True and math.isclose(step["lambda"], 2.0) and math.isclose(step["entropy"], 0.9, rel_tol=1e-6)
    assert first["steps"][1]["reward"] == 10.0 and first["steps"][1]["done"]
    other = step_record(score_rollout(), 1, wm_coef=0.25)
    assert other["wm_selected"] is False and [a["action"] for a in other["alternatives"]] == ["go", "wait"]


def test_generate_actor_steps_carry_the_raw_response_and_no_wm_fields_without_wm_loss():
    class Decoder:
        def decode(self, ids, skip_special_tokens=True):
            return "think <action>go</action>" if ids == [5, 6] else "?"

    rollout = Rollout([transition(0, 0, "go", valid=False)], [Episode(0, 0, 1, "t", task="x", length=1)], 1, "generate", 1.0)
    rollout.wm_selected, rollout.wm_weight = torch.tensor([True]), torch.tensor([0.0])
    (record,) = episode_records(rollout, "validation", 0, 2, Decoder(), wm_coef=0.0)
    step = record["steps"][0]
    assert step["response"] == "think <action>go</action>" and "prob" not in step and "alternatives" not in step
    assert "wm_selected" not in step  # wm_coef 0: no world-model loss ran
    assert "[invalid]" in episode_text(record) and "response: 'think <action>go</action>'" in episode_text(record)


def test_text_shows_the_observation_action_probability_and_outcome():
    (record,) = episode_records(score_rollout(), "train", 3, 1, wm_coef=1.0, episodes=[0])
    text = episode_text(record)
    assert "won, return 10.00, 2 steps" in text and "task: reach the end" in text
    assert "  | obs 0.0" in text and "  > go  (60%)" in text and "others: wait (30%), look (10%)" in text
    assert "world model: selected, lambda 0.50" in text and text.rstrip().endswith("| after go")
