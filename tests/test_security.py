"""What a run exposes to other accounts on the machine (docs/security.md): the sockets it listens on, the
permissions of the files it writes, and checkpoints that cannot carry code. The fit is the session's shared
tiny quickstart fit (``tiny_run`` in conftest.py: HF engine, env workers), run under umask 000 while a thread
listed the listening sockets of its process and children every 0.1 s."""

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.fabric.utilities.cloud_io import _load as lightning_load

from paw_lightning.permissions import WORLD_WRITE, no_world_write
from paw_lightning.play import load_weights
from tests.listeners import ListenerSampler

# Every listener a run of this fit may open, as (process name, protocol) -> why it is there (see the
# inventory in docs/security.md). The HF-engine fit opens none: env workers talk over a socket pair, and
# Lightning on one device makes no process group. A new entry needs its row in the docs' inventory first:
# owner, protocol, bind address, lifetime and what a client without credentials could do with it.
EXPLAINED: dict[tuple[str, str], str] = {}


def test_the_fit_opens_no_unexplained_listener(tiny_run):
    opened = json.loads((tiny_run / "listeners.json").read_text())
    unexplained = sorted(f"{l['process']} (pid {l['pid']}): {l['protocol']} {l['address']}:{l['port']}" for l in opened
                         if (l["process"], l["protocol"]) not in EXPLAINED)
    assert not unexplained, (f"the fit listened on {unexplained}: say in docs/security.md's inventory who owns it "
                             "and what a local client could do with it, then add it to EXPLAINED")


def test_nothing_the_run_writes_is_world_writable_even_under_umask_000(tiny_run):
    written = list((tiny_run / "runs").rglob("*"))
    assert {"last.ckpt", "episodes.jsonl", "metrics.csv", "config.yaml"} <= {path.name for path in written}
    open_to_all = [str(path.relative_to(tiny_run)) for path in [tiny_run / "runs", *written]
                   if path.stat().st_mode & stat.S_IWOTH]
    assert not open_to_all
    # readable by others stays the default (docs/security.md), except what safetensors writes (0600 by itself)
    assert all(path.stat().st_mode & stat.S_IROTH for path in written if path.suffix != ".safetensors")


def test_no_world_write_keeps_a_stricter_umask():
    saved = os.umask(0o077)
    try:
        assert no_world_write() == 0o077 and os.umask(saved) == 0o077
        os.umask(0o020)
        assert no_world_write() == 0o020 | WORLD_WRITE
    finally:
        os.umask(saved)


def test_the_sampler_sees_a_listener_of_a_child_process():
    code = "import socket, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); print(s.getsockname()[1], flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
        with ListenerSampler(os.getpid(), period_s=0.05) as sampler:
            time.sleep(0.2)
    finally:
        child.kill()
        child.wait()
    assert {(l.pid, l.protocol, l.address, l.port) for l in sampler.seen} >= {(child.pid, "tcp", "127.0.0.1", port)}


class PickledCode:
    """What a booby-trapped checkpoint holds: unpickling it runs code (here: touches a file)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_checkpoint_with_pickled_code_is_refused_by_paw_play_and_by_resume(tmp_path):
    trap = tmp_path / "ran"
    torch.save({"state_dict": {}, "epoch": 0, "payload": PickledCode(trap)}, tmp_path / "evil.ckpt")
    with pytest.raises(Exception, match="Weights only load failed"):
        load_weights(None, str(tmp_path / "evil.ckpt"), None)  # paw play --ckpt_path
    with pytest.raises(Exception, match="Weights only load failed"):
        lightning_load(str(tmp_path / "evil.ckpt"))  # what paw fit --ckpt_path reads a checkpoint with
    assert not trap.exists()


def test_the_run_checkpoint_loads_without_pickled_code(tiny_run):
    checkpoint = torch.load(tiny_run / "runs/csv/version_0/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["state_dict"] and checkpoint["epoch"] == 1
