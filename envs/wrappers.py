"""Any Gymnasium env with ``Discrete`` actions as a text env (the design card's "extend envs via wrappers").

``DiscreteTextWrapper`` names the actions (admissible commands = all names), writes each observation as
text (a ``describe`` function, else the env's ``ansi`` render, else the default text of any standard
observation space, envs/space_text.py), reports ``won`` from a win rule (envs/gymnasium_defaults.py),
and turns text that names no action into a no-op (the collector adds the invalid-action penalty).
``paw/Gymnasium-v0`` builds one straight from ``gymnasium.make``; only the id is needed, the rest has
defaults (Gymnasium's own envs get their action names, goal and a win rule that means winning)::

    env = gymnasium.make("paw/Gymnasium-v0", env_id="CartPole-v1")
    env = gymnasium.make("paw/Gymnasium-v0", env_id="FrozenLake-v1", env_kwargs={"is_slippery": False},
                         describe="paw_lightning.envs.wrappers:frozen_lake_text", reward_scale=10.0)
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import load_env_creator

from paw_lightning.envs.base import NO_ACTION, text_space
from paw_lightning.envs.gymnasium_defaults import (default_action_names, default_labels, default_task,
                                                   default_win_rule, parse_win_rule)
from paw_lightning.envs.space_text import check_describable, space_text

ANSI_SPAN = re.compile(r"\x1b\[[0-9;]*m(.*?)\x1b\[0m", re.DOTALL)
ANSI_CODE = re.compile(r"\x1b\[[0-9;]*m")


def ansi_text(render: str) -> str:
    """An ``ansi`` render as plain text: a coloured span (the agent's cell in FrozenLake) becomes ``[x]``."""
    text = ANSI_CODE.sub("", ANSI_SPAN.sub(r"[\1]", render))
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def frozen_lake_text(obs: int, env: gym.Env) -> str:
    """FrozenLake's state as text: the agent's row and column, and the map with the agent as ``P``."""
    desc = env.unwrapped.desc
    row, col = divmod(int(obs), desc.shape[1])
    lines = ["".join("P" if (i, j) == (row, col) else cell.decode() for j, cell in enumerate(line))
             for i, line in enumerate(desc)]
    return f"You are at row {row + 1}, column {col + 1} (P on the map).\n" + "\n".join(lines)


def taxi_text(obs: int, env: gym.Env) -> str:
    """Taxi's state as text: where the taxi, the passenger and the destination are, and the walls' map."""
    taxi_row, taxi_col, passenger, destination = env.unwrapped.decode(int(obs))
    names = "RGYB"
    where = "in the taxi" if passenger == 4 else f"waiting at {names[passenger]}"
    walls = "\n".join(b"".join(line).decode() for line in env.unwrapped.desc)
    return (f"The taxi is at row {taxi_row + 1}, column {taxi_col + 1}. The passenger is {where}; "
            f"the destination is {names[destination]}.\n{walls}")


def import_function(path: str, option: str = "describe") -> Callable:
    """The function named ``"package.module:function"`` (``option``: the config key, for the error)."""
    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"cannot import {option}={path!r} ({err}); give it as 'package.module:function'") from None


class DiscreteTextWrapper(gym.Wrapper):
    """A ``Discrete``-action env behind the text-env contract (see envs/base.py and the module doc).

    Args:
        env: the env; its ``ansi`` render is the observation text when it was made with ``render_mode="ansi"``
            and no ``describe`` is given, else the default text of its observation (envs/space_text.py).
        action_names: one command per action index, e.g. ``["left", "down", "right", "up"]``; None: the
            env's own names where known (envs/gymnasium_defaults.py), else ``action 0`` ... ``action n-1``.
        task: the goal text (``info["task"]``); None: the known goal of a Gymnasium env, else a generic one.
        describe: ``(observation, env) -> str``; None: the ``ansi`` render, else the default text.
        win: when an episode counts as won: ``survive``, ``terminate``, ``reward>X``, ``reward>=X``, ``none``
            or ``"package.module:function"`` (envs/gymnasium_defaults.py); None: the env's known rule, else ``none``.
        reward_scale: multiplies the env's reward (e.g. 10 so that a won FrozenLake returns 10, as ALFWorld).
        task_type: ``info["task_type"]`` (default: the env's id).
    """

    def __init__(self, env: gym.Env, action_names: Sequence[str] | None = None, task: str | None = None,
                 describe: Callable | None = None, win: str | None = None, reward_scale: float = 1.0,
                 task_type: str | None = None) -> None:
        super().__init__(env)
        env_id = env.spec.id if env.spec else type(env.unwrapped).__name__
        check_action_space(env_id, env.action_space)
        if action_names is None:
            action_names = default_action_names(env_id, env)
        if len(action_names) != env.action_space.n or len(set(action_names)) != len(action_names):
            raise ValueError(f"give {env.action_space.n} distinct action_names, one per action; got {list(action_names)}")
        if describe is None and env.render_mode != "ansi":
            check_describable(env.observation_space)
        self.action_names = list(action_names)
        self.task = task or default_task(env_id, self.action_names)
        self.describe, self.labels = describe, default_labels(env_id)
        self.win_rule = parse_win_rule(win or default_win_rule(env_id), lambda path: import_function(path, "win"))
        self._index = {" ".join(name.lower().split()): i for i, name in enumerate(self.action_names)}
        self.reward_scale = float(reward_scale)
        self.task_type = task_type or env_id
        self.observation_space = text_space()
        self.action_space = text_space()
        self._text = ""

    def _observe(self, obs: Any) -> str:
        if self.describe is not None:
            self._text = self.describe(obs, self.env)
        elif self.env.render_mode == "ansi":
            self._text = ansi_text(self.env.render())
        else:
            self._text = space_text(obs, self.env.observation_space, self.labels)
        return self._text

    def _info(self, won: bool) -> dict[str, Any]:
        return {"task": self.task, "admissible_commands": list(self.action_names), "won": won,
                "task_type": self.task_type, "winnable": self.win_rule.winnable}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, _ = self.env.reset(seed=seed, options=options)
        return self._observe(obs), self._info(False)

    def step(self, action: str):
        index = self._index.get(" ".join(str(action).lower().split()))
        if index is None:
            return f"{NO_ACTION}\n{self._text}", 0.0, False, False, self._info(False)
        obs, reward, terminated, truncated, _ = self.env.step(index)
        won = self.win_rule.won(float(reward), bool(terminated), bool(truncated), self.env)
        return self._observe(obs), self.reward_scale * float(reward), bool(terminated), bool(truncated), self._info(won)


