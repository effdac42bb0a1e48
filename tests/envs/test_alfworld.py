"""ALFWorld: generated games in ALFWorld's own layout, played through our env and ALFWorld's own env."""

import json

import gymnasium as gym
import pytest

import paw_lightning.envs  # noqa: F401
from paw_lightning.envs.alfworld import TASK_LABELS, ALFWorldEnv, find_games, split_feedback, task_type_names
from paw_lightning.envs.alfworld_games import DATA_VERSION, TASK_TYPES, generate_games, main
from paw_lightning.envs.base import check_text_env_step


def play_expert(env, seed):
    """Follow the planner's next command until the episode ends; returns (rewards, last info)."""
    obs, info = env.reset(seed=seed)
    rewards = []
    for _ in range(50):
        result = env.step(info["expert_plan"][0])
        check_text_env_step(result)
        obs, reward, terminated, truncated, info = result
        rewards.append(reward)
        if terminated:
            break
    return rewards, info


@pytest.mark.parametrize("task_type", TASK_TYPES)
def test_expert_wins_every_task_type_through_our_env(alfworld_data, task_type):
    env = gym.make("paw/ALFWorld-v0", data_dir=str(alfworld_data), task_types=[task_type], expert="planner")
    obs, info = env.reset(seed=0)
    assert info["task_type"] == task_type and info["task_label"] == TASK_LABELS[task_type]
    assert "Welcome" not in obs and "Your task is to" not in obs and "you see" in obs
    assert info["task"] and "help" not in info["admissible_commands"]
    rewards, info = play_expert(env, seed=0)
    assert info["won"] and rewards[-1] == 10.0 and sum(rewards) == 10.0
    env.close()


@pytest.mark.parametrize("task_type", TASK_TYPES)
def test_generated_games_win_in_alfworlds_own_env(alfworld_data, task_type):
    from alfworld.agents.environment.alfred_tw_env import AlfredTWEnv

    root = alfworld_data / DATA_VERSION
    config = {
        "env": {"goal_desc_human_anns_prob": 0, "task_types": [TASK_TYPES.index(task_type) + 1],
                "domain_randomization": False, "expert_type": "planner"},
        "dataset": {"data_path": str(root / "train"), "eval_id_data_path": str(root / "valid_seen"),
                    "eval_ood_data_path": str(root / "valid_unseen"), "num_train_games": -1, "num_eval_games": -1},
        "logic": {"domain": "", "grammar": ""},
        "general": {"training_method": "dqn"},
        "rl": {"training": {"max_nb_steps_per_episode": 50}},
    }
    for split in ("train", "eval_in_distribution", "eval_out_of_distribution"):
        alfred = AlfredTWEnv(config, train_eval=split)
        assert alfred.num_games == 1
        walkthrough = json.loads(open(alfred.game_files[0]).read())["walkthrough"]
        env = alfred.init_env(batch_size=1)
        try:
            obs, infos = env.reset()
            for command in walkthrough:
                assert command in infos["admissible_commands"][0]
                obs, scores, dones, infos = env.step([command])
            assert dones[0] and infos["won"][0]
        finally:
            env.close()


def test_generation_is_deterministic_and_seeded(tmp_path):
    kinds = ("pick_heat_then_place_in_recep", "look_at_obj_in_light")
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_games(tmp_path / name, games_per_type=1, seed=seed, eval_games_per_type=0, task_types=kinds, progress=False)

    def contents(name):
        files = sorted(f for f in (tmp_path / name).rglob("*") if f.is_file())
        return {str(f.relative_to(tmp_path / name)): f.read_text() for f in files}

    assert contents("a") == contents("b") and len(contents("a")) == 6
    assert contents("a") != contents("c")


def test_generation_resumes_without_rewriting(tmp_path):
    generate_games(tmp_path, games_per_type=1, eval_games_per_type=0, task_types=("pick_and_place_simple",), progress=False)
    game = next(tmp_path.rglob("game.tw-pddl"))
    before = game.stat().st_mtime_ns
    report = generate_games(tmp_path, games_per_type=1, eval_games_per_type=0, task_types=("pick_and_place_simple",), progress=False)
    assert game.stat().st_mtime_ns == before and report.total() == 1 and report.tried["train"]["pick_and_place_simple"] == 0


