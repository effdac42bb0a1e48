from pathlib import Path

import gymnasium as gym
import pytest
import textworld

import paw_lightning.envs  # noqa: F401
from paw_lightning.envs.base import check_text_env_step
from paw_lightning.envs.textworld import TextWorldEnv, TextWorldGamePool, clean_feedback, interpreter_command
from paw_lightning.rollout.prompts import MAX_ACTION_CHARS


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


# Played in a child process: TextWorld's interpreter hangs on a lone NUL or a leading backslash and segfaults
# on "take \x00 coin" or "thing\\None", which would take pytest down with it; here it fails the test instead.
HOSTILE_CHILD = r"""
import json, sys
import torch
from paw_lightning.models import build_tiny_tokenizer
from paw_lightning.envs.textworld import TextWorldEnv
from paw_lightning.rollout.actors import GenerateActor
from paw_lightning.rollout.collector import Collector
from paw_lightning.rollout.prompts import MAX_ACTION_CHARS, PromptBuilder
from tests.scripted_model import ScriptedModel

args = json.loads(open(sys.argv[1]).read())
tokenizer = build_tiny_tokenizer(tokenizer_json=open(args["tokenizer"]).read())
# encoded 1000 characters at a time: BPE on one 100k-character word takes minutes
responses = [sum((tokenizer(r[i : i + 1000], add_special_tokens=False)["input_ids"] for i in range(0, len(r), 1000)), [])
             for r in args["responses"]]
model = ScriptedModel(responses, tokenizer.pad_token_id)
collector = Collector(lambda: TextWorldEnv(game_files=args["games"]), 1, 2, len(responses), PromptBuilder(generate=True),
                      GenerateActor(max_new_tokens=8))
rollout = collector.collect(model, tokenizer, [0], torch.Generator(), progress=False)
collector.close()
sent = [t.action_text for t in rollout.transitions]
assert all(len(s) <= MAX_ACTION_CHARS and s.isprintable() for s in sent), sent
print(json.dumps({"sent": sent, "valid": [t.valid for t in rollout.transitions], "restarts": collector.env_restarts}))
"""

def test_interpreter_command_keeps_printable_ascii_without_backslashes():
    assert interpreter_command("take \x00 coin") == "take coin"
    assert interpreter_command("thing\\None tell") == "thingNone tell" and interpreter_command("\\N") == "N"
    assert interpreter_command("caf\u00e9\ufffd \tgo\x0e\x15  east\n") == "caf go east"
    assert interpreter_command("go east: #1 (\"the 'red' door\")?") == "go east: #1 (\"the 'red' door\")?"


HOSTILE_RESPONSES = [  # (model text, what the env must get, valid)
    ("<action>\x0eGo\x00 WEST\x15</action>", "go west", True),  # the admissible spelling is sent
    ("<action>take \x00 coin</action>", "take coin", False),
    ("\x00", "", False),
    ("<action>" + "".join(chr(c) for c in range(0x0E, 0x16)) + "LOOK</action>", "look", True),
    ("<action>" + "a" * 100_000, ("<action>" + "a" * 100_000)[:MAX_ACTION_CHARS], False),
    ("<action><action>take coin</action></action>", "<action>take coin", False),
    (" " * 100_000 + "<action>\tinventory\x00</action>", "inventory", True),
    ("\x00\x0e\x15\x85\x9b" * 1000, "", False),
    ("<action>nextything\\None tell</action>", "nextything\\None tell", False),  # frotz: a backslash escape
    ("\\N", "\\N", False),  # a command that starts with a backslash hangs frotz
    ("<action>" + "a\ufffd" * 98 + "</action>", "a\ufffd" * 98, False),  # its echo did not decode
]


def test_hostile_model_output_never_crashes_a_textworld_env(pool, tiny, tmp_path):
    """NUL, control bytes, 100k characters and nested tags, through the generate actor into TextWorld."""
    import json
    import os
    import subprocess
    import sys

    _, tokenizer = tiny
    (tmp_path / "tokenizer.json").write_text(tokenizer.backend_tokenizer.to_str())
    args = {"tokenizer": str(tmp_path / "tokenizer.json"), "games": pool.files("train", progress=False)[:1],
            "responses": [text for text, _, _ in HOSTILE_RESPONSES]}
    (tmp_path / "args.json").write_text(json.dumps(args))
    root = Path(__file__).resolve().parents[2]
    # run in tmp_path: frotz turns some escape sequences into files named after the input (a transcript)
    child = subprocess.run([sys.executable, "-c", HOSTILE_CHILD, str(tmp_path / "args.json")], cwd=tmp_path,
                           env=dict(os.environ, PYTHONPATH=str(root)), capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, f"exit code {child.returncode}\n{child.stderr[-3000:]}"
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["restarts"] == 0  # no env raised either
    n = len(HOSTILE_RESPONSES)
    assert len(result["sent"]) == 2 * n  # two envs played every step (the scripted answers go round-robin)
    for j, (sent, valid) in enumerate(zip(result["sent"], result["valid"])):
        _, expected, expected_valid = HOSTILE_RESPONSES[j % n]
        if j % n == 0 and j > 0:  # admissible at the start; later, where it is not, it is sent as written
            assert (sent, valid) in (("go west", True), ("Go WEST", False)), j
        else:
            assert (sent, valid) == (expected, expected_valid), j


def test_games_are_generated_in_a_child_process_within_the_time_limit(tmp_path):
    pool = TextWorldGamePool("tw-coin_collector", {"level": 1}, num_train=1, num_eval=0, cache_dir=tmp_path)
    files = pool.files("train", progress=False)
    assert all(Path(f).exists() and Path(f).with_suffix(".json").exists() for f in files)
    env = TextWorldEnv(game_files=files)
    assert env.reset(seed=0)[1]["expert_plan"]
    env.close()


def test_game_generation_over_its_time_limit_is_one_clear_error(tmp_path):
    from paw_lightning.errors import GameGenerationError

    pool = TextWorldGamePool("tw-treasure_hunter", {"level": 30}, num_train=1, num_eval=0, seed=3, cache_dir=tmp_path,
                             generation_timeout_s=0.01)
    with pytest.raises(GameGenerationError) as err:
        pool.files("train", progress=False)
    message = str(err.value)
    assert "tw-treasure_hunter" in message and "'level': 30" in message and "seed 3000000" in message
    assert "generation_timeout_s=0.01" in message
    assert not list(pool.folder.glob("*.z8"))  # nothing half-written
    with pytest.raises(ValueError, match="generation_timeout_s must be > 0"):
        TextWorldGamePool(generation_timeout_s=0)


def test_a_failing_game_generation_names_the_game_and_the_cause(tmp_path):
    from paw_lightning.errors import GameGenerationError

    pool = TextWorldGamePool("tw-cooking", {"recipe": 100, "take": 1}, num_train=1, num_eval=0, cache_dir=tmp_path)
    with pytest.raises(GameGenerationError, match=r"tw-cooking game .*'recipe': 100.* seed 0 failed: AssertionError: recipe must"):
        pool.files("train", progress=False)
