"""The Gymnasium wrapper: any Discrete env runs from its id alone, the default win rules mean winning
(CartPole survives, Blackjack beats the dealer), FrozenLake's optimal path wins, slippery ice replays by
seed, text that names no action is a no-op, ansi renders become text, and bad options fail with what to do."""

import gymnasium as gym
import pytest

import paw_lightning.envs  # noqa: F401
from paw_lightning.envs.base import check_text_env_step
from paw_lightning.envs.wrappers import NO_ACTION, DiscreteTextWrapper, ansi_text
from paw_lightning.metrics import episode_metrics
from paw_lightning.rollout.datamodule import check_env_kwargs
from paw_lightning.rollout.types import Episode

LAKE = {"env_id": "FrozenLake-v1", "action_names": ["left", "down", "right", "up"], "task": "Reach G.",
        "describe": "paw_lightning.envs.wrappers:frozen_lake_text", "win": "reward>=1", "reward_scale": 10.0}
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
                   task="Reach T.", time_limit=2, disable_env_checker=True)
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
        DiscreteTextWrapper(gym.make("Pendulum-v1"), ["push"], "swing up")


NO_CODE = {  # id: (its default action names, a line of its first observation)
    "CartPole-v1": (["push cart left", "push cart right"], "pole angle (radians): "),
    "MountainCar-v0": (["accelerate left", "do not accelerate", "accelerate right"], "car velocity: 0.0"),
    "Acrobot-v1": (["apply torque -1", "apply no torque", "apply torque +1"], "angular velocity of link 2: "),
    "Blackjack-v1": (["stick", "hit"], "your hand's sum: 11 (one of 0 to 31)"),
    "FrozenLake-v1": (["left", "down", "right", "up"], "[S]FFF"),
    "CliffWalking-v1": (["up", "right", "down", "left"], "x  C  C"),
    "Taxi-v4": (["south", "north", "east", "west", "pick up", "drop off"], "|R: | : :G|"),
}


@pytest.mark.parametrize("env_id", sorted(NO_CODE))
def test_any_discrete_env_runs_from_its_id_alone(env_id):
    names, line = NO_CODE[env_id]
    env = gym.make("paw/Gymnasium-v0", env_id=env_id, disable_env_checker=True)
    obs, info = env.reset(seed=0)
    assert line in obs and info["admissible_commands"] == names and info["task"] and info["winnable"]
    assert env.unwrapped.render_mode in (None, "ansi")  # only the ansi render is ever asked for
    result = env.step(names[-1])
    check_text_env_step(result)
    assert result[0] and "\x1b" not in result[0]


def balance(env, steps):
    """Push the cart under the falling pole (a hand-written controller that keeps CartPole up)."""
    for _ in range(steps):
        _, _, theta, omega = env.unwrapped.state
        result = env.step("push cart right" if theta + 0.5 * omega > 0 else "push cart left")
        if result[2] or result[3]:
            return result
    return result


def test_a_cartpole_that_survives_to_the_time_limit_wins_and_one_that_falls_does_not():
    env = gym.make("paw/Gymnasium-v0", env_id="CartPole-v1", time_limit=60, disable_env_checker=True)
    env.reset(seed=0)
    _, reward, terminated, truncated, info = balance(env, 60)
    assert truncated and not terminated and info["won"] and reward == 1.0
    env.reset(seed=0)
    for _ in range(60):
        _, reward, terminated, truncated, info = env.step("push cart left")
        if terminated or truncated:
            break
    assert terminated and not truncated and not info["won"] and reward == 1.0  # a fall pays 1 too: not a win


def test_a_lost_blackjack_hand_is_not_won_and_a_winning_one_is():
    env = gym.make("paw/Gymnasium-v0", env_id="Blackjack-v1", disable_env_checker=True)
    outcomes = {}
    for seed in (0, 1, 7):  # sticking at once: seed 0 loses, 1 wins, 7 draws (Gymnasium's own deck order)
        env.reset(seed=seed)
        _, reward, terminated, _, info = env.step("stick")
        assert terminated
        outcomes[reward] = info["won"]
    assert outcomes == {-1.0: False, 1.0: True, 0.0: False}


def always_won(reward, terminated, truncated, env):
    return True


def test_win_rules_from_the_config_none_and_a_users_function():
    env = gym.make("paw/Gymnasium-v0", env_id="CartPole-v1", time_limit=20, win="none", disable_env_checker=True)
    _, info = env.reset(seed=0)
    assert not info["winnable"]
    assert not balance(env, 20)[4]["won"]
    env = gym.make("paw/Gymnasium-v0", env_id="Blackjack-v1", win="tests.envs.test_wrappers:always_won",
                   disable_env_checker=True)
    env.reset(seed=0)
    assert env.step("stick")[4]["won"]


def test_success_rates_leave_out_episodes_of_envs_without_a_win():
    def episode(task_type, won, winnable=True):
        return Episode(0, 0, 0, task_type, won=won, winnable=winnable, length=1)

    metrics = episode_metrics([episode("a", True), episode("a", False), episode("b", False, winnable=False)])
    assert metrics["episode/success_rate"] == 0.5 and "episode/success_rate/b" not in metrics
    assert metrics["episode/count"] == 3.0 and metrics["episode/count/b"] == 1.0
    assert "episode/success_rate" not in episode_metrics([episode("b", False, winnable=False)])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"env_id": "Pendulum-v1"}, "needs a Discrete action space; Pendulum-v1 has Box.*DiscretizeAction"),
        ({"env_id": "CartPole-v1", "win": "reward=1"}, "unknown win rule 'reward=1'; give one of survive, terminate"),
        ({"env_id": "CartPole-v1", "action_names": ["left"]}, "give 2 distinct action_names"),
        ({"env_id": "CartPole-v1", "win": "my_rules:nope"}, "cannot import win='my_rules:nope'"),
    ],
)
def test_bad_no_code_options_say_what_to_do(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_env_kwargs("paw/Gymnasium-v0", kwargs)


def test_an_env_that_needs_an_extra_names_it_in_one_line():
    try:
        import Box2D  # noqa: F401
        pytest.skip("Box2D is installed here, so LunarLander builds")
    except ImportError:
        pass
    with pytest.raises(ValueError, match=r"LunarLander-v3 needs a package that is not installed: .*gymnasium\[box2d\]") as err:
        check_env_kwargs("paw/Gymnasium-v0", {"env_id": "LunarLander-v3"})
    assert "\n" not in str(err.value)