def test_console_script_writes_the_layout(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--games-per-type", "1", "--eval-games-per-type", "0",
                 "--task-types", "pick_clean_then_place_in_recep", "--no-progress"]) == 0
    assert "wrote 1 games" in capsys.readouterr().out
    (trial,) = (tmp_path / DATA_VERSION / "train").glob("pick_clean_then_place_in_recep-*-None-*/trial_*")
    assert {p.name for p in trial.iterdir()} == {"traj_data.json", "initial_state.pddl", "game.tw-pddl"}
    traj = json.loads((trial / "traj_data.json").read_text())
    game = json.loads((trial / "game.tw-pddl").read_text())
    assert traj["task_type"] == "pick_clean_then_place_in_recep" and game["solvable"] is True
    assert "UNKNOWN GOAL" not in game["grammar"] and any(c.startswith("clean ") for c in game["walkthrough"])


def test_missing_data_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError) as err:
        gym.make("paw/ALFWorld-v0")
    message = str(err.value)
    assert "ALFWORLD_DATA" in message and str(tmp_path / "empty" / DATA_VERSION / "train") in message
    assert "alfworld-download" in message and "paw-alfworld-games" in message


def test_splits_and_task_type_filters(alfworld_data):
    assert len(find_games("train", root=alfworld_data)) == 6
    assert [t for _, t in find_games("eval_out_of_distribution", [2, "pick_two_obj_and_place"], alfworld_data)] == [
        "look_at_obj_in_light", "pick_two_obj_and_place"]
    assert "valid_seen" in find_games("eval_in_distribution", [1], alfworld_data)[0][0]
    with pytest.raises(ValueError, match="unknown ALFWorld split"):
        find_games("valid", root=alfworld_data)
    with pytest.raises(ValueError, match="unknown ALFWorld task type"):
        task_type_names([7])


def test_same_seed_same_game_and_invalid_commands_change_nothing(alfworld_data):
    env = ALFWorldEnv(data_dir=str(alfworld_data))
    first = env.reset(seed=4)
    env.step(first[1]["admissible_commands"][0])
    again = env.reset(seed=4)
    assert first[0] == again[0] and first[1]["task"] == again[1]["task"]
    obs, reward, terminated, truncated, info = env.step("fly to the moon")
    assert (obs, reward, terminated) == ("Nothing happens.", 0.0, False)
    assert info["admissible_commands"] == again[1]["admissible_commands"]
    env.close()


def test_split_feedback_takes_out_the_banner_and_the_task():
    text = "-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room.\n\nYour task is to: put a apple in fridge."
    assert split_feedback(text) == ("You are in the middle of a room.", "put a apple in fridge")


def test_a_valid_generated_action_reaches_alfworld_in_its_own_spelling(alfworld_data, tiny):
    """ALFWorld is case-sensitive: "Go to countertop 1" counts as valid only because the env is sent
    the admissible "go to countertop 1"; the raw text gets "Nothing happens."."""
    import torch

    from paw_lightning.rollout.actors import GenerateActor
    from paw_lightning.rollout.collector import Collector
    from paw_lightning.rollout.prompts import PromptBuilder, resolve_template
    from tests.scripted_model import ScriptedModel

    _, tokenizer = tiny
    env = ALFWorldEnv(data_dir=str(alfworld_data))
    seed = next(s for s in range(len(env.games)) if "go to countertop 1" in env.reset(seed=s)[1]["admissible_commands"])
    assert env.step("Go to countertop 1")[0] == "Nothing happens."  # why the spelling matters
    env.close()
    answer = tokenizer("<think>the counter</think><action>Go to countertop 1</action>", add_special_tokens=False)["input_ids"]
    collector = Collector(lambda: ALFWorldEnv(data_dir=str(alfworld_data)), 1, 1, 1,
                          PromptBuilder(generate=True, template=resolve_template("alfworld")), GenerateActor(max_new_tokens=32))
    rollout = collector.collect(ScriptedModel([answer], tokenizer.pad_token_id), tokenizer, [seed], torch.Generator(), progress=False)
    collector.close()
    (step,) = rollout.transitions
    assert step.valid and step.action_text == "go to countertop 1"
    assert step.next_obs.startswith("You arrive at countertop 1") and step.reward == 0.0  # no invalid-action penalty
