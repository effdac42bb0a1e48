"""What a run exposes to other accounts on the machine (docs/security.md): the sockets it listens on and
the permissions of the files it writes. One short quickstart fit (HF engine, env workers, a LoRA adapter
exported) runs under umask 000, the worst a shared account can have, while a thread lists the listening
sockets of the fit's process and its children every 0.1 s."""

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

from paw_lightning.cli import cli_main
from paw_lightning.play import load_weights
from paw_lightning.permissions import WORLD_WRITE, no_world_write
from tests.listeners import ListenerSampler, listeners

ROOT = Path(__file__).resolve().parents[1]

# Every listener a run of this fit may open, with why it is there (see the inventory in docs/security.md).
# The HF-engine fit opens none: env workers talk over a socket pair, Lightning on one device makes no process
# group. A new entry needs its row in the docs' inventory first: owner, protocol, address, lifetime and what
# a client without credentials could do with it.
EXPLAINED: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module")
def secure_fit(tmp_path_factory, coin_pool_kwargs):
    """(run folder, listeners the fit opened) of a one-iteration quickstart fit started under umask 000."""
    folder = tmp_path_factory.mktemp("secure-fit")
    before = {listener.inode for listener in listeners(os.getpid())}
    saved = os.umask(0)
    try:
        with pytest.MonkeyPatch.context() as patch, ListenerSampler(os.getpid()) as sampler:
            patch.chdir(folder)
            cli_main(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), "--trainer.max_epochs=1",
                      "--trainer.enable_progress_bar=false", "--data.num_groups=2", "--data.group_size=2",
                      "--data.max_steps=2", "--data.mini_batch_size=8", "--data.val_episodes=0", "--data.env_workers=2",
                      "--data.env_kwargs=" + json.dumps(dict(coin_pool_kwargs, progress=False)),
                      "--model.lora_rank=2", "--trainer.callbacks+=paw_lightning.callbacks.AdapterExport"])
    finally:
        os.umask(saved)
    return folder, {listener for listener in sampler.seen if listener.inode not in before}


def test_no_listener_is_unexplained(secure_fit):
    _, opened = secure_fit
    unexplained = sorted(f"{l.process} (pid {l.pid}): {l.where()}" for l in opened
                         if (l.process, l.protocol) not in EXPLAINED)
    assert not unexplained, (f"the fit listened on {unexplained}: say in docs/security.md's inventory who owns it "
                             "and what a local client could do with it, then add it to EXPLAINED")


def test_nothing_the_run_writes_is_world_writable_even_under_umask_000(secure_fit):
    folder, _ = secure_fit
    written = [path for path in (folder / "runs").rglob("*")]
    names = {path.name for path in written}
    assert {"last.ckpt", "episodes.jsonl", "adapter_model.safetensors", "metrics.csv", "config.yaml"} <= names
    open_to_all = [str(path.relative_to(folder)) for path in [folder / "runs", *written]
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


def test_the_run_checkpoint_loads_without_pickled_code(secure_fit):
    folder, _ = secure_fit
    checkpoint = torch.load(next((folder / "runs").rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert checkpoint["state_dict"] and checkpoint["epoch"] == 0
