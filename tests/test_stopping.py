"""Stopping a run: SIGTERM and Ctrl-C in the middle of a rollout, and kill -9 then resume.

The CLI runs are real ``paw fit`` processes on a slow corridor env (each step sleeps and is logged to a
file, so the test knows when a rollout is under way)."""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from paw_lightning.rollout.stopping import GracefulStop

ROOT = Path(__file__).resolve().parents[1]
PAW = "import tests.envs.fakes; from paw_lightning.cli import main; main()"  # paw, with the test envs registered


def paw_fit(run_dir: Path, step_log: Path, *extra: str) -> subprocess.Popen:
    """A ``paw fit`` process in ``run_dir``: the quickstart on a slow corridor, tiny budgets."""
    env_kwargs = {"goal": 3, "step_delay_s": 0.1, "step_log": str(step_log)}
    args = ["fit", "--config", str(ROOT / "configs/quickstart.yaml"), "--trainer.enable_progress_bar=false",
            "--data.progress=false", "--data.num_groups=2", "--data.group_size=2", "--data.max_steps=5",
            "--data.mini_batch_size=32", "--data.ppo_epochs=1", "--data.val_episodes=0", "--data.env_id=paw-test/Corridor-v0",
            "--data.env_kwargs=" + json.dumps(env_kwargs), *extra]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", PAW, *args], cwd=run_dir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(condition, timeout: float, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"paw fit exited ({proc.returncode}) before {what}:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def interrupt_mid_rollout(run_dir: Path, step_log: Path, sig: int, *extra: str) -> tuple[subprocess.Popen, set[int], float]:
    """Start a fit, wait for the first checkpoint and then for the next rollout's steps, send ``sig``;
    returns the process, its descendants just before the signal and the seconds it took to exit."""
    proc = paw_fit(run_dir, step_log, *extra)
    last = run_dir / "runs/csv/version_0/checkpoints/last.ckpt"
    wait_for(last.exists, 240, proc, "the first checkpoint")
    seen = lines(step_log)
    wait_for(lambda: lines(step_log) >= seen + 2, 60, proc, "the second rollout")
    workers = descendants(proc.pid)
    start = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("paw fit did not stop within 60 s of the signal")
    return proc, workers, time.monotonic() - start


def test_graceful_stop_raises_only_inside_a_rollout():
    # an in-process vLLM (earlier tests) leaves its own SIGINT handler: start from Python's default
    found_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        check_graceful_stop_in_this_process()
    finally:
        signal.signal(signal.SIGINT, found_int)


def check_graceful_stop_in_this_process():
    stop = GracefulStop()
    previous = signal.getsignal(signal.SIGTERM)
    previous_int = signal.getsignal(signal.SIGINT)
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # outside a rollout: only noted
        assert stop.signal_name == "SIGTERM"
        with pytest.raises(SIGTERMException):
            stop.check()
        stop.signal_name = None
        with pytest.raises(KeyboardInterrupt), stop.interruptible():
            os.kill(os.getpid(), signal.SIGINT)  # inside: raises at once
            time.sleep(5)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C raises anywhere
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) == previous and signal.getsignal(signal.SIGINT) == previous_int
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)  # left behind in another handler, it forwards to the default


@pytest.mark.slow
def test_sigterm_stops_paw_fit_mid_rollout_within_seconds(tmp_path):
    step_log = tmp_path / "steps.log"
    proc, workers, seconds = interrupt_mid_rollout(tmp_path, step_log, signal.SIGTERM, "--trainer.max_epochs=20")
    output = proc.stdout.read()
    assert seconds < 10, output[-3000:]
    assert "received SIGTERM: stopping now (mid-rollout)" in output
    assert len(workers) >= 2  # the env workers were running ...
    time.sleep(0.5)
    assert not [p for p in workers if alive(p)]  # ... and none outlived the run
    checkpoints = tmp_path / "runs/csv/version_0/checkpoints"
    state = torch.load(checkpoints / "last.ckpt", weights_only=False)  # intact, and the last finished iteration's
    assert state["RolloutDataModule"]["iteration"] == state["epoch"] + 1
    assert sorted(p.name for p in checkpoints.iterdir()) == sorted(["last.ckpt", f"epoch={state['epoch']}-step={state['global_step']}.ckpt"])


def episode_rows(run_dir: Path) -> dict[int, dict[str, str]]:
    """Per iteration, the metrics that do not measure time (a run's CSV has a column for every metric it
    ever logged: empty cells are left out)."""
    rows = {}
    for row in csv.DictReader(open(run_dir / "metrics.csv")):
        if row.get("episode/success_rate"):
            rows[int(row["epoch"])] = {k: v for k, v in row.items() if v and not k.startswith("perf/")
                                       and k not in ("rollout/wall_s", "rollout/env_steps_per_s")}
    return rows


@pytest.mark.slow
def test_kill_9_mid_rollout_then_resume_gives_the_uninterrupted_metrics(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "killed").mkdir()
    full = paw_fit(tmp_path / "full", tmp_path / "full.log", "--trainer.max_epochs=3")
    collector = threading.Thread(target=full.communicate)
    collector.start()  # the uninterrupted run goes on beside the killed one
    proc, workers, _ = interrupt_mid_rollout(tmp_path / "killed", tmp_path / "killed.log", signal.SIGKILL, "--trainer.max_epochs=3")
    time.sleep(1.0)
    assert len(workers) >= 2 and not [p for p in workers if alive(p)]  # the workers died with their parent
    last = tmp_path / "killed/runs/csv/version_0/checkpoints/last.ckpt"
    resume_from = torch.load(last, weights_only=False)["epoch"] + 1
    assert resume_from < 3
    resumed = paw_fit(tmp_path / "killed", tmp_path / "resumed.log", "--trainer.max_epochs=3", f"--ckpt_path={last}")
    output, _ = resumed.communicate(timeout=300)
    collector.join(300)
    assert resumed.returncode == 0 and full.returncode == 0, output[-3000:]
    expected = episode_rows(tmp_path / "full/runs/csv/version_0")
    got = episode_rows(tmp_path / "killed/runs/csv/version_1")
    assert sorted(expected) == [0, 1, 2] and sorted(got) == list(range(resume_from, 3))
    for epoch in got:
        assert got[epoch] == expected[epoch], epoch
