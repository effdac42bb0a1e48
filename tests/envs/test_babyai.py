"""BabyAI through paw/BabyAI-v0: the bot's plan wins on a spread of levels, the view is described in the
agent's frame, a seed replays one level instance and the splits differ, unknown levels fail early."""

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("minigrid")

import paw_lightning.envs  # noqa: F401
from paw_lightning.envs.babyai import ACTION_NAMES, describe_view, steps_text
from paw_lightning.envs.base import NO_ACTION, check_text_env_step
from paw_lightning.rollout.datamodule import check_env_kwargs

SPREAD = ["GoToRedBall", "GoToLocal", "PickupLoc", "PutNextLocal", "Open", "UnlockLocal", "GoToObjMaze",
          "GoToSeq", "ActionObjDoor", "Synth", "OpenDoorsOrderN2", "MiniBossLevel"]


@pytest.fixture(scope="module")
def env():
    return gym.make("paw/BabyAI-v0", levels=SPREAD, gold_plan=True, disable_env_checker=True)


def test_the_bots_plan_wins_on_a_spread_of_levels(env):
    won = {}
    for seed in range(2 * len(SPREAD)):
        obs, info = env.reset(seed=seed)
        assert info["task_type"] == SPREAD[seed % len(SPREAD)] and info["admissible_commands"] == list(ACTION_NAMES)
        for move in info["plan"]:
            result = env.step(move)
            check_text_env_step(result)
        won[(info["task_type"], seed)] = result[4]["won"] and result[2] and result[1] > 0
    assert all(won.values()), [k for k, v in won.items() if not v]


def test_the_view_is_described_in_the_agents_frame():
    image = np.zeros((7, 7, 3), dtype=np.uint8)
    image[:, :, 0] = 1  # empty
    image[3, 1] = (2, 5, 0)  # a wall 5 steps ahead
    image[1, 6] = (2, 5, 0)  # a wall 2 steps left
    image[4, 4] = (6, 1, 0)  # a green ball: 2 forward, 1 right
    image[3, 5] = (4, 4, 2)  # a locked yellow door just ahead
    text = describe_view(image, 0, None)
    assert text.splitlines() == ["You face east.",
                                 "You see a locked yellow door 1 step forward; a green ball 2 steps forward and 1 step right.",
                                 "The nearest walls: 5 steps forward, 2 steps left.", "You carry nothing."]
    assert steps_text(0, -3) == "3 steps left"


def test_a_seed_replays_its_level_and_the_splits_differ(env):
    first = [env.reset(seed=s)[0] for s in range(4)]
    assert first == [env.reset(seed=s)[0] for s in range(4)]
    val = gym.make("paw/BabyAI-v0", levels=SPREAD, split="validation", disable_env_checker=True)
    assert sum(val.reset(seed=s)[0] != first[s] for s in range(4)) >= 3


def test_text_that_names_no_action_is_a_no_op(env):
    obs, _ = env.reset(seed=0)
    after, reward, terminated, truncated, info = env.step("fly")
    assert after == f"{NO_ACTION}\n{obs}" and reward == 0.0 and not (terminated or truncated or info["won"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"levels": ["GoToLocal", "GoToMars"]}, r"unknown BabyAI level\(s\) \['GoToMars'\]; valid levels: \['ActionObjDoor',"),
        ({"split": "test"}, "unknown BabyAI split 'test'"),
        ({"levels": "GoToLocal"}, "levels must be a non-empty list"),
    ],
)
def test_unknown_levels_fail_early_with_the_valid_choices(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_env_kwargs("paw/BabyAI-v0", kwargs)
