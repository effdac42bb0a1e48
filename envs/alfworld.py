"""ALFWorld (its TextWorld PDDL engine) as a Gymnasium text env.

Games are read from the layout that ``alfworld-download`` writes and ``paw-alfworld-games`` imitates::

    $ALFWORLD_DATA/json_2.1.1/<train|valid_seen|valid_unseen>/<task-dir>/trial_*/game.tw-pddl (+ traj_data.json)

Each game is played as ALFWorld's ``AlfredTWEnv`` plays it: textworld's ``PddlEnv`` with the ALFRED
grammar, object names demangled to "apple 1", admissible commands and ``won`` from the engine. The env
follows the text-env contract (envs/base.py) and adds ``task_type`` (from traj_data), ``task_label``
(the paper's column: Pick, Look, Clean, Heat, Cool, Pick2), ``game_file`` and ``expert_plan``.

    env = gymnasium.make("paw/ALFWorld-v0", split="eval_out_of_distribution", task_types=["pick_heat_then_place_in_recep"])
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import gymnasium as gym

from paw_lightning.envs.alfworld_games import DATA_VERSION, TASK_TYPES, generate_games
from paw_lightning.envs.base import game_index, text_space, tidy_text
from paw_lightning.envs.textworld import default_cache_dir

# Our split names (ALFWorld's) -> ALFRED's folder names.
SPLITS = {"train": "train", "eval_in_distribution": "valid_seen", "eval_out_of_distribution": "valid_unseen"}
TASK_LABELS = dict(zip(TASK_TYPES, ("Pick", "Look", "Clean", "Heat", "Cool", "Pick2")))
EXPERTS = ("planner", "none")
WELCOME = re.compile(r"-= Welcome to TextWorld, ALFRED! =-\s*")
TASK_LINE = re.compile(r"\s*Your task is to:\s*(.*?)\s*$", re.DOTALL)
NOTHING_HAPPENS = "Nothing happens."


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The ALFWorld data folder: ``path``, else ``$ALFWORLD_DATA``, else alfworld's ``~/.cache/alfworld``."""
    return Path(path or os.environ.get("ALFWORLD_DATA") or Path.home() / ".cache" / "alfworld")


def task_type_names(task_types: Sequence[str | int] | None) -> list[str]:
    """Task types by name or by ALFWorld's number (1-6); None means all six."""
    if not task_types:
        return list(TASK_TYPES)
    names = []
    for item in task_types:
        name = TASK_TYPES[int(item) - 1] if str(item).isdigit() and 1 <= int(item) <= 6 else str(item)
        if name not in TASK_TYPES:
            raise ValueError(f"unknown ALFWorld task type {item!r}; use 1-6 or one of {TASK_TYPES}")
        names.append(name)
    return names


