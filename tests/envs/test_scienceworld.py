"""ScienceWorld: the contract, replays, gold plans winning (also through listed commands only), splits,
options checked before a JVM starts, and the same rollout with and without env workers. One JVM serves
the module's single-env tests."""

import gymnasium as gym
import pytest

import paw_lightning.envs  # noqa: F401
from paw_lightning.envs.base import check_text_env_step
from paw_lightning.envs.scienceworld import ScienceWorldEnv, check_tasks, listed_equivalent
from paw_lightning.rollout.actors import ScoreActor
from tests.test_env_workers import collector, play, record

GOLD_TASKS = ["lifespan-longest-lived", "find-animal", "chemistry-mix"]  # short gold plans, three topics
# gold plans in wordings the list lacks, 4 topics: "X in inventory", "examine", "battery anode",
# a foil's terminals, "pour X in Y" among look-alike cups, seed moves that ask "Ambiguous request", and a
# plant that is "adult" only for a few ticks (find-plant 1: the refused steps' stand-in must take one tick)
LISTED_ONLY = [("power-component", 1), ("test-conductivity", 1),
               ("chemistry-mix-paint-secondary-color", 0), ("grow-plant", 0), ("find-plant", 1)]


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


def test_every_gold_step_has_a_listed_command_that_does_it(env):
    """Each gold plan wins when every step is the listed command ``listed_equivalent`` names; the steps it
    finds none for are ``open door to`` on doors ``easy`` opened: refused, they change nothing but take a tick
    of the clock that grows plants and animals, as ``look at agent`` does (``wait1`` takes more)."""
    kinds, refused = {"exact": 0, "reworded": 0}, []
    for task, variation in LISTED_ONLY:
        _, info = env.reset(options={"task": task, "variation": variation})
        for command in info["gold_plan"]:
            if command.isdigit() and command not in info["admissible_commands"]:
                continue  # answers an "Ambiguous request" that the reworded command before it did not raise
            listed = env.listed_equivalent(command)
            if listed is None:
                refused.append(command)
            else:
                kinds["exact" if listed == command else "reworded"] += 1
                assert listed in env._valid
            assert (listed or "look at agent") in env._valid
            _, _, terminated, _, info = env.step(listed or "look at agent")
            if terminated:
                break
        assert info["won"] and info["score"] == 100, (task, variation)
    assert kinds["reworded"] >= 12 and kinds["exact"] >= 50, kinds  # 13 and 59 when written
    assert refused and all(c.startswith("open door to") for c in refused), refused


def test_listed_equivalent_reads_commands_as_the_parser_does():
    # objects: 1 thermometer in 9 inventory; 2 anode on 3 battery; 4 foil with terminals 5, 6; 7 wire terminal; 8 jug
    referents = {"1": ["thermometer"], "9": ["inventory"], "2": ["anode", "battery anode"], "3": ["battery"],
                 "4": ["aluminum foil"], "5": ["terminal 1", "aluminum foil terminal 1"], "6": ["terminal 2"],
                 "7": ["terminal 1", "black wire terminal 1"], "8": ["jug"], "10": ["cup containing paint", "cup"]}
    containers = {"1": "9", "2": "3", "5": "4", "6": "4", "10": "8"}
    combos = [{"action": "focus on thermometer", "obj_ids": [1]}, {"action": "look at thermometer", "obj_ids": [1]},
              {"action": "connect anode in battery to black wire terminal 1", "obj_ids": [2, 7]},
              {"action": "connect aluminum foil to black wire terminal 1", "obj_ids": [4, 7]},
              {"action": "pour cup into jug", "obj_ids": [10, 8]}]
    # the list may word an object otherwise than the combinations do ("cup containing paint" for "cup")
    listed = {"focus on thermometer", "look at thermometer", "connect anode in battery to black wire terminal 1",
              "connect aluminum foil to black wire terminal 1", "pour cup containing paint into jug", "wait1"}

    def same(command):
        return listed_equivalent(command, listed, combos, referents, containers)

    assert same("wait1") == "wait1"
    assert same("focus on thermometer in inventory") == "focus on thermometer"
    assert same("examine thermometer in inventory") == "look at thermometer"
    assert same("connect battery anode to black wire terminal 1") == "connect anode in battery to black wire terminal 1"
    assert same("connect aluminum foil terminal 1 to black wire terminal 1") == "connect aluminum foil to black wire terminal 1"
    assert same("pour cup in jug") == "pour cup containing paint into jug"
    assert same("focus on thermometer in jug") is None  # not where it is
    assert same("open door to kitchen") is None and same("eat thermometer") is None


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
