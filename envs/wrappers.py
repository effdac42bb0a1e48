"""Any Gymnasium env with ``Discrete`` actions as a text env (the design card's "extend envs via wrappers").

``DiscreteTextWrapper`` names the actions (admissible commands = all names), writes each observation as
text (the env's ``ansi`` render, or a function of the observation), reports ``won`` from a rule, and
turns text that names no action into a no-op (the collector adds the invalid-action penalty).
``paw/Gymnasium-v0`` builds one straight from ``gymnasium.make``, so a config can name any registered id:

    env = gymnasium.make("paw/Gymnasium-v0", env_id="FrozenLake-v1", env_kwargs={"is_slippery": False},
                         action_names=["left", "down", "right", "up"], task="Reach the goal G.",
                         describe="paw_lightning.envs.wrappers:frozen_lake_text", win_threshold=1.0)
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym

from paw_lightning.envs.base import text_space

ANSI_SPAN = re.compile(r"\x1b\[[0-9;]*m(.*?)\x1b\[0m", re.DOTALL)
ANSI_CODE = re.compile(r"\x1b\[[0-9;]*m")
NO_ACTION = "Nothing happens: that is not one of the actions."


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


def import_function(path: str) -> Callable:
    """The function named ``"package.module:function"``."""
    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"cannot import describe={path!r} ({err}); give it as 'package.module:function'") from None


class DiscreteTextWrapper(gym.Wrapper):
    """A ``Discrete``-action env behind the text-env contract (see envs/base.py and the module doc).

    Args:
        env: the env; ``render_mode="ansi"`` unless ``describe`` is given.
        action_names: one command per action index, e.g. ``["left", "down", "right", "up"]``.
        task: the goal text (``info["task"]``).
        describe: ``(observation, env) -> str``; None: the env's ``ansi`` render (``ansi_text``).
        win_threshold: won = the episode terminated on a step with reward >= this; None: any termination.
        reward_scale: multiplies the env's reward (e.g. 10 so that a won FrozenLake returns 10, as ALFWorld).
        task_type: ``info["task_type"]`` (default: the env's id).
    """

    def __init__(self, env: gym.Env, action_names: Sequence[str], task: str, describe: Callable | None = None,
                 win_threshold: float | None = None, reward_scale: float = 1.0, task_type: str | None = None) -> None:
        super().__init__(env)
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise ValueError(f"DiscreteTextWrapper needs a Discrete action space, got {env.action_space}")
        if len(action_names) != env.action_space.n or len(set(action_names)) != len(action_names):
            raise ValueError(f"give {env.action_space.n} distinct action_names, one per action; got {list(action_names)}")
        if describe is None and env.render_mode != "ansi":
            raise ValueError("without describe, the env must render text: make it with render_mode='ansi'")
        self.action_names, self.task, self.describe = list(action_names), task, describe
        self._index = {" ".join(name.lower().split()): i for i, name in enumerate(action_names)}
        self.win_threshold, self.reward_scale = win_threshold, float(reward_scale)
        self.task_type = task_type or (env.spec.id if env.spec else type(env.unwrapped).__name__)
        self.observation_space = text_space()
        self.action_space = text_space()
        self._text = ""

    def _observe(self, obs: Any) -> str:
        self._text = self.describe(obs, self.env) if self.describe else ansi_text(self.env.render())
        return self._text

    def _info(self, won: bool) -> dict[str, Any]:
        return {"task": self.task, "admissible_commands": list(self.action_names), "won": won, "task_type": self.task_type}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, _ = self.env.reset(seed=seed, options=options)
        return self._observe(obs), self._info(False)

    def step(self, action: str):
        index = self._index.get(" ".join(str(action).lower().split()))
        if index is None:
            return f"{NO_ACTION}\n{self._text}", 0.0, False, False, self._info(False)
        obs, reward, terminated, truncated, _ = self.env.step(index)
        won = bool(terminated) and (self.win_threshold is None or reward >= self.win_threshold)
        return self._observe(obs), self.reward_scale * float(reward), bool(terminated), bool(truncated), self._info(won)


def check_kwargs(env_id, action_names, task, env_kwargs=None, describe=None, **_) -> None:
    """Raise ValueError on an unknown Gymnasium id or a describe function that does not import (the CLI
    checks configs with it, before the model loads)."""
    if env_id not in gym.registry:
        raise ValueError(f"unknown Gymnasium id {env_id!r} (gymnasium {gym.__version__}); e.g. FrozenLake-v1, "
                         "CliffWalking-v1, Taxi-v4, or register yours first")
    if describe:
        import_function(describe)


def make_gymnasium_text_env(env_id: str, action_names: Sequence[str], task: str, env_kwargs: dict[str, Any] | None = None,
                            describe: str | None = None, max_episode_steps: int | None = None,
                            win_threshold: float | None = None, reward_scale: float = 1.0) -> gym.Env:
    """``gymnasium.make(env_id, **env_kwargs)`` (with ``TimeLimit(max_episode_steps)`` when given) wrapped
    as a text env; ``describe`` names a function as ``"package.module:function"``, else the ansi render is used.
    The other arguments are ``DiscreteTextWrapper``'s."""
    check_kwargs(env_id, action_names, task, env_kwargs, describe)
    kwargs = dict(env_kwargs or {})
    if not describe:
        kwargs.setdefault("render_mode", "ansi")
    env = gym.make(env_id, max_episode_steps=max_episode_steps, disable_env_checker=True, **kwargs)
    return DiscreteTextWrapper(env, action_names, task, import_function(describe) if describe else None,
                               win_threshold, reward_scale, task_type=env_id)


make_gymnasium_text_env.check_kwargs = check_kwargs
