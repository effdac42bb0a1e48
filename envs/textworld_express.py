"""TextWorldExpress (``textworld-express`` on PyPI, a Scala simulator in a JVM) as a Gymnasium text env.

Eight procedurally generated games (``GAMES``) with game parameters, e.g. ``coin`` with
``numLocations=3``. A game is fixed by (game, parameters, seed); the seeds come in folds: train (0-999),
dev (10000+) and test (20000+). ``reset(seed=s)`` plays game seed ``fold_seeds[s % len(fold_seeds)]``,
so the same seed replays exactly. Each env starts its own JVM on its first reset (about 0.5 s).

    env = gymnasium.make("paw/TextWorldExpress-v0", game="coin", game_params="numLocations=3", split="dev")
    obs, info = env.reset(seed=0)   # info: task, admissible_commands, won, task_type (the game), ...
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from paw_lightning.envs.base import text_space, tidy_text
from paw_lightning.envs.java import check_java_env, start_simulator as start_java_simulator

GAMES = ("cookingworld", "twc", "coin", "mapreader", "arithmetic", "sorting", "simonsays", "peckingorder")


def start_simulator(heap_mb: int):
    """A TextWorldExpress simulator in a new JVM with an authenticated gateway (its own step limit set out of
    the way: ours truncates)."""
    from textworld_express import TextWorldExpressEnv

    return start_java_simulator(TextWorldExpressEnv, heap_mb, envStepLimit=10**9)


def check_game(game: str, game_params: str, heap_mb: int) -> None:
    """Raise ValueError on an unknown game or game parameter (TextWorldExpress's message lists the known
    ones). Parameters are checked by the simulator itself: a JVM starts and stops here (about 0.5 s)."""
    if game not in GAMES:
        raise ValueError(f"unknown TextWorldExpress game {game!r}; valid games: {GAMES}")
    sim = start_simulator(heap_mb)
    try:
        sim.load(game, game_params)
    except ValueError as err:
        raise ValueError(f"bad game_params {game_params!r} for {game}: {' '.join(str(err).split())}") from None
    finally:
        sim.close()


class TextWorldExpressEnv(gym.Env):
    """A TextWorldExpress game behind the text-env contract (see envs/base.py and the module doc).

    ``info`` adds ``task_type`` (the game), ``game_seed``, ``score`` (0-1) and, with ``gold_plan``,
    ``gold_plan`` (the simulator's winning command sequence from the start).

    Args:
        game: one of ``GAMES``.
        game_params: comma-separated ``name=value`` settings of the game, e.g. ``numLocations=3,includeDoors=0``
            ("" = the game's defaults; a bad name fails with the game's known names).
        split: the seed fold: ``train`` for rollouts, ``dev`` or ``test`` for validation.
        reward: ``score`` (the change of the game's 0-1 score, times ``win_reward``) or ``win``
            (``win_reward`` on the winning step, else 0, like ALFWorld, so ``r_max`` means the same).
        win_reward: the scale of the reward: a won game's return.
        step_limit: moves after which the episode is truncated (the collector's ``max_steps`` may end it first).
        gold_plan: put the gold command sequence in ``info["gold_plan"]`` (for tests and a scripted baseline).
        jvm_heap_mb: maximum heap of this env's JVM (it needs 150-300 MB).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        game: str = "coin",
        game_params: str = "",
        split: str = "train",
        reward: str = "win",
        win_reward: float = 10.0,
        step_limit: int = 100,
        gold_plan: bool = False,
        jvm_heap_mb: int = 256,
    ) -> None:
        self._check_options(game, split, reward, step_limit, jvm_heap_mb)
        self.game, self.game_params, self.split, self.reward_mode = game, game_params, split, reward
        self.win_reward, self.step_limit, self.gold_plan = float(win_reward), int(step_limit), gold_plan
        self.jvm_heap_mb = int(jvm_heap_mb)
        self.observation_space = text_space()
        self.action_space = text_space()
        self._sim = None
        self._seeds: list[int] = []
        self._info_base: dict[str, Any] = {}
        self._gold_plans: dict[int, list[str]] = {}
        self._moves = 0

    @staticmethod
    def _check_options(game, split, reward, step_limit, jvm_heap_mb) -> None:
        if game not in GAMES:
            raise ValueError(f"unknown TextWorldExpress game {game!r}; valid games: {GAMES}")
        check_java_env("TextWorldExpress", split, reward, step_limit, jvm_heap_mb)

    @staticmethod
    def check_kwargs(game, game_params, split, reward, step_limit, jvm_heap_mb, **_) -> None:
        """Raise on a bad argument, a missing Java or a game parameter the game does not know (the CLI
        checks configs with it, before the model loads; this starts one short-lived JVM)."""
        TextWorldExpressEnv._check_options(game, split, reward, step_limit, jvm_heap_mb)
        check_game(game, game_params, jvm_heap_mb)

    def _simulator(self):
        if self._sim is None:
            self._sim = start_simulator(self.jvm_heap_mb)
            self._sim.load(self.game, self.game_params)
            fold = {"train": self._sim.getValidSeedsTrain, "dev": self._sim.getValidSeedsDev,
                    "test": self._sim.getValidSeedsTest}[self.split]
            self._seeds = [int(s) for s in fold()]
        return self._sim

    def _info(self, sim_info: dict[str, Any]) -> dict[str, Any]:
        return self._info_base | {"admissible_commands": sorted(sim_info["validActions"]),
                                  "won": bool(sim_info["tasksuccess"]), "score": float(sim_info["score"])}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        sim = self._simulator()
        draw = seed if seed is not None else int(self.np_random.integers(2**31))
        game_seed = int((options or {}).get("game_seed", self._seeds[draw % len(self._seeds)]))
        obs, sim_info = sim.reset(seed=game_seed, gameFold=self.split, generateGoldPath=self.gold_plan)
        self._moves = 0
        self._info_base = {"task": tidy_text(sim_info["taskDescription"]), "task_type": self.game, "game_seed": game_seed}
        if self.gold_plan:
            # the simulator draws a new gold path at every reset of the same game (all of them win): keep the
            # first, so that a reset replays exactly
            plan = self._gold_plans.setdefault(game_seed, sim.getGoldActionSequence())
            self._info_base["gold_plan"] = list(plan)
        return tidy_text(obs), self._info(sim_info)

    def step(self, action: str):
        if self._sim is None:
            raise RuntimeError("call reset() before step()")
        obs, score_change, done, sim_info = self._sim.step(action)
        self._moves += 1
        won = bool(sim_info["tasksuccess"])
        if self.reward_mode == "score":
            reward = self.win_reward * float(score_change)
        else:
            reward = self.win_reward if won else 0.0
        truncated = not done and self._moves >= self.step_limit
        return tidy_text(obs), reward, bool(done), truncated, self._info(sim_info)

    def close(self) -> None:
        sim, self._sim = self._sim, None  # forgotten first: a JVM that fails to stop is gone anyway
        if sim is not None:
            sim.close()
