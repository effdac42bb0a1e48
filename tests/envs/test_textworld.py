import gymnasium as gym
import pytest
import textworld

import paw_lightning.envs  # noqa: F401
from paw_lightning.envs.base import check_text_env_step
from paw_lightning.envs.textworld import TextWorldEnv, TextWorldGamePool, clean_feedback


@pytest.fixture(scope="module")
def pool(coin_pool_kwargs):
    kw = dict(coin_pool_kwargs)
    return TextWorldGamePool(kw.pop("challenge"), kw.pop("settings"), **kw)


def test_pool_splits_use_disjoint_seeds_and_are_cached(pool):
    assert not set(pool.seeds("train")) & set(pool.seeds("eval"))
    files = pool.files("train", progress=False)
    assert len(files) == pool.num_train
    mtimes = [__import__("os").path.getmtime(f) for f in files]
    assert pool.files("train", progress=False) == files
    assert [__import__("os").path.getmtime(f) for f in files] == mtimes  # not regenerated


def test_pool_rejects_unknown_challenge_and_settings():
    with pytest.raises(ValueError, match="unknown TextWorld challenge"):
        TextWorldGamePool(challenge="tw-nope")
    with pytest.raises(ValueError, match="missing \\['level'\\]"):
        TextWorldGamePool(challenge="tw-coin_collector", settings={})
    with pytest.raises(ValueError, match="unknown \\['colour'\\]"):
        TextWorldGamePool(challenge="tw-simple", settings={"rewards": "dense", "goal": "brief", "colour": 1})


def test_missing_game_files_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        TextWorldEnv(game_files=[str(tmp_path / "missing.z8")])


def test_wrapper_matches_raw_textworld_along_the_expert_plan(pool):
    game = pool.files("train", progress=False)[0]
    env = TextWorldEnv(game_files=[game])
    obs, info = env.reset(seed=0)
    raw = textworld.start(game, request_infos=textworld.EnvInfos(admissible_commands=True, won=True, policy_commands=True))
    state = raw.reset()
    assert info["admissible_commands"] == sorted(state["admissible_commands"])
    assert info["won"] is False and info["task"]
    plan = info["expert_plan"]
    assert plan
    for i, command in enumerate(plan):
        result = env.step(command)
        check_text_env_step(result)
        obs, reward, terminated, truncated, info = result
        state, _, done = raw.step(command)
        assert obs == clean_feedback(state["feedback"])
        assert info["admissible_commands"] == sorted(state["admissible_commands"])
        last = i == len(plan) - 1
        assert reward == (10.0 if last else 0.0)  # per step, not cumulative
        assert info["won"] is last and terminated is done
    raw.close()
    env.close()


def test_score_reward_mode_adds_game_score_increments(pool):
    env = TextWorldEnv(game_files=pool.files("train", progress=False)[:1], reward="score")
    _, info = env.reset(seed=0)
    rewards = [env.step(c)[1] for c in info["expert_plan"]]
    assert rewards[-1] == 11.0  # win bonus + the coin's one point
    assert sum(rewards[:-1]) == 0.0


def test_same_seed_same_game_and_initial_state(pool, coin_pool_kwargs):
    a = gym.make("paw/TextWorld-v0", disable_env_checker=True, progress=False, **coin_pool_kwargs)
    b = gym.make("paw/TextWorld-v0", disable_env_checker=True, progress=False, **coin_pool_kwargs)
    for seed in (0, 1, 2, 7):
        obs_a, info_a = a.reset(seed=seed)
        obs_b, info_b = b.reset(seed=seed)
        assert (obs_a, info_a["task"], info_a["game_file"]) == (obs_b, info_b["task"], info_b["game_file"])
    # after playing, a reset with the same seed returns to the same state
    first = a.reset(seed=1)[0]
    a.step("go north")
    assert a.reset(seed=1)[0] == first
    a.close()
    b.close()


def test_eval_split_plays_other_games(coin_pool_kwargs):
    train = TextWorldEnv(progress=False, **coin_pool_kwargs)
    evaluation = TextWorldEnv(progress=False, split="eval", **coin_pool_kwargs)
    assert not set(train.games) & set(evaluation.games)
    assert evaluation.reset(seed=0)[1]["task_type"] == "coin_collector"


@pytest.mark.parametrize(
    "challenge, settings",
    [
        ("tw-simple", {"rewards": "dense", "goal": "detailed"}),
        ("tw-treasure_hunter", {"level": 2}),
        ("tw-cooking", {"recipe": 1, "take": 1}),
        ("custom", {"world_size": 2, "nb_objects": 3, "quest_length": 2}),
    ],
)
def test_every_challenge_generates_games_the_expert_wins(challenge, settings):
    env = gym.make("paw/TextWorld-v0", disable_env_checker=True, challenge=challenge, settings=settings,
                   num_train=1, num_eval=0, progress=False)
    obs, info = env.reset(seed=0)
    assert obs and info["task_type"] == challenge.removeprefix("tw-")
    won = False
    for command in info["expert_plan"]:
        obs, reward, terminated, truncated, info = env.step(command)
        won = info["won"]
    assert won and reward == 10.0 and terminated
    env.close()


def test_engine_cache_is_bounded_and_replays_correctly(pool):
    files = pool.files("train", progress=False)
    env = TextWorldEnv(game_files=files, max_engines=1)
    first = env.reset(seed=0)[0]
    env.reset(seed=1)  # another game: the first engine is closed
    assert len(env._engines) == 1
    assert env.reset(seed=0)[0] == first  # and started again on demand
    env.close()
