"""TextWorldExpress: the contract, replays by seed, every game's gold path winning, seed folds, game
parameters checked by the simulator, a dead JVM, and the same rollout with and without env workers."""

import gymnasium as gym
import pytest

import paw_lightning.envs  # noqa: F401
from paw_lightning.envs.base import check_text_env_step
from paw_lightning.envs.textworld_express import GAMES, TextWorldExpressEnv, check_game
from paw_lightning.rollout.actors import ScoreActor
from tests.test_env_workers import collector, play, record


@pytest.fixture(scope="module")
def env():
    env = gym.make("paw/TextWorldExpress-v0", game="coin", game_params="numLocations=3", gold_plan=True,
                   disable_env_checker=True).unwrapped
    yield env
    env.close()


def test_reset_follows_the_contract_and_replays_by_seed(env):
    obs, info = env.reset(seed=4)
    assert info["task_type"] == "coin" and info["task"].startswith("Your task is to")
    assert info["won"] is False and "look around" in info["admissible_commands"] and obs
    check_text_env_step(env.step("look around"))
    assert env.reset(seed=4) == (obs, info)
    assert env.reset(seed=5)[1]["game_seed"] == 5
    environ = open(f"/proc/{env._sim._gateway.java_process.pid}/environ", "rb").read().split(b"\0")
    assert any(v.startswith(b"JAVA_TOOL_OPTIONS=-Xmx256m ") for v in environ)  # the capped heap reached the JVM


@pytest.mark.parametrize("game", GAMES)
def test_every_games_gold_path_wins(env, game):
    env.game, env.game_params = game, ""
    env._sim.load(game, "")
    env._gold_plans.clear()
    try:
        _, info = env.reset(seed=0)
        rewards = []
        for command in info["gold_plan"]:
            obs, reward, terminated, truncated, info = env.step(command)
            rewards.append(reward)
            if terminated:
                break
    finally:
        env.game, env.game_params = "coin", "numLocations=3"
        env._sim.load("coin", "numLocations=3")
        env._gold_plans.clear()
    assert terminated and info["won"] and info["task_type"] == game
    assert rewards[-1] == 10.0 and sum(rewards) == 10.0


def test_dev_seeds_are_held_out_and_deterministic():
    dev = TextWorldExpressEnv(game="coin", split="dev")
    try:
        obs, info = dev.reset(seed=0)
        assert info["game_seed"] >= 10000 and dev.reset(seed=0) == (obs, info)
    finally:
        dev.close()


def test_bad_game_or_params_name_the_valid_ones():
    with pytest.raises(ValueError, match="valid games: .*'peckingorder'"):
        TextWorldExpressEnv(game="zork")
    with pytest.raises(ValueError, match="Known properties: numLocations"):
        check_game("coin", "numRooms=3", 256)
    with pytest.raises(ValueError, match="split 'valid'"):
        TextWorldExpressEnv(split="valid")


def test_a_dead_jvm_makes_the_step_raise_not_hang():
    env = TextWorldExpressEnv(game="coin")
    env.reset(seed=0)
    env._sim._gateway.java_process.kill()
    env._sim._gateway.java_process.wait()
    with pytest.raises(Exception):
        env.step("look around")
    env.close()
    assert env.reset(seed=0)[0]  # closing drops the dead simulator; the next reset starts a new JVM
    env.close()


def test_the_same_rollout_with_and_without_env_workers(tiny):
    model, tokenizer = tiny
    kwargs = {"game": "coin", "game_params": "numLocations=3"}
    runs = {w: record(play(collector("paw/TextWorldExpress-v0", kwargs, ScoreActor(), w, num_groups=1, max_steps=3),
                           model, tokenizer, [7]))
            for w in (0, 2)}
    assert runs[2] == runs[0]
    assert len({t["next_obs"] for ts, _ in runs[0] for t in ts}) > 3
