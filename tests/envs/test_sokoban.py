"""Sokoban: every generated room's plan wins, a seed gives one room, the splits differ, pushes follow the
rules with RAGEN's reward shaping, and rooms that cannot be built fail early with the valid choices."""

import gymnasium as gym
import numpy as np
import pytest

import paw_lightning.envs  # noqa: F401
from paw_lightning.envs.base import NO_ACTION, check_text_env_step
from paw_lightning.envs.sokoban_rooms import Room, render, shortest_plan, step
from paw_lightning.rollout.datamodule import check_env_kwargs


@pytest.fixture(scope="module")
def env():
    return gym.make("paw/Sokoban-v0", size=7, num_boxes=2, disable_env_checker=True)


def test_every_generated_rooms_plan_wins(env):
    for seed in range(40):
        obs, info = env.reset(seed=seed)
        assert "Boxes on targets: 0 of 2." in obs or "Boxes on targets: 1 of 2." in obs
        assert info["plan"] and info["task_label"] == "7x7, 2 boxes" and not info["won"]
        for k, move in enumerate(info["plan"]):
            result = env.step(move)
            check_text_env_step(result)
            assert result[2] == (k == len(info["plan"]) - 1), (seed, k)  # solved exactly at the plan's end
        obs, reward, _, _, info = result
        assert info["won"] and "Boxes on targets: 2 of 2." in obs and reward >= 10.0 - 0.1


def test_the_same_seed_gives_the_same_room_and_the_splits_differ(env):
    first = [env.reset(seed=s)[0] for s in range(5)]
    assert first == [env.reset(seed=s)[0] for s in range(5)] and len(set(first)) == 5
    val = gym.make("paw/Sokoban-v0", size=7, num_boxes=2, split="validation", disable_env_checker=True)
    assert sum(val.reset(seed=s)[0] != first[s] for s in range(5)) >= 4


def corridor():
    """#######  the player left of a box, a target two cells right of the box
       #PX_O_#
       #######"""
    floor = np.zeros((3, 7), bool)
    floor[1, 1:6] = True
    return Room(floor, frozenset({(1, 4)}), frozenset({(1, 2)}), (1, 1))


def test_pushes_follow_the_rules_and_the_shortest_plan_is_found():
    room = corridor()
    assert render(room).splitlines()[1] == "#PX_O_#"
    assert step(room, "up")[0] is room and step(room, "left")[0] is room  # walls
    room, change = step(room, "right")
    assert render(room).splitlines()[1] == "#_PXO_#" and change == 0
    room, change = step(room, "right")
    assert render(room).splitlines()[1] == "#__P*_#" and change == 1 and room.solved()
    room, change = step(room, "right")
    assert render(room).splitlines()[1] == "#___SX#" and change == -1
    assert step(room, "right")[0] is room  # a box against the wall does not move
    assert shortest_plan(corridor()) == ["right", "right"]


def test_rewards_are_ragens_shaping_and_text_that_names_no_move_is_a_no_op(env):
    obs, info = env.reset(seed=3)
    after, reward, terminated, truncated, _ = env.step("jump")
    assert after == f"{NO_ACTION}\n{obs}" and reward == 0.0 and not (terminated or truncated)
    rewards = [env.step(move)[1] for move in info["plan"]]
    assert all(r in (-0.1, 0.9, -1.1) for r in rewards[:-1]) and rewards[-1] == pytest.approx(10.9)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"size": 4}, "Sokoban size must be 5..12"),
        ({"size": 6, "num_boxes": 5}, "a 6x6 Sokoban room holds 1..4 boxes, got num_boxes=5"),
        ({"split": "test"}, r"unknown Sokoban split 'test'; choose one of \('train', 'validation'\)"),
    ],
)
def test_rooms_that_cannot_be_built_fail_early_with_the_valid_choices(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_env_kwargs("paw/Sokoban-v0", kwargs)
