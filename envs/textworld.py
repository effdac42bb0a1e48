"""TextWorld games as a Gymnasium text env, plus offline generation and caching of game pools.

``TextWorldGamePool`` generates games with TextWorld's own generator (built-in challenges
``tw-simple``, ``tw-coin_collector``, ``tw-treasure_hunter``, ``tw-cooking``, or ``custom`` sizes), with
train and eval splits drawn from disjoint seeds, compiled once and cached on disk.
``TextWorldEnv`` plays them through ``textworld.start`` and fixes its old-style API: per-step reward
instead of a cumulative score, the Gymnasium 5-tuple, and the info keys of the text-env contract.

    env = gymnasium.make("paw/TextWorld-v0", challenge="tw-coin_collector", settings={"level": 2})
    obs, info = env.reset(seed=3)
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
from tqdm.auto import tqdm

from paw_lightning.envs.base import game_index, text_space, tidy_text
from paw_lightning.errors import GameGenerationError

CHALLENGES = ("tw-simple", "tw-coin_collector", "tw-treasure_hunter", "tw-cooking", "custom")
SPLITS = ("train", "eval")
EVAL_SEED_OFFSET = 500_000  # eval game seeds start here, so they never meet train seeds
REWARD_MODES = ("win", "score")
DEFAULT_GENERATION_TIMEOUT_S = 60.0
# The interpreter echoes its input prompt and a status bar (">   -= Kitchen =-0/2") after each command.
STATUS_LINE = re.compile(r"^>.*$", re.MULTILINE)


def interpreter_command(action: str) -> str:
    """The command as TextWorld's game interpreter may read it: printable ASCII on one line, without
    backslashes. Its frotz reads a backslash as the start of an interpreter command (a command starting
    with one hangs, "thing\\None" segfaults), echoes non-ASCII text back in pieces that do not decode, and
    hangs or segfaults on NUL and \\x0e-\\x15."""
    return " ".join("".join(c for c in action if " " <= c <= "~" and c != "\\" or c.isspace()).split())


def clean_feedback(text: str) -> str:
    """The game's answer without the interpreter's prompt/status lines, whitespace tidied."""
    return tidy_text(STATUS_LINE.sub("", text))


def challenge_settings(challenge: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The challenge's full settings: its own argparser defaults, updated with ``settings``.

    Raises ValueError naming the challenge's required settings when one is missing or unknown.
    """
    if challenge == "custom":
        unknown = set(settings) - {"world_size", "nb_objects", "quest_length"}
        if unknown:
            raise ValueError(f"custom TextWorld games take world_size, nb_objects, quest_length; got {sorted(unknown)}")
        return dict(settings)
    import textworld.challenges

    _, _, build_parser = textworld.challenges.CHALLENGES[challenge]
    actions = [a for a in build_parser()._actions if a.dest != "help"]
    known = {a.dest for a in actions}
    unknown = set(settings) - known
    missing = [a.dest for a in actions if a.required and a.dest not in settings]
    if unknown or missing:
        raise ValueError(
            f"{challenge} settings must give {sorted(a.dest for a in actions if a.required)} and may give "
            f"{sorted(known)}; missing {missing}, unknown {sorted(unknown)}"
        )
    return {a.dest: a.default for a in actions} | dict(settings)


def default_cache_dir() -> Path:
    """Where generated games are cached: ``$PAW_CACHE_DIR`` or ``~/.cache/paw_lightning``."""
    return Path(os.environ.get("PAW_CACHE_DIR", Path.home() / ".cache" / "paw_lightning"))


