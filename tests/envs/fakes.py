"""Tiny deterministic text envs for tests: say "go" ``goal`` times to win; they can crash, hang or
die on demand.

``CorridorEnv`` crashes in-process through ``CRASHES``/``RESET_CRASHES`` and can be slowed down
(``step_delay_s``, with every step logged to ``step_log``). ``FaultyCorridorEnv`` injects faults that
also work in env worker processes: exceptions in ``step``/``reset`` with a seeded probability, resets
that fail for given seeds, one hang and one hard death (SIGKILL of its own process) per run. Every
injected fault is one line in ``fault_log``, so a test can match the collector's counters against it.
For the DDP tests, ``RankCorridorEnv``'s outcome depends on the training process, and ``EpisodeDump``
writes each rollout's episodes.
"""

from __future__ import annotations

import os
import random
import signal
import time

import gymnasium as gym

from paw_lightning.envs.base import text_space

CRASHES = {"left": 0}  # how many more step() calls should raise, shared by every instance (in-process)
RESET_CRASHES = {"left": 0}  # the same for reset()


def _append(path: str | None, line: str) -> None:
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def _first(path: str | None) -> bool:
    """True for the one caller that creates ``path`` (across processes)."""
    if not path:
        return False
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


class CorridorEnv(gym.Env):
    """Walk a corridor: "go" moves forward, "wait" does nothing; reaching the end wins 10."""

    def __init__(self, goal: int = 2, free_text: bool = False, step_delay_s: float = 0.0, step_log: str | None = None) -> None:
        self.goal = goal
        self.free_text = free_text
        self.step_delay_s = step_delay_s
        self.step_log = step_log
        self.observation_space = text_space()
        self.action_space = text_space()
        self.position = 0
        self.steps = 0
        self.seed_used = None

    def _info(self, won=False):
        return {
            "task": f"reach the end of corridor {self.seed_used}",
            "admissible_commands": None if self.free_text else ["go", "wait"],
            "won": won,
            "task_type": "corridor",
        }

    def reset(self, *, seed=None, options=None):
        if RESET_CRASHES["left"] > 0:
            RESET_CRASHES["left"] -= 1
            raise RuntimeError("the game would not load")
        super().reset(seed=seed)
        self.seed_used = seed
        self.position = 0
        self.steps = 0
        return f"You stand in corridor {seed} at position 0.", self._info()

    def step(self, action: str):
        if CRASHES["left"] > 0:
            CRASHES["left"] -= 1
            raise RuntimeError("the game engine died")
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
        _append(self.step_log, f"{self.seed_used} {self.steps}")
        self.steps += 1
        if action.strip() == "go":
            self.position += 1
        won = self.position >= self.goal
        return f"You are at position {self.position}.", 10.0 if won else 0.0, won, False, self._info(won)


class FaultyCorridorEnv(CorridorEnv):
    """A corridor with injected faults (see the module doc); whether a call fails depends only on
    (fault_seed, reset seed, step), so a replayed episode meets the same faults.

    Args:
        step_fault_p, reset_fault_p: probability that a step / a reset raises.
        fault_seed: seeds those draws.
        fail_reset_seeds: resets with these seeds always raise.
        hang_once: a file path: the first env (of any process) to take step ``hang_step`` creates it and
            sleeps ``hang_s``.
        die_once: a file path: the first env to take step ``die_step`` creates it and SIGKILLs its own process.
        fault_log: every injected fault appends a line ``<kind> <seed> <step>`` here.
    """

    def __init__(self, goal: int = 2, step_fault_p: float = 0.0, reset_fault_p: float = 0.0, fault_seed: int = 0,
                 fail_reset_seeds: tuple[int, ...] = (), hang_once: str | None = None, hang_step: int = 1,
                 hang_s: float = 60.0, die_once: str | None = None, die_step: int = 1, fault_log: str | None = None,
                 **kwargs) -> None:
        super().__init__(goal=goal, **kwargs)
        self.step_fault_p, self.reset_fault_p, self.fault_seed = step_fault_p, reset_fault_p, fault_seed
        self.fail_reset_seeds = set(fail_reset_seeds)
        self.hang_once, self.hang_step, self.hang_s = hang_once, hang_step, hang_s
        self.die_once, self.die_step = die_once, die_step
        self.fault_log = fault_log

    def _draw(self, kind: str, seed, step: int) -> float:
        return random.Random(f"{self.fault_seed}:{kind}:{seed}:{step}").random()

    def reset(self, *, seed=None, options=None):
        if seed in self.fail_reset_seeds or self._draw("reset", seed, 0) < self.reset_fault_p:
            _append(self.fault_log, f"reset {seed} 0")
            raise RuntimeError(f"injected reset fault (seed {seed})")
        return super().reset(seed=seed, options=options)

    def step(self, action: str):
        seed, step = self.seed_used, self.steps
        if step == self.hang_step and _first(self.hang_once):
            _append(self.fault_log, f"hang {seed} {step}")
            time.sleep(self.hang_s)
        if step == self.die_step and _first(self.die_once):
            _append(self.fault_log, f"die {seed} {step}")
            os.kill(os.getpid(), signal.SIGKILL)
        if self._draw("step", seed, step) < self.step_fault_p:
            _append(self.fault_log, f"step {seed} {step}")
            raise RuntimeError(f"injected step fault (seed {seed}, step {step})")
        return super().step(action)


class BuildsOnlyIn:
    """A picklable make_env that builds a corridor only in the process with this pid (an engine missing in workers)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __call__(self) -> CorridorEnv:
        if os.getpid() != self.pid:
            raise OSError("no game engine in this process")
        return CorridorEnv()


for _id, _entry in (("paw-test/Corridor-v0", CorridorEnv), ("paw-test/FaultyCorridor-v0", FaultyCorridorEnv)):
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_entry)


class RankCorridorEnv(gym.Env):
    """For several training processes: on rank 0 every episode wins at its first step; on any other rank
    no episode ever wins, so it runs to ``max_steps``. The processes' rollouts then differ in size and
    the success rate over all of them is known (the rank is read from ``LOCAL_RANK``, which Lightning
    sets for each process it launches)."""

    def __init__(self) -> None:
        self.observation_space = text_space()
        self.action_space = text_space()
        self.rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.seed_used = None
        self.steps = 0

    def _info(self, won=False):
        return {"task": f"corridor {self.seed_used}", "admissible_commands": ["go", "wait"], "won": won, "task_type": "corridor"}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.seed_used, self.steps = seed, 0
        return f"You stand in corridor {seed}.", self._info()

    def step(self, action: str):
        self.steps += 1
        won = self.rank == 0
        return f"Step {self.steps} after {action.strip()}.", 10.0 if won else 0.0, won, False, self._info(won)


def __getattr__(name: str):
    # EpisodeDump needs Lightning, and env worker processes import this module to build its envs: loaded on
    # first use only, a worker starts in about 0.3 s and 70 MB instead of 3 s and 380 MB (torch).
    if name == "EpisodeDump":
        from tests.envs.episode_dump import EpisodeDump

        return EpisodeDump
    if name == "FakeOutOfMemory":
        from tests.envs.fake_oom import FakeOutOfMemory

        return FakeOutOfMemory
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if "paw-test/RankCorridor-v0" not in gym.registry:
    gym.register(id="paw-test/RankCorridor-v0", entry_point=RankCorridorEnv)
