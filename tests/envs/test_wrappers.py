"""The Gymnasium wrapper: FrozenLake's optimal path wins, slippery ice replays by seed, text that names
no action is a no-op, ansi renders become text, and bad wrapper options fail with what to do."""

import gymnasium as gym
import pytest

import paw_lightning.envs  # noqa: F401
from paw_lightning.envs.base import check_text_env_step
from paw_lightning.envs.wrappers import NO_ACTION, DiscreteTextWrapper, ansi_text
from paw_lightning.rollout.datamodule import check_env_kwargs

LAKE = {"env_id": "FrozenLake-v1", "action_names": ["left", "down", "right", "up"], "task": "Reach G.",
        "describe": "paw_lightning.envs.wrappers:frozen_lake_text", "win_threshold": 1.0, "reward_scale": 10.0}
OPTIMAL = ["down", "down", "right", "right", "down", "right"]  # the 4x4 map's shortest safe path


def lake(slippery=False, **kwargs):
    return gym.make("paw/Gymnasium-v0", **(LAKE | {"env_kwargs": {"is_slippery": slippery}} | kwargs),
                    disable_env_checker=True)


def test_the_optimal_frozenlake_path_wins_in_six_steps():
    env = lake()
    obs, info = env.reset(seed=0)
    assert obs.startswith("You are at row 1, column 1") and info["admissible_commands"] == LAKE["action_names"]
    assert info["task_type"] == "FrozenLake-v1" and not info["won"]
    for k, command in enumerate(OPTIMAL):
        result = env.step(command)
        check_text_env_step(result)
        obs, reward, terminated, truncated, info = result
        assert terminated == (k == len(OPTIMAL) - 1)
    assert info["won"] and reward == 10.0 and obs.startswith("You are at row 4, column 4")


def test_falling_into_a_hole_ends_the_episode_lost():
    env = lake()
    env.reset(seed=0)
    env.step("right")
    obs, reward, terminated, _, info = env.step("down")  # row 2, column 2 is a hole
    assert terminated and not info["won"] and reward == 0.0


def test_slippery_ice_replays_by_seed_and_differs_across_seeds():
    def walk(seed):
        env = lake(slippery=True)
        env.reset(seed=seed)
        return [env.step("right")[0] for _ in range(8)]

    assert walk(3) == walk(3)
    assert len({tuple(walk(s)) for s in range(4)}) > 1


def test_text_that_names_no_action_is_a_no_op():
    env = lake()
    obs, _ = env.reset(seed=0)
    after, reward, terminated, truncated, _ = env.step("fly to the goal")
    assert after == f"{NO_ACTION}\n{obs}" and reward == 0.0 and not (terminated or truncated)
    assert env.step(" DOWN ")[0].startswith("You are at row 2")  # case and spaces do not matter


def test_time_limit_and_ansi_render_compose():
    env = gym.make("paw/Gymnasium-v0", env_id="CliffWalking-v1", action_names=["up", "right", "down", "left"],
                   task="Reach T.", max_episode_steps=2, disable_env_checker=True)
    obs, _ = env.reset(seed=0)
    assert obs.splitlines()[-1].startswith("x  C")
    env.step("up")
    obs, reward, terminated, truncated, info = env.step("right")
    assert truncated and not terminated and not info["won"] and "\x1b" not in obs
    assert ansi_text("\n\x1b[41mS\x1b[0mFFF\nFHFH\n") == "[S]FFF\nFHFH"


def test_taxi_text_says_where_everything_is():
    env = gym.make("paw/Gymnasium-v0", env_id="Taxi-v4", action_names=["south", "north", "east", "west", "pick up", "drop off"],
                   task="Deliver.", describe="paw_lightning.envs.wrappers:taxi_text", disable_env_checker=True)
    obs, _ = env.reset(seed=0)
    assert obs.startswith("The taxi is at row 4, column 1. The passenger is waiting at B; the destination is Y.")
    assert "|R: | : :G|" in obs


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"env_id": "FrozenLake-v0"}, "unknown Gymnasium id 'FrozenLake-v0'"),
        ({"describe": "paw_lightning.envs.wrappers:nothing"}, "cannot import describe="),
        ({"action_names": ["left", "right"]}, "give 4 distinct action_names"),
    ],
)
def test_bad_wrapper_options_say_what_to_do(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_env_kwargs("paw/Gymnasium-v0", LAKE | kwargs)
        lake(**kwargs)


def test_a_continuous_action_env_is_refused():
    with pytest.raises(ValueError, match="needs a Discrete action space"):
        DiscreteTextWrapper(gym.make("Pendulum-v1", render_mode="rgb_array"), ["push"], "swing up")