def check_action_space(env_id: str, space: gym.Space) -> None:
    """Raise ValueError, saying what to do, unless ``space`` is ``Discrete``."""
    if not isinstance(space, gym.spaces.Discrete):
        raise ValueError(
            f"paw/Gymnasium-v0 needs a Discrete action space; {env_id} has {space}. Give it named discrete actions "
            "first: e.g. gymnasium.wrappers.DiscretizeAction(env, bins) for a Box, in a function that you register "
            "as your own id (docs/environments.md, 'Adding an environment')")


def build_env(env_id: str, env_kwargs: dict[str, Any] | None, describe: str | None,
              time_limit: int | None) -> gym.Env:
    """``gymnasium.make`` with the ``ansi`` render requested when the env has one and the text is not ``describe``'s
    (no other render mode is forced); an unknown id or a missing extra is a one-line ValueError."""
    if env_id not in gym.registry:
        raise ValueError(f"unknown Gymnasium id {env_id!r} (gymnasium {gym.__version__}); e.g. CartPole-v1, "
                         "FrozenLake-v1, Taxi-v4, Blackjack-v1, or register yours first")
    kwargs = dict(env_kwargs or {})
    try:
        spec = gym.spec(env_id)
        creator = load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str) else spec.entry_point
        if not describe and "render_mode" not in kwargs and "ansi" in getattr(creator, "metadata", {}).get("render_modes", ()):
            kwargs["render_mode"] = "ansi"
        return gym.make(env_id, max_episode_steps=time_limit, disable_env_checker=True, **kwargs)
    except gym.error.DependencyNotInstalled as err:
        raise ValueError(f"{env_id} needs a package that is not installed: {' '.join(str(err).split())}") from None


def check_kwargs(env_id, env_kwargs=None, action_names=None, task=None, describe=None, time_limit=None,
                 win=None, reward_scale=1.0, **_) -> None:
    """Raise ValueError on anything that would stop the env (unknown id, missing extra, non-Discrete actions,
    wrong action names, a describe or win rule that does not import); the CLI checks configs with it, before
    the model loads. It builds the env once and closes it."""
    describe_fn = import_function(describe) if describe else None
    env = build_env(env_id, env_kwargs, describe, time_limit)
    try:
        DiscreteTextWrapper(env, action_names, task, describe_fn, win, reward_scale, task_type=env_id)
    finally:
        env.close()


def make_gymnasium_text_env(env_id: str, env_kwargs: dict[str, Any] | None = None,
                            action_names: Sequence[str] | None = None, task: str | None = None,
                            describe: str | None = None, time_limit: int | None = None,
                            win: str | None = None, reward_scale: float = 1.0) -> gym.Env:
    """``gymnasium.make(env_id, **env_kwargs)`` wrapped as a text env; only ``env_id`` is needed.

    Args:
        env_id: any registered Gymnasium id with a ``Discrete`` action space, e.g. ``CartPole-v1``.
        env_kwargs: keyword arguments of that env, e.g. ``{"is_slippery": False}``.
        action_names, task, win, reward_scale: ``DiscreteTextWrapper``'s (None: the defaults).
        describe: a function ``(observation, env) -> str`` named as ``"package.module:function"``.
        time_limit: the episode's step limit (``TimeLimit`` inside the wrapper, so the ``survive`` rule sees
            it); None: the id's own. Not ``max_episode_steps``: ``gymnasium.make`` keeps that for itself
            and puts its limit outside the wrapper, where no win rule sees it.
    """
    env = build_env(env_id, env_kwargs, describe, time_limit)
    return DiscreteTextWrapper(env, action_names, task, import_function(describe) if describe else None,
                               win, reward_scale, task_type=env_id)


make_gymnasium_text_env.check_kwargs = check_kwargs
