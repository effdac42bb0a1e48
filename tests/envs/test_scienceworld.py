"""ScienceWorld: the contract, replays, gold plans winning, splits, options checked before a JVM starts,
and the same rollout with and without env workers. One JVM serves the module's single-env tests."""

import gymnasium as gym
import pytest

import paw_lightning.envs  # noqa: F401
from paw_lightning.envs.base import check_text_env_step
from paw_lightning.envs.scienceworld import ScienceWorldEnv, check_tasks
from paw_lightning.rollout.actors import ScoreActor
from tests.test_env_workers import collector, play, record

GOLD_TASKS = ["lifespan-longest-lived", "find-animal", "chemistry-mix"]  # short gold plans, three topics


@pytest.fixture(scope="module")
def env():
    env = gym.make("paw/ScienceWorld-v0", tasks=GOLD_TASKS, gold_plan=True, jvm_heap_mb=256, disable_env_checker=True)
    yield env.unwrapped
    env.close()


def test_reset_follows_the_contract_and_replays_exactly(env):
    obs, info = env.reset(seed=1)
    assert info["task_type"] == "find-animal" and info["task_label"] == "Classification"
    assert info["task"].startswith("Your task is to find") and "This room is called" in obs
    assert info["won"] is False and len(info["admissible_commands"]) > 20
    assert info["admissible_commands"] == sorted(info["admissible_commands"])
    result = env.step("look around")
    check_text_env_step(result)
    assert result[1] == 0.0 and not result[2]
    assert "reset task" not in info["admissible_commands"]  # it would restart the world mid-episode
    env.step("teleport to kitchen")
    for _ in range(3):  # the simulator lists the art studio's three wood cups in a new order at every reset
        assert env.reset(seed=1) == (obs, info)
    assert env.reset(seed=1 + len(GOLD_TASKS))[1]["variation"] != info["variation"]  # next variation, same task


@pytest.mark.parametrize("task", GOLD_TASKS)
def play_gold(env, task):
    """Follow the gold plan until the episode ends; returns (rewards, last step)."""
    _, info = env.reset(options={"task": task, "variation": 0})
    rewards = []
    for command in info["gold_plan"]:
        result = env.step(command)
        rewards.append(result[1])
        if result[2]:
            break
    return rewards, result


@pytest.mark.parametrize("task", GOLD_TASKS)
def test_the_gold_plan_wins_with_a_score_of_100(env, task):
    rewards, (obs, reward, terminated, truncated, info) = play_gold(env, task)
    assert terminated and not truncated and info["won"] and info["score"] == 100
    assert reward > 0 and 0 < sum(rewards) <= 100


def test_win_reward_mode_pays_once_on_the_winning_step(env):
    env.reward_mode = "win"
    try:
        rewards, _ = play_gold(env, "lifespan-longest-lived")
    finally:
        env.reward_mode = "score"
    assert rewards[-1] == 10.0 and sum(rewards) == 10.0


def test_splits_hold_disjoint_variations(env):
    train = env.variations("find-animal")
    env.split = "dev"
    env._variations.clear()
    try:
        dev = env.variations("find-animal")
    finally:
        env.split = "train"
        env._variations.clear()
    assert train[0] == 0 and dev and not set(train) & set(dev)


def test_keep_and_max_commands_list_a_replayable_subset(env):
    env.keep_commands, env.max_commands = ("focus on", "teleport to"), 5
    try:
        # seed 0: a world without two objects of one name (the simulator names their commands anew at every reset)
        first = [env.reset(seed=0)[1]["admissible_commands"], env.step("teleport to kitchen")[4]["admissible_commands"]]
        again = [env.reset(seed=0)[1]["admissible_commands"], env.step("teleport to kitchen")[4]["admissible_commands"]]
    finally:
        env.keep_commands, env.max_commands = ("",), 0
    assert first == again and first[0] != first[1]
    assert all(len(c) == 5 and all(x.startswith(("focus on", "teleport to")) for x in c) for c in first)


def test_filters_that_leave_nothing_fall_back_to_the_simulators_list(env):
    env.keep_commands = ("sing",)
    try:
        commands = env.reset(seed=0)[1]["admissible_commands"]
    finally:
        env.keep_commands = ("",)
    assert "look around" in commands and "reset task" not in commands and len(commands) > 20


def test_focusing_on_the_wrong_thing_ends_the_episode_lost(env):
    _, info = env.reset(options={"task": "find-animal", "variation": 0})
    obs, reward, terminated, truncated, info = env.step("focus on agent")
    assert terminated and not info["won"] and reward < 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tasks": ["boil", "make-tea"]}, "unknown ScienceWorld task(s) ['make-tea']; valid tasks: ["),
        ({"split": "valid"}, "unknown ScienceWorld split 'valid'"),
        ({"simplifications": "easy,fast"}, "simplification(s) ['fast']"),
        ({"jvm_heap_mb": 16}, "jvm_heap_mb must be >= 64"),
    ],
)
def test_bad_options_fail_before_a_jvm_starts(kwargs, message):
    with pytest.raises(ValueError) as err:
        ScienceWorldEnv(**kwargs)
    assert message in str(err.value)
    assert "find-living-thing" in str(err.value) or "tasks" not in kwargs


def test_all_thirty_tasks_are_known_without_a_jvm():
    assert len(check_tasks(None)) == 30


def test_the_same_rollout_with_and_without_env_workers(tiny):
    model, tokenizer = tiny
    kwargs = {"tasks": ["find-animal"], "jvm_heap_mb": 256, "drop_commands": ["look at", "close"], "max_commands": 12}
    runs = {w: record(play(collector("paw/ScienceWorld-v0", kwargs, ScoreActor(), w, num_groups=1, max_steps=3),
                           model, tokenizer, [0], rollouts=1))
            for w in (0, 2)}
    assert runs[2] == runs[0]
    transitions = runs[0][0][0]
    assert transitions and not any(t["action_text"].startswith("look at") for t in transitions)
    assert all(len(t["candidate_ids"]) == 12 for t in transitions)