@dataclass
class TextWorldGamePool:
    """A deterministic pool of generated TextWorld games, cached on disk.

    Args:
        challenge: one of ``CHALLENGES``; ``custom`` uses ``world_size``/``nb_objects``/``quest_length``.
        settings: the challenge's settings, e.g. ``{"level": 3}`` for coin_collector/treasure_hunter,
            ``{"rewards": "dense", "goal": "detailed"}`` for tw-simple, ``{"recipe": 1, "take": 1}`` for
            tw-cooking, ``{"world_size": 3, "nb_objects": 4, "quest_length": 2}`` for custom.
        num_train: games in the train split.
        num_eval: games in the eval split (seeds disjoint from train).
        seed: base seed of the pool; game i of a split has seed ``seed * 1_000_000 + offset + i``.
        cache_dir: where compiled games live (default ``$PAW_CACHE_DIR`` or ``~/.cache/paw_lightning``).
        generation_timeout_s: time limit of generating one game (some settings and seeds never finish);
            games are generated in a child process, which is killed when a game runs over.
    """

    challenge: str = "tw-coin_collector"
    settings: dict[str, Any] = field(default_factory=lambda: {"level": 2})
    num_train: int = 8
    num_eval: int = 4
    seed: int = 0
    cache_dir: str | os.PathLike | None = None
    generation_timeout_s: float = DEFAULT_GENERATION_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.challenge not in CHALLENGES:
            raise ValueError(f"unknown TextWorld challenge {self.challenge!r}; choose one of {CHALLENGES}")
        if self.num_train < 1 or self.num_eval < 0:
            raise ValueError(f"need num_train >= 1 and num_eval >= 0, got {self.num_train}, {self.num_eval}")
        if max(self.num_train, self.num_eval) >= EVAL_SEED_OFFSET:
            raise ValueError(f"a split holds at most {EVAL_SEED_OFFSET - 1} games")
        if not self.generation_timeout_s > 0:
            raise ValueError(f"generation_timeout_s must be > 0, got {self.generation_timeout_s}")
        self.settings = challenge_settings(self.challenge, self.settings)

    @property
    def folder(self) -> Path:
        """The cache folder of this pool's (challenge, settings), shared by every pool size and seed."""
        import textworld

        key = json.dumps([self.challenge, self.settings, textworld.__version__], sort_keys=True)
        digest = hashlib.sha1(key.encode()).hexdigest()[:10]
        return Path(self.cache_dir or default_cache_dir()) / "textworld" / f"{self.challenge}-{digest}"

    def seeds(self, split: str) -> list[int]:
        """The game seeds of a split (train and eval never share one)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        count, offset = (self.num_train, 0) if split == "train" else (self.num_eval, EVAL_SEED_OFFSET)
        return [self.seed * 1_000_000 + offset + i for i in range(count)]

    def files(self, split: str = "train", progress: bool = True) -> list[str]:
        """Paths of the split's compiled games, generating the missing ones first (in a child process, each
        within ``generation_timeout_s``; raises GameGenerationError naming the game otherwise)."""
        paths = [self.folder / f"game_{s}.z8" for s in self.seeds(split)]
        missing = [(s, p) for s, p in zip(self.seeds(split), paths) if not p.exists()]
        if missing:
            with tqdm(total=len(missing), desc=f"generating {self.challenge} games ({split})", disable=not progress) as bar:
                self._generate(missing, bar.update)
        return [str(p) for p in paths]

    def _generate(self, games: list[tuple[int, Path]], done: Callable[[int], Any]) -> None:
        """Generate ``(seed, path)`` games in one child process, calling ``done(1)`` after each."""
        job = {"challenge": self.challenge, "settings": self.settings, "games": [(s, str(p)) for s, p in games]}
        with tempfile.TemporaryFile("w+") as stderr:
            child = subprocess.Popen(
                [sys.executable, "-c", "from paw_lightning.envs.textworld import generation_worker; generation_worker()"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True,
            )
            lines: queue.Queue = queue.Queue()
            threading.Thread(target=lambda: [lines.put(line) for line in child.stdout] + [lines.put(None)], daemon=True).start()
            child.stdin.write(json.dumps(job))
            child.stdin.close()
            try:
                for game_seed, _ in games:
                    what = f"the {self.challenge} game with settings {self.settings} and seed {game_seed}"
                    while True:
                        try:
                            line = lines.get(timeout=self.generation_timeout_s)
                        except queue.Empty:
                            raise GameGenerationError(
                                f"generating {what} took more than generation_timeout_s={self.generation_timeout_s:g} s; "
                                "choose other settings (a lower level) or another pool seed, or raise generation_timeout_s"
                            ) from None
                        if line is None:
                            stderr.seek(0)
                            last = (stderr.read().strip().splitlines() or ["no error output"])[-1]
                            raise GameGenerationError(f"generating {what} failed: {last}")
                        if line.startswith(GENERATED):  # anything else is the generator's own chatter
                            break
                    done(1)
            finally:
                if child.poll() is None:
                    os.killpg(child.pid, signal.SIGKILL)  # the child and any compiler it started
                child.wait()


GENERATED = "paw-generated "


def generation_worker() -> None:
    """The child process of ``TextWorldGamePool._generate``: reads the job (JSON) from stdin, generates
    each game and prints ``GENERATED <seed>`` after it."""
    job = json.loads(sys.stdin.read())
    for game_seed, path in job["games"]:
        generate_game(job["challenge"], job["settings"], game_seed, Path(path))
        print(f"{GENERATED}{game_seed}", flush=True)


def generate_game(challenge: str, settings: dict[str, Any], game_seed: int, path: Path) -> None:
    """Generate and compile one game to ``path`` (with its .json beside it)."""
    import textworld
    import textworld.challenges

    options = textworld.GameOptions()
    options.seeds = game_seed
    if challenge == "custom":
        for name in ("world_size", "nb_objects", "quest_length"):
            if name in settings:
                setattr(options, name, int(settings[name]))
        game = textworld.generator.make_game(options)
    else:
        _, make, _ = textworld.challenges.CHALLENGES[challenge]
        game = make(dict(settings), options)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Compile in a private folder, then move: concurrent envs never read a half-written game.
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        options.path = str(Path(tmp) / path.name)
        options.force_recompile = True
        compiled = Path(textworld.generator.compile_game(game, options))
        shutil.move(str(compiled.with_suffix(".json")), path.with_suffix(".json"))
        shutil.move(str(compiled), path)


class TextWorldEnv(gym.Env):
    """A pool of TextWorld games behind the text-env contract (see envs/base.py).

    ``reset(seed=s)`` plays game ``s % len(games)`` of the pool (or ``options={"game_index": i}``), so the
    same seed always gives the same game and initial state.

    Args:
        game_files: explicit compiled games (.z8/.ulx); when given, the pool arguments are ignored.
        challenge, settings, num_train, num_eval, pool_seed, cache_dir: the ``TextWorldGamePool``.
        split: ``train`` or ``eval``.
        reward: ``win`` (``win_reward`` on the winning step, else 0) or ``score`` (also the game's own
            score increments).
        win_reward: reward of the winning step (the paper's ALFWorld/WebShop scale is 10).
        progress: show a progress bar while generating games.
        max_engines: started game engines kept per env (least recently used ones are closed), so that
            large pools do not keep one interpreter per game alive.
        generation_timeout_s: time limit of generating one game of the pool (``TextWorldGamePool``).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        game_files: list[str] | None = None,
        challenge: str = "tw-coin_collector",
        settings: dict[str, Any] | None = None,
        num_train: int = 8,
        num_eval: int = 4,
        pool_seed: int = 0,
        cache_dir: str | None = None,
        split: str = "train",
        reward: str = "win",
        win_reward: float = 10.0,
        progress: bool = True,
        max_engines: int = 8,
        generation_timeout_s: float = DEFAULT_GENERATION_TIMEOUT_S,
    ) -> None:
        pool = self.check_kwargs(game_files, challenge, settings, num_train, num_eval, pool_seed, cache_dir, split,
                                 reward, generation_timeout_s)
        if pool is None:
            self.games = list(game_files)
            self.task_type = "textworld"
        else:
            self.games = pool.files(split, progress=progress)
            self.task_type = challenge.removeprefix("tw-")
        self.reward_mode = reward
        self.win_reward = float(win_reward)
        self.observation_space = text_space()
        self.action_space = text_space()
        self.max_engines = max(1, int(max_engines))
        self._engines: OrderedDict[str, Any] = OrderedDict()
        self._engine = None
        self._score = 0
        self._task = ""

    @staticmethod
    def check_kwargs(game_files, challenge, settings, num_train, num_eval, pool_seed, cache_dir, split, reward,
                     generation_timeout_s, **_) -> TextWorldGamePool | None:
        """Raise on a bad argument without generating or starting a game (the CLI checks configs with it);
        returns the game pool, or None when ``game_files`` are given."""
        if reward not in REWARD_MODES:
            raise ValueError(f"unknown reward mode {reward!r}; choose one of {REWARD_MODES}")
        if game_files:
            missing = [f for f in game_files if not Path(f).exists()]
            if missing:
                raise FileNotFoundError(f"TextWorld game files not found: {missing}")
            return None
        pool = TextWorldGamePool(challenge, dict(settings if settings is not None else {"level": 2}), num_train, num_eval,
                                 pool_seed, cache_dir, generation_timeout_s)
        if not pool.seeds(split):
            raise ValueError(f"the {split!r} split of the TextWorld pool is empty; raise num_{split}")
        return pool

    def _start(self, game_file: str):
        import textworld

        if game_file in self._engines:
            self._engines.move_to_end(game_file)
        else:
            while len(self._engines) >= self.max_engines:
                _, oldest = self._engines.popitem(last=False)
                oldest.close()
            infos = textworld.EnvInfos(
                admissible_commands=True, won=True, lost=True, objective=True, score=True,
                description=True, policy_commands=True,
            )
            with warnings.catch_warnings():
                # jericho cannot detect score changes in compiled TextWorld games; TextWorld tracks them itself.
                warnings.filterwarnings("ignore", message=".*is not fully supported.*")
                self._engines[game_file] = textworld.start(game_file, request_infos=infos)
        return self._engines[game_file]

    def _info(self, state) -> dict[str, Any]:
        return {
            "task": self._task,
            "admissible_commands": sorted(state["admissible_commands"] or []),
            "won": bool(state["won"]),
            "task_type": self.task_type,
            "game_file": self._game_file,
            "expert_plan": list(state.get("policy_commands") or []),
        }

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        index = game_index(self, len(self.games), seed, options)
        self._game_file = self.games[index]
        self._engine = self._start(self._game_file)
        state = self._engine.reset()
        self._score = state["score"] or 0
        self._task = tidy_text(state["objective"] or "")
        return clean_feedback(state["description"] or state["feedback"]), self._info(state)

    def step(self, action: str):
        if self._engine is None:
            raise RuntimeError("call reset() before step()")
        state, score, done = self._engine.step(interpreter_command(action))
        won = bool(state["won"])
        reward = self.win_reward if won else 0.0
        if self.reward_mode == "score":
            reward += float((score or 0) - self._score)
        self._score = score or 0
        return clean_feedback(state["feedback"]), reward, bool(done), False, self._info(state)

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()
        self._engine = None