def find_games(split: str = "train", task_types: Sequence[str | int] | None = None,
               root: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """``(game_file, task_type)`` of every playable game of a split, sorted by path.

    Skips what ``AlfredTWEnv`` skips: movable-receptacle and sliced tasks, games not marked solvable.
    Raises FileNotFoundError (naming ``ALFWORLD_DATA``, the folder and the two ways out) when none is found.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown ALFWorld split {split!r}; choose one of {list(SPLITS)}")
    wanted = set(task_type_names(task_types))
    folder = data_dir(root) / DATA_VERSION / SPLITS[split]
    games = []
    for traj_path in sorted(folder.glob("*/*/traj_data.json")):
        game_path = traj_path.with_name("game.tw-pddl")
        if "movable" in str(traj_path.parent) or "Sliced" in str(traj_path.parent) or not game_path.exists():
            continue
        task_type, solvable = _game_record(str(traj_path), game_path.stat().st_mtime_ns)
        if task_type in wanted and solvable:
            games.append((str(game_path), task_type))
    if not games:
        raise FileNotFoundError(
            f"no ALFWorld games of types {sorted(wanted)} in split {split!r} under {folder} (the data folder is "
            f"the env's data_dir, else ALFWORLD_DATA={os.environ.get('ALFWORLD_DATA', '<unset>')}, else "
            "~/.cache/alfworld). Either download the official "
            "data (`alfworld-download`, which writes to $ALFWORLD_DATA), or generate games offline "
            f"(`paw-alfworld-games --out {data_dir(root)} --games-per-type 4`)."
        )
    return games


def check_generate(generate: dict[str, int]) -> None:
    """Raise ValueError when the ``generate`` option names an unknown setting or lacks games_per_type."""
    unknown = set(generate) - {"games_per_type", "eval_games_per_type", "seed", "room_size"}
    if unknown or "games_per_type" not in generate:
        raise ValueError("generate takes games_per_type (required), eval_games_per_type, seed and room_size; "
                         f"got {sorted(generate)}")


def generated_data_dir(generate: dict[str, int], root: str | None = None) -> Path:
    """Generate the games that ``generate`` asks for (existing ones are kept) and return their folder."""
    check_generate(generate)
    count = int(generate["games_per_type"])
    eval_count = int(generate.get("eval_games_per_type", count))
    seed = int(generate.get("seed", 0))
    room_size = str(generate.get("room_size", "full"))
    name = f"generated-{room_size}-{seed}-{count}-{eval_count}"
    folder = Path(root) if root else default_cache_dir() / "alfworld" / name
    marker = folder / f".complete-{name}"
    if not marker.exists():
        generate_games(folder, count, seed, eval_count, room_size=room_size)
        marker.touch()
    return folder


@functools.lru_cache(maxsize=None)
def _game_record(traj_path: str, game_mtime_ns: int) -> tuple[str, bool]:
    """(task type, solvable) of one game, read once per process: every env of a rollout lists the same
    split, and official game files are large. A rewritten game file (new mtime) is read again."""
    task_type = json.loads(Path(traj_path).read_text())["task_type"]
    solvable = bool(json.loads(Path(traj_path).with_name("game.tw-pddl").read_text()).get("solvable"))
    return task_type, solvable


def split_feedback(text: str) -> tuple[str, str]:
    """(observation, task) of the opening text: the welcome banner dropped, the task line taken out."""
    text = WELCOME.sub("", text)
    head, sep, tail = text.partition("Your task is to:")
    task = TASK_LINE.match(sep + tail).group(1).rstrip(".") if sep else ""
    return tidy_text(head), task


class ALFWorldEnv(gym.Env):
    """ALFWorld games behind the text-env contract (see envs/base.py).

    ``reset(seed=s)`` plays game ``s % len(games)`` of the split (or ``options={"game_index": i}``).

    Args:
        split: ``train``, ``eval_in_distribution`` (valid_seen) or ``eval_out_of_distribution`` (valid_unseen).
        task_types: names or numbers 1-6 of the task types to play (default all six).
        data_dir: the data folder (default ``$ALFWORLD_DATA``, else ``~/.cache/alfworld``).
        num_games: play only the first N games of the split (0 = all).
        win_reward: reward of the winning step (the paper: 10).
        expert: ``planner`` puts the planner's next commands in ``info["expert_plan"]`` (for tests and a
            scripted baseline; it replans every step, which costs time) or ``none``.
        keep_help: keep the engine's ``help`` command in the admissible list (ALFWorld agents drop it).
        generate: write games offline first, e.g. ``{"games_per_type": 4, "eval_games_per_type": 2, "seed": 0,
            "room_size": "full"}`` (the options of ``paw-alfworld-games``); without ``data_dir`` they go to
            ``$PAW_CACHE_DIR/alfworld/generated-<room_size>-<seed>-<n>-<eval n>`` and are reused by later runs.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        split: str = "train",
        task_types: Sequence[str | int] | None = None,
        data_dir: str | None = None,
        num_games: int = 0,
        win_reward: float = 10.0,
        expert: str = "none",
        keep_help: bool = False,
        generate: dict[str, int] | None = None,
    ) -> None:
        self.check_kwargs(split, task_types, data_dir, num_games, expert, generate)
        if generate:
            data_dir = str(generated_data_dir(generate, data_dir))
        games = find_games(split, task_types, data_dir)
        self.games = games[:num_games] if num_games else games
        self.win_reward = float(win_reward)
        self.expert = expert
        self.keep_help = keep_help
        self.observation_space = text_space()
        self.action_space = text_space()
        self._engine = None
        self._loaded: str | None = None
        self._task = ""
        self._task_type = ""

    @staticmethod
    def check_kwargs(split, task_types, data_dir, num_games, expert, generate, **_) -> None:
        """Raise on a bad argument, or when the data folder holds no game of the split (FileNotFoundError),
        without loading a game (the CLI checks configs with it). Games to ``generate`` are not checked."""
        if expert not in EXPERTS:
            raise ValueError(f"unknown expert {expert!r}; choose one of {EXPERTS}")
        if num_games < 0:
            raise ValueError(f"num_games must be >= 0, got {num_games}")
        if generate:
            check_generate(generate)
            if split not in SPLITS:
                raise ValueError(f"unknown ALFWorld split {split!r}; choose one of {list(SPLITS)}")
            task_type_names(task_types)
        else:
            find_games(split, task_types, data_dir)

    def _make_engine(self):
        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos
        from textworld.envs import PddlEnv

        infos = textworld.EnvInfos(won=True, admissible_commands=True, policy_commands=self.expert == "planner",
                                   extras=["gamefile"])
        return AlfredInfos(AlfredDemangler(PddlEnv(infos), shuffle=False))

    def _info(self, state) -> dict[str, Any]:
        commands = [c for c in state["admissible_commands"] or [] if self.keep_help or c != "help"]
        return {
            "task": self._task,
            "admissible_commands": commands,
            "won": bool(state["won"]),
            "task_type": self._task_type,
            "task_label": TASK_LABELS[self._task_type],
            "game_file": self._loaded,
            "expert_plan": list(state.get("policy_commands") or []),
        }

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        index = game_index(self, len(self.games), seed, options)
        game_file, self._task_type = self.games[index]
        if self._engine is None:
            self._engine = self._make_engine()
        if game_file != self._loaded:
            self._engine.load(game_file)  # translating the PDDL problem is the slow part; same game: skip it
            self._loaded = game_file
        state = self._engine.reset()
        observation, self._task = split_feedback(state["feedback"])
        return observation, self._info(state)

    def step(self, action: str):
        if self._engine is None:
            raise RuntimeError("call reset() before step()")
        state, _, done = self._engine.step(action)
        won = bool(state["won"])
        return tidy_text(state["feedback"]) or NOTHING_HAPPENS, self.win_reward if won else 0.0, bool(done), False, self._info(state)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
        self._engine = None
        self._loaded = None
