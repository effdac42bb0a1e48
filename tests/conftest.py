"""Shared test set-up: offline, generated games cached once per session, ALFWorld data in a temp dir."""

from __future__ import annotations

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `import alfworld` creates $ALFWORLD_DATA; tests never touch a real ALFWorld folder.
os.environ["ALFWORLD_DATA"] = os.path.join(tempfile.gettempdir(), "paw-test-alfworld-data")
# One game cache for the whole session (games are generated once, then reused by every test).
os.environ.setdefault("PAW_CACHE_DIR", os.path.join(tempfile.gettempdir(), "paw-test-cache"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

# The small game pool that env, collector and CLI tests share.
COIN_POOL = {"challenge": "tw-coin_collector", "settings": {"level": 3}, "num_train": 3, "num_eval": 2}


@pytest.fixture(scope="session")
def tiny():
    """The tiny model and tokenizer (built once per session; tests that train copy it)."""
    from paw_lightning.models import load_model

    return load_model("tiny")


@pytest.fixture(scope="session")
def coin_pool_kwargs():
    return dict(COIN_POOL)


@pytest.fixture(scope="session")
def alfworld_data(tmp_path_factory):
    """A folder of generated ALFWorld games: one per task type in each of train, valid_seen, valid_unseen."""
    from paw_lightning.envs.alfworld_games import generate_games

    folder = tmp_path_factory.mktemp("alfworld")
    report = generate_games(folder, games_per_type=1, seed=0, eval_games_per_type=1, progress=False)
    assert report.total() == 18, report.written
    return folder


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One tiny ``paw fit`` of the quickstart (2 iterations, 3 held-out episodes validated after each), shared
    by the tests that read a run's metrics, episode log and checkpoint. Returns the folder it ran in.

    It runs under umask 000 (the worst a shared account can have) while a thread lists the listening sockets
    of this process and its children (the env workers) every 0.1 s; those the fit opened are in
    ``listeners.json`` beside ``runs/`` (tests/test_security.py checks both)."""
    import json
    from pathlib import Path

    from paw_lightning.cli import cli_main
    from tests.listeners import ListenerSampler, listeners

    folder = tmp_path_factory.mktemp("tiny-run")
    root = Path(__file__).resolve().parents[1]
    before = {listener.inode for listener in listeners(os.getpid())}
    saved_umask = os.umask(0)
    try:
        with pytest.MonkeyPatch.context() as patch, ListenerSampler(os.getpid()) as sampler:
            patch.chdir(folder)
            cli_main(["fit", "--config", str(root / "configs/quickstart.yaml"), "--trainer.max_epochs=2",
                      "--trainer.enable_progress_bar=false", "--data.num_groups=2", "--data.group_size=2", "--data.max_steps=3",
                      "--data.mini_batch_size=8", "--data.progress=false", "--data.env_kwargs=" + json.dumps(dict(COIN_POOL, progress=False)),
                      "--data.val_episodes=3", "--trainer.check_val_every_n_epoch=1", '--data.val_env_kwargs={"split": "eval"}'])
    finally:
        os.umask(saved_umask)
    opened = [listener._asdict() for listener in sampler.seen if listener.inode not in before]
    (folder / "listeners.json").write_text(json.dumps(opened))
    return folder
