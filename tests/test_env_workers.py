"""Env worker processes: the same rollouts as in-process, deadlines, crashes, dead workers, reset
failures, and a stop signal in the middle of a rollout."""

import functools
import math
import os
import signal
import threading
import time

import gymnasium as gym
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from paw_lightning.rollout.actors import ScoreActor
from paw_lightning.rollout.collector import RESET_SEEDS, Collector
from paw_lightning.rollout.env_workers import EnvBuildError, EnvWorkers, make_text_env
from paw_lightning.rollout.prompts import PromptBuilder
from paw_lightning.rollout.stopping import GracefulStop
from tests.envs import fakes
from tests.test_collector import ScriptedActor


def collector(env_id, env_kwargs, actor, workers, num_groups=2, group_size=2, max_steps=4, **kwargs):
    make = functools.partial(make_text_env, gym.spec(env_id), env_kwargs)
    return Collector(make, num_groups, group_size, max_steps, PromptBuilder(), actor, env_workers=workers, **kwargs)


def play(c, model, tokenizer, seeds, rollouts=2):
    try:
        return [c.collect(model, tokenizer, [s + k for s in seeds], torch.Generator().manual_seed(k), k, progress=False)
                for k in range(rollouts)]
    finally:
        c.close()


def record(rollouts):
    """Everything a rollout holds, NaN made comparable."""
    def plain(value):
        return "nan" if isinstance(value, float) and math.isnan(value) else value
    return [([{k: plain(v) for k, v in vars(t).items()} for t in r.transitions], [vars(e) for e in r.episodes]) for r in rollouts]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_workers_play_the_same_rollouts_as_in_process(tiny):
    """Same seeds, same rollouts (prompts, sampled actions, rewards, episodes) with 0, 1 or 3 workers."""
    model, tokenizer = tiny
    runs = {w: record(play(collector("paw-test/Corridor-v0", {"goal": 3}, ScoreActor(), w, max_steps=4),
                           model, tokenizer, [7, 4242]))
            for w in (0, 1, 3)}
    assert sum(len(t) for t, _ in runs[0]) > 12 and any(e["won"] for _, es in runs[0] for e in es)
    assert runs[1] == runs[0] and runs[3] == runs[0]


@pytest.mark.slow
def test_workers_play_the_same_textworld_rollouts_as_in_process(tiny, coin_pool_kwargs):
    model, tokenizer = tiny
    kwargs = dict(coin_pool_kwargs, progress=False)
    runs = {w: record(play(collector("paw/TextWorld-v0", kwargs, ScoreActor(), w, max_steps=6), model, tokenizer, [3, 11]))
            for w in (0, 2)}
    assert len({t["next_obs"] for ts, _ in runs[0] for t in ts}) > 3
    assert runs[2] == runs[0]


def test_a_hung_env_times_out_and_only_its_episode_ends(tiny, tmp_path):
    model, tokenizer = tiny
    log = tmp_path / "faults.log"
    kwargs = {"goal": 3, "hang_once": str(tmp_path / "hang"), "hang_step": 1, "fault_log": str(log)}
    c = collector("paw-test/FaultyCorridor-v0", kwargs, ScriptedActor("go"), 2, env_timeout_s=1.0)
    start = time.perf_counter()
    (rollout,) = play(c, model, tokenizer, [5, 9], rollouts=1)
    assert time.perf_counter() - start < 30  # the hang lasts 60 s; the deadline cut it short
    hung = [e for e in rollout.episodes if e.env_timeouts]
    assert len(hung) == 1 and hung[0].env_restarts == 1 and hung[0].length == 2 and not hung[0].won
    assert c.env_timeouts == 1 and c.env_restarts == 1
    # the hung env's worker mates were rebuilt in a new worker and replayed: their episodes still win
    assert all(e.won and e.length == 3 for e in rollout.episodes if e is not hung[0])
    assert log.read_text().split()[0] == "hang"


def test_a_worker_that_dies_is_replaced_and_the_rollout_goes_on(tiny, tmp_path):
    model, tokenizer = tiny
    kwargs = {"goal": 3, "die_once": str(tmp_path / "die"), "die_step": 2}
    c = collector("paw-test/FaultyCorridor-v0", kwargs, ScriptedActor("go"), 2, num_groups=3)
    old = dict(c.envs._procs)
    rollout = c.collect(model, tokenizer, [1, 2, 3], torch.Generator(), progress=False)
    dead = [e for e in rollout.episodes if e.env_restarts]
    assert len(dead) == 1 and dead[0].length == 3 and dead[0].env_timeouts == 0 and not dead[0].won
    assert sum(e.won for e in rollout.episodes) == 5 and c.envs.worker_restarts == 1
    assert sum(not alive(p.pid) for p in old.values()) == 1
    again = c.collect(model, tokenizer, [1, 2, 3], torch.Generator(), progress=False)
    assert all(e.won for e in again.episodes)
    procs = list(c.envs._procs.values())
    c.close()
    assert not any(alive(p.pid) for p in procs)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_env_that_raises_in_step_is_rebuilt(tiny, tmp_path, workers):
    model, tokenizer = tiny
    log = tmp_path / "faults.log"
    kwargs = {"goal": 4, "step_fault_p": 0.2, "fault_seed": 3, "fault_log": str(log)}
    c = collector("paw-test/FaultyCorridor-v0", kwargs, ScriptedActor("go"), workers, num_groups=3, max_steps=5)
    rollouts = play(c, model, tokenizer, [10, 20, 30], rollouts=3)
    faults = log.read_text().splitlines()
    assert faults and all(f.startswith("step") for f in faults)
    assert c.env_restarts == len(faults) and c.env_timeouts == 0
    assert sum(e.env_restarts for r in rollouts for e in r.episodes) == len(faults)
    assert all(not e.won for r in rollouts for e in r.episodes if e.env_restarts)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_failed_reset_moves_the_whole_group_to_the_next_seed(tiny, workers):
    model, tokenizer = tiny
    kwargs = {"goal": 2, "fail_reset_seeds": [11, 12]}
    c = collector("paw-test/FaultyCorridor-v0", kwargs, ScriptedActor("go"), workers, num_groups=2, group_size=3)
    (rollout,) = play(c, model, tokenizer, [11, 40], rollouts=1)
    assert [e.seed for e in rollout.episodes] == [13, 13, 13, 40, 40, 40]
    assert [e.env_restarts for e in rollout.episodes] == [2, 2, 2, 0, 0, 0]
    assert c.env_restarts == 6 and all(e.won for e in rollout.episodes)


