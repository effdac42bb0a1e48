"""Text envs in worker processes, with a deadline on every reset and step.

``EnvWorkers`` runs ``num_envs`` envs in ``num_workers`` processes (env i lives in worker
``i % num_workers``). The collector hands it a batch of calls (reset env i with seed s, step env i with
command a); each worker plays its share in env order and answers call by call, and every call has
``timeout_s`` to answer. A worker that misses the deadline or dies (an engine segfault) is killed
(SIGTERM, then SIGKILL after ``grace_s``) and replaced by a fresh one: the call it was running fails
(``timed_out`` tells why; the collector ends that episode as truncated), and the worker's other envs,
rebuilt in the new process, are replayed before their next step (reset with their seed, then the
actions they took so far, checked against the observation they had), so their episodes go on. An env
that raises is closed and rebuilt inside its worker and its call fails the same way. ``InProcessEnvs``
is the same interface without processes or deadlines (``data.env_workers: 0``, for debugging).

Workers are fresh interpreters started with ``subprocess`` and talk over a socket pair with
``multiprocessing.connection`` (pickled short messages; standard library only). Nothing is forked from
a parent that already runs torch threads, CUDA or an in-process vLLM engine, and unlike
multiprocessing's ``spawn`` a worker does not re-import the parent's ``__main__`` (for the ``paw``
script that is Lightning, torch and transformers: about 6 s and 400 MB per worker); it imports
gymnasium and the env's own module (about 0.3 s). Workers ignore Ctrl-C (the parent stops them) and
die with the parent, even after ``kill -9`` (Linux parent-death signal, plus a watchdog thread).
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from typing import Any

import gymnasium as gym

from paw_lightning.envs.base import check_info

log = logging.getLogger(__name__)
WORKER_STARTUP_S = 30.0  # extra time a new worker gets to start Python and import before its first env is due

WORKER_COMMAND = "from paw_lightning.rollout.env_workers import worker_main; worker_main()"


class EnvBuildError(RuntimeError):
    """An env could not be built (or rebuilt): the one env failure that stops a run."""


def make_text_env(env_id: str | gym.envs.registration.EnvSpec, env_kwargs: dict[str, Any]) -> gym.Env:
    """``gymnasium.make`` without the passive checker (text envs are checked against our own contract).

    Pass the id's ``EnvSpec`` (``gymnasium.spec(env_id)``) when a worker process builds the env: the spec
    pickles with its entry point, so the worker needs no registration of its own."""
    if isinstance(env_id, str) and env_id not in gym.registry:
        raise EnvBuildError(
            f"env id {env_id!r} is not registered in this process; env workers build envs in fresh processes, so "
            "register the id in an importable module or pass gymnasium.spec(env_id) instead of the id"
        )
    return gym.make(env_id, disable_env_checker=True, **env_kwargs)


def describe(err: BaseException) -> str:
    """One line about an exception."""
    return f"{type(err).__name__}: {err}".splitlines()[0][:2000]


def run_call(env: gym.Env, kind: str, arg: Any) -> tuple:
    """One env call, checked against the text-env contract: ``reset`` -> (obs, info), ``step`` -> the 5-tuple."""
    if kind == "reset":
        obs, info = env.reset(seed=arg)
        check_info(info)
        return obs, info
    result = env.step(arg)
    check_info(result[4])
    return result


def rebuild(env: gym.Env | None, make_env: Callable[[], gym.Env]) -> gym.Env:
    """Close ``env`` (a broken env may fail to close; the new one replaces it) and build a new one."""
    if env is not None:
        try:
            env.close()
        except Exception:  # noqa: BLE001
            pass
    try:
        return make_env()
    except EnvBuildError:
        raise
    except Exception as err:  # noqa: BLE001 - the one env failure that ends the run
        raise EnvBuildError(f"cannot build the env: {describe(err)}") from None


@dataclass
class EnvResult:
    """The answer to one env call: ``value`` ((obs, info) for reset, the 5-tuple for step), or why it
    failed (the env has been rebuilt by then)."""

    value: tuple | None = None
    error: str = ""
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return not self.error


class InProcessEnvs:
    """The envs in this process, called one after another (no deadline: a hung env hangs the run).

    Args:
        make_env: builds one env (again for an env that raised).
        num_envs: how many envs.
    """

    def __init__(self, make_env: Callable[[], gym.Env], num_envs: int) -> None:
        self.make_env = make_env
        self.envs = [make_env() for _ in range(num_envs)]  # a first build that fails raises the env's own error

    def reset(self, seeds: dict[int, int]) -> dict[int, EnvResult]:
        """Reset env i with ``seeds[i]``, in index order."""
        return {i: self._call(i, "reset", seed) for i, seed in sorted(seeds.items())}

    def step(self, actions: dict[int, str]) -> dict[int, EnvResult]:
        """Step env i with ``actions[i]``, in index order."""
        return {i: self._call(i, "step", action) for i, action in sorted(actions.items())}

    def _call(self, index: int, kind: str, arg: Any) -> EnvResult:
        try:
            return EnvResult(run_call(self.envs[index], kind, arg))
        except Exception as err:  # noqa: BLE001 - a crashed env ends its episode, not the run
            log.warning("env %d raised %s in %s; rebuilding it and ending its episode", index, describe(err), kind)
            self.envs[index] = rebuild(self.envs[index], self.make_env)
            return EnvResult(error=describe(err))

    def close(self) -> None:
        for env in self.envs:
            try:
                env.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        self.envs = []


# ----- the worker process -----------------------------------------------------------------------


def worker_main() -> None:
    """Entry point of a worker process: ``python -c WORKER_COMMAND <fd> <parent pid>``."""
    fd, parent = int(sys.argv[1]), int(sys.argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes us
    _die_with_parent(parent)
    conn = Connection(fd)
    payload, env_ids, path = conn.recv()
    sys.path[:] = path  # the parent's import path, as multiprocessing's spawn does
    try:
        make_env = pickle.loads(payload)
    except Exception as err:  # noqa: BLE001
        conn.send(("fatal", -1, f"cannot unpickle make_env in a worker process: {describe(err)} (an env class defined "
                                "in __main__ cannot be built there: move it into a module, or set env_workers 0)"))
        return
    envs: dict[int, gym.Env] = {}
    for i in env_ids:
        try:
            envs[i] = rebuild(None, make_env)
        except EnvBuildError as err:
            conn.send(("fatal", i, str(err)))
            return
        conn.send(("built", i, None))
    while True:
        try:
            batch = conn.recv()
        except EOFError:
            break
        if batch is None:
            break
        for i, kind, arg, replay in batch:
            try:
                if replay is not None:
                    _replay(envs[i], *replay)
                _send_result(conn, i, run_call(envs[i], kind, arg))
            except Exception as err:  # noqa: BLE001 - rebuild the env and report the failed call
                try:
                    envs[i] = rebuild(envs[i], make_env)
                except EnvBuildError as build_err:
                    conn.send(("fatal", i, str(build_err)))
                    return
                conn.send(("error", i, describe(err)))
    for env in envs.values():
        try:
            env.close()
        except Exception:  # noqa: BLE001
            pass


def _send_result(conn: Connection, index: int, result: tuple) -> None:
    try:
        message = pickle.dumps(("ok", index, result))
    except Exception as err:  # noqa: BLE001 - pickling fails before anything is written
        raise RuntimeError(f"the env's result cannot be pickled: {describe(err)}") from None
    conn.send_bytes(message)


def _replay(env: gym.Env, seed: int, actions: list[str], expected_obs: str) -> None:
    """Bring a rebuilt env back to where its episode was: reset with its seed, take its actions again."""
    obs, _ = env.reset(seed=seed)
    for action in actions:
        obs = env.step(action)[0]
    if obs != expected_obs:
        raise RuntimeError("replaying the episode after a worker restart led elsewhere (the env is not deterministic)")


def _die_with_parent(parent: int) -> None:
    """Exit when the parent process dies, even by SIGKILL (a hung env keeps the watchdog thread from
    running only if it holds the GIL; the Linux parent-death signal covers that)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except Exception:  # noqa: BLE001 - the watchdog below still works
            pass
    if os.getppid() != parent:
        os._exit(0)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


