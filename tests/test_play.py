"""``paw play``: a trained checkpoint plays through the real CLI (both actors), and a person plays by stdin."""

import io
import json
from pathlib import Path

import pytest

from paw_lightning.cli import main as paw
from paw_lightning.play import pick_action, play_by_hand, split_settings
from tests.conftest import COIN_POOL
from tests.envs.fakes import CorridorEnv

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ["--config", str(ROOT / "configs/quickstart.yaml"), "--data.env_kwargs=" + json.dumps(dict(COIN_POOL, progress=False)),
              "--data.max_steps=3", "--data.env_workers=0"]


def test_numbers_pick_admissible_commands_and_anything_else_is_sent_as_typed():
    assert pick_action(" 2 ", ["go", "wait"]) == "wait"
    assert pick_action("3", ["go", "wait"]) == "3" and pick_action("open door", ["go"]) == "open door"
    assert pick_action("1", None) == "1"


def test_splits_use_the_validation_or_the_training_settings():
    data = {"env_kwargs": {"a": 1}, "val_env_kwargs": {"split": "eval"}, "val_seed": 100, "val_temperature": 0.4, "temperature": 1.0}
    assert split_settings(data, "eval", 2, None) == ({"a": 1, "split": "eval"}, 0.4, [100, 101])
    assert split_settings(data, "train", 2, 5) == ({"a": 1}, 1.0, [5, 6])


def test_a_person_plays_the_corridor_by_number_and_by_text():
    out = []
    answers = iter(["1", "go"])
    summary = play_by_hand(CorridorEnv(goal=2), seed=3, max_steps=5, read=lambda prompt: next(answers), write=out.append)
    assert summary == {"won": True, "return": 10.0, "steps": 2, "actions": ["go", "go"]}
    text = "\n".join(out)
    assert "task: reach the end of corridor 3" in text and "   1. go\n   2. wait" in text and "reward +10.00" in text


def test_end_of_input_stops_a_person_s_episode():
    def closed(prompt):
        raise EOFError

    assert play_by_hand(CorridorEnv(), seed=0, max_steps=5, read=closed, write=lambda line: None)["steps"] == 0


@pytest.mark.slow
def test_paw_play_shows_a_checkpoint_s_steps_with_probabilities_and_alternatives(tiny_run, capsys):
    ckpt = tiny_run / "runs/csv/version_0/checkpoints/last.ckpt"
    paw(["play", *QUICKSTART, "--ckpt_path", str(ckpt), "--episodes", "2"])
    out = capsys.readouterr().out
    assert out.count("[eval iteration 1] episode") == 2  # the checkpoint of the second iteration and "episodes won (eval split, actor score, engine hf" in out
    assert "task: " in out and "  | -= " in out  # the task and the room's observation
    assert "%)" in out and "    others: " in out  # the chosen command's probability and the alternatives


@pytest.mark.slow
def test_paw_play_with_the_generate_actor_shows_the_raw_response(tiny_run, capsys):
    ckpt = tiny_run / "runs/csv/version_0/checkpoints/last.ckpt"
    paw(["play", *QUICKSTART, "--ckpt_path", str(ckpt), "--split", "train", "--data.actor=generate", "--data.engine=hf",
         "--data.max_new_tokens=4"])
    out = capsys.readouterr().out
    assert "    response: '" in out and "0/1 episodes won (train split, actor generate, engine hf" in out


def test_paw_play_human_reads_actions_from_stdin_without_a_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("paw_lightning.models.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setattr("sys.stdin", io.StringIO("1\nlook around\nquit\n"))
    paw(["play", *QUICKSTART, "--human", "--split", "train"])
    out = capsys.readouterr().out
    assert "task: " in out and "   1. " in out and "--- step 1" in out
    assert "look around" in out and "is not an admissible command" in out and "in 2 steps" in out


def test_paw_play_with_an_adapter_but_no_lora_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        paw(["play", *QUICKSTART, "--adapter", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("paw: error: --adapter") and "lora_rank" in err