def test_one_member_failing_its_reset_moves_its_group_in_process(tiny):
    """A transient failure of one member: every member of its group plays seed + 1, the others keep theirs."""
    model, tokenizer = tiny
    c = collector("paw-test/Corridor-v0", {}, ScriptedActor("go"), 0, num_groups=2, group_size=2)
    fakes.RESET_CRASHES["left"] = 1
    (rollout,) = play(c, model, tokenizer, [5, 8], rollouts=1)
    assert [e.seed for e in rollout.episodes] == [6, 6, 8, 8]
    assert [e.env_restarts for e in rollout.episodes] == [1, 0, 0, 0]
    first = {t.episode_id: t for t in rollout.transitions if t.step == 0}
    assert first[0].prompt_ids == first[1].prompt_ids  # the group still starts from one state


def test_a_group_whose_resets_always_fail_stops_with_a_clear_error(tiny):
    model, tokenizer = tiny
    kwargs = {"fail_reset_seeds": list(range(100, 100 + RESET_SEEDS))}
    c = collector("paw-test/FaultyCorridor-v0", kwargs, ScriptedActor("go"), 0, num_groups=1, group_size=2)
    with pytest.raises(RuntimeError, match=f"failed for {RESET_SEEDS} seeds in a row \\(100 to 104\\)"):
        play(c, model, tokenizer, [100], rollouts=1)


def test_an_env_that_cannot_be_built_stops_with_one_clear_line():
    make = functools.partial(make_text_env, gym.spec("paw-test/Corridor-v0"), {"no_such_option": 1})
    with pytest.raises(TypeError, match="no_such_option"):
        EnvWorkers(make, 2, 2)  # built once in this process first: the env's own error
    with pytest.raises(EnvBuildError, match="cannot build the env: OSError: no game engine in this process") as err:
        EnvWorkers(fakes.BuildsOnlyIn(os.getpid()), 2, 2)  # builds here, fails in the workers
    assert "\n" not in str(err.value)
    with pytest.raises(EnvBuildError, match="not registered in this process"):
        make_text_env("paw-test/Nope-v0", {})


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stop_signal_interrupts_a_slow_rollout_and_closes_the_envs(tiny, workers):
    model, tokenizer = tiny
    stop = GracefulStop()
    stop.install()
    try:
        c = collector("paw-test/Corridor-v0", {"goal": 100, "step_delay_s": 0.5}, ScriptedActor("go"), workers,
                      max_steps=50, stop=stop)
        procs = list(c.envs._procs.values()) if workers else []
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
        start = time.perf_counter()
        with pytest.raises(SIGTERMException):
            c.collect(model, tokenizer, [1, 2], torch.Generator(), progress=False)
        assert time.perf_counter() - start < 5  # the rollout alone would take 50 steps x 0.5-1 s
        assert c.envs is None and not any(alive(p.pid) for p in procs)
    finally:
        stop.uninstall()


@pytest.mark.slow
def test_a_two_iteration_fit_survives_injected_faults_and_counts_them(tmp_path, monkeypatch):
    """Exceptions in reset and step (seeded), one hang: the fit finishes and its counters match the faults."""
    import csv
    import json

    from paw_lightning.cli import cli_main
    from tests.test_cli import ROOT, SMALL

    monkeypatch.chdir(tmp_path)
    log = tmp_path / "faults.log"
    kwargs = {"goal": 3, "step_fault_p": 0.1, "reset_fault_p": 0.15, "fault_seed": 2, "hang_once": str(tmp_path / "hang"),
              "hang_step": 1, "fault_log": str(log)}
    cli_main(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), *SMALL, "--data.max_steps=4",
              "--data.env_id=paw-test/FaultyCorridor-v0", "--data.env_kwargs=" + json.dumps(kwargs), "--data.val_episodes=0",
              "--data.env_workers=2", "--data.env_timeout_s=1.5"])
    rows = [r for r in csv.DictReader(open(tmp_path / "runs/csv/version_0/metrics.csv")) if r.get("rollout/env_restarts")]
    assert [r["epoch"] for r in rows] == ["0", "1"]
    faults = [line.split()[0] for line in log.read_text().splitlines()]
    assert {"reset", "step", "hang"} <= set(faults)  # every kind of fault happened
    assert sum(float(r["rollout/env_restarts"]) for r in rows) == len(faults)
    assert sum(float(r["rollout/env_timeouts"]) for r in rows) == faults.count("hang") == 1