# ----- the parent side --------------------------------------------------------------------------


def _stop_processes(processes: dict[int, subprocess.Popen], grace_s: float) -> None:
    """Terminate, then kill after ``grace_s``, every process still running (also at interpreter exit)."""
    for proc in processes.values():
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in processes.values():
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    processes.clear()


class EnvWorkers:
    """``num_envs`` envs in ``num_workers`` processes, every call with a deadline (see the module doc).

    Args:
        make_env: builds one env; must pickle (``functools.partial(make_text_env, gymnasium.spec(id), kwargs)``).
        num_envs: how many envs.
        num_workers: worker processes, 1 to ``num_envs``.
        timeout_s: deadline of each reset, step and env build.
        grace_s: time a worker gets to exit after SIGTERM before SIGKILL.
    """

    def __init__(self, make_env: Callable[[], gym.Env], num_envs: int, num_workers: int, timeout_s: float = 60.0,
                 grace_s: float = 1.0) -> None:
        if not 1 <= num_workers <= num_envs:
            raise ValueError(f"need 1 <= num_workers <= num_envs ({num_envs}), got {num_workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        try:
            self._payload = pickle.dumps(make_env)
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"env workers need a picklable make_env ({describe(err)}); set env_workers 0") from None
        self.make_env, self.timeout_s, self.grace_s = make_env, float(timeout_s), float(grace_s)
        self.members = [list(range(w, num_envs, num_workers)) for w in range(num_workers)]
        self.worker_restarts = 0
        self._procs: dict[int, subprocess.Popen] = {}
        self._conns: dict[int, Connection] = {}
        self._trace: dict[int, list] = {}  # env -> [seed, actions, last observation] of its episode
        self._stale: set[int] = set()  # envs rebuilt by a new worker; replayed before their next step
        self._finalizer = weakref.finalize(self, _stop_processes, self._procs, self.grace_s)
        try:
            # One env in this process first: the env's own error when it cannot be built at all, and any game
            # generation or caching happens once, before the workers build their envs from the same cache.
            make_env().close()
            for w in range(num_workers):
                self._launch(w)
            for w in range(num_workers):
                self._await_build(w, retry=True)
        except BaseException:
            self.close()
            raise

    # -- processes --
    def _launch(self, w: int) -> None:
        ours, theirs = Pipe()
        proc = subprocess.Popen(
            [sys.executable, "-c", WORKER_COMMAND, str(theirs.fileno()), str(os.getpid())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C goes to the parent only
        )
        theirs.close()
        self._procs[w], self._conns[w] = proc, ours
        ours.send((self._payload, self.members[w], sys.path))

    def _await_build(self, w: int, retry: bool) -> None:
        """Wait until worker ``w`` has built its envs (``timeout_s`` each); one new try, then EnvBuildError."""
        problem = self._build_problem(w)
        if problem is None:
            return
        self._kill(w)
        if not retry:
            raise EnvBuildError(problem)
        log.warning("%s; starting the worker again", problem)
        self._launch(w)
        self._await_build(w, retry=False)

    def _build_problem(self, w: int) -> str | None:
        """Why worker ``w`` could not build its envs, or None once it has."""
        conn = self._conns[w]
        for k, _ in enumerate(self.members[w]):
            # the first env also waits for the worker's interpreter to start and import (seconds on a busy machine)
            if not conn.poll(self.timeout_s + (WORKER_STARTUP_S if k == 0 else 0.0)):
                return f"an env worker did not build its env within env_timeout_s={self.timeout_s:g} s (+{WORKER_STARTUP_S:g} s to start)"
            try:
                tag, _, message = conn.recv()
            except (EOFError, OSError):
                return "an env worker died while building its envs"
            if tag == "fatal":
                return message
        return None

    def _kill(self, w: int) -> None:
        proc, conn = self._procs.pop(w, None), self._conns.pop(w, None)
        if conn is not None:
            conn.close()
        if proc is not None:
            _stop_processes({w: proc}, self.grace_s)

    def _replace(self, w: int, blamed: int | None) -> None:
        """Kill worker ``w``, start a new one; its envs other than ``blamed`` replay before their next step."""
        self._kill(w)
        self.worker_restarts += 1
        self._stale.update(i for i in self.members[w] if i != blamed and i in self._trace)
        self._launch(w)
        self._await_build(w, retry=True)

    # -- calls --
    def reset(self, seeds: dict[int, int]) -> dict[int, EnvResult]:
        """Reset env i with ``seeds[i]``; every worker plays its envs in index order, all workers at once."""
        return self._run({i: ("reset", seed) for i, seed in seeds.items()})

    def step(self, actions: dict[int, str]) -> dict[int, EnvResult]:
        """Step env i with ``actions[i]``; every worker plays its envs in index order, all workers at once."""
        return self._run({i: ("step", action) for i, action in actions.items()})

    def _wire(self, index: int, kind: str, arg: Any) -> tuple:
        replay = None
        if kind == "reset":
            self._stale.discard(index)
        elif index in self._stale:
            replay = tuple(self._trace[index])
        return index, kind, arg, replay

    def _allowance(self, call: tuple) -> float:
        """Deadline of one call: ``timeout_s``, plus one per replayed reset and step."""
        index, kind, _ = call
        if kind == "step" and index in self._stale:
            return self.timeout_s * (2 + len(self._trace[index][1]))
        return self.timeout_s

    def _send(self, w: int, queue: list[tuple]) -> bool:
        try:
            self._conns[w].send([self._wire(*call) for call in queue])
            return True
        except (OSError, EOFError):
            return False

    def _run(self, calls: dict[int, tuple[str, Any]]) -> dict[int, EnvResult]:
        queues: dict[int, list[tuple]] = {}
        for index in sorted(calls):
            queues.setdefault(index % len(self.members), []).append((index, *calls[index]))
        results: dict[int, EnvResult] = {}
        deadlines: dict[int, float] = {}
        for w, queue in queues.items():
            if w not in self._procs or self._procs[w].poll() is not None:
                log.warning("env worker %d exited while idle; starting a new one", w)
                self._replace(w, blamed=None)
            if not self._send(w, queue):
                self._fail_first(w, queue, results, "died")
            if queue:
                deadlines[w] = time.monotonic() + self._allowance(queue[0])
        try:
            while any(queues.values()):
                busy = {self._conns[w]: w for w, queue in queues.items() if queue}
                wait_s = max(0.0, min(deadlines[w] for w in busy.values()) - time.monotonic())
                for conn in wait(list(busy), wait_s):
                    w = busy[conn]
                    try:
                        tag, index, payload = conn.recv()
                    except (EOFError, OSError):
                        self._fail_first(w, queues[w], results, "died")
                    else:
                        self._answer(w, queues[w], tag, index, payload, results)
                    if queues[w]:
                        deadlines[w] = time.monotonic() + self._allowance(queues[w][0])
                now = time.monotonic()
                for conn, w in busy.items():
                    if queues[w] and now >= deadlines[w] and conn in self._conns.values() and not conn.poll(0):
                        self._fail_first(w, queues[w], results, "timeout")
                        if queues[w]:
                            deadlines[w] = time.monotonic() + self._allowance(queues[w][0])
        except BaseException:
            # Interrupted (stop signal) or an env that cannot be built: calls are in flight, so the
            # workers' state is unknown; the owner closes this pool and builds a new one if it goes on.
            self.close()
            raise
        return results

    def _answer(self, w: int, queue: list[tuple], tag: str, index: int, payload: Any, results: dict) -> None:
        if tag == "fatal":
            raise EnvBuildError(payload)
        call = queue.pop(0)
        assert call[0] == index, (call, index)
        self._stale.discard(index)
        if tag == "ok":
            results[index] = EnvResult(payload)
            if call[1] == "reset":
                self._trace[index] = [call[2], [], payload[0]]
            elif index in self._trace:
                self._trace[index][1].append(call[2])
                self._trace[index][2] = payload[0]
        else:
            log.warning("env %d raised %s in %s; rebuilt it in its worker, its episode ends", index, payload, call[1])
            results[index] = EnvResult(error=payload)
            self._trace.pop(index, None)

    def _fail_first(self, w: int, queue: list[tuple], results: dict, why: str) -> None:
        """The worker missed the deadline of (or died during) the first call of ``queue``: that call fails,
        the worker is replaced and gets the rest of the queue."""
        index, kind, _ = queue.pop(0)
        limit = f" ({self.timeout_s:g} s)" if why == "timeout" else ""
        error = f"env worker {why} during {kind} of env {index}{limit}"
        log.warning("%s; killing and replacing the worker, the episode ends", error)
        results[index] = EnvResult(error=error, timed_out=why == "timeout")
        self._trace.pop(index, None)
        self._stale.discard(index)
        self._replace(w, blamed=index)
        if queue and not self._send(w, queue):
            self._fail_first(w, queue, results, "died")

    def close(self) -> None:
        """Ask every worker to close its envs and exit; kill the ones that do not within ``grace_s``."""
        for conn in self._conns.values():
            try:
                conn.send(None)
            except (OSError, EOFError):
                pass
        deadline = time.monotonic() + self.grace_s
        for proc in self._procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
        _stop_processes(self._procs, self.grace_s)
