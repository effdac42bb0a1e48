"""The text-environment contract that every paw-lightning environment follows.

A text env is a ``gymnasium.Env`` whose observations and actions are strings:

- ``reset(seed=..., options=...) -> (obs, info)``; the same seed gives the same initial state.
- ``step(action) -> (obs, reward, terminated, truncated, info)`` with a per-step (not cumulative) reward.
- ``info`` holds ``task`` (goal text), ``admissible_commands`` (list of str, or None when only free
  text works), ``won`` (bool) and optionally ``task_type`` (str) and ``task_label`` (a short name; per-type
  metrics use ``task_label`` when present, else ``task_type``).

``check_text_env_step`` validates one step's output, so a new environment can be tested against the
contract in one line (see tests/envs/test_base.py).
"""

from __future__ import annotations

import re
import string
from typing import Any

import gymnasium as gym

TEXT_SPACE_MAX_LENGTH = 100_000
TEXT_CHARSET = frozenset(string.printable) | frozenset("\u2019\u2018\u201c\u201d\u2014\u2013")
REQUIRED_INFO_KEYS = ("task", "admissible_commands", "won")
NO_ACTION = "Nothing happens: that is not one of the actions."  # the observation after text that names no action


def text_space() -> gym.spaces.Text:
    """A Text space wide enough for any observation or command of a text game."""
    return gym.spaces.Text(max_length=TEXT_SPACE_MAX_LENGTH, min_length=0, charset=TEXT_CHARSET)


def tidy_text(text: str) -> str:
    """Collapse runs of spaces and blank lines that game engines emit around their output."""
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" ?\n ?", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def game_index(env: gym.Env, count: int, seed: int | None, options: dict[str, Any] | None) -> int:
    """Which of ``count`` games a reset plays: ``options["game_index"]``, else ``seed % count``, else a
    draw from the env's RNG (call after ``gym.Env.reset`` has seeded it)."""
    if options and "game_index" in options:
        return int(options["game_index"]) % count
    if seed is not None:
        return seed % count
    return int(env.np_random.integers(count))


def check_info(info: dict[str, Any]) -> None:
    """Raise ValueError when ``info`` lacks a key of the text-env contract."""
    missing = [key for key in REQUIRED_INFO_KEYS if key not in info]
    if missing:
        raise ValueError(
            f"text env info is missing {missing}; a paw text env must return {list(REQUIRED_INFO_KEYS)} "
            "in every info dict (see envs/base.py)"
        )
    commands = info["admissible_commands"]
    if commands is not None and not all(isinstance(c, str) for c in commands):
        raise ValueError("info['admissible_commands'] must be a list of str or None")


def check_text_env_step(result: tuple) -> None:
    """Raise ValueError when a ``step`` result breaks the Gymnasium 5-tuple text contract."""
    if len(result) != 5:
        raise ValueError(f"step must return (obs, reward, terminated, truncated, info), got {len(result)} items")
    obs, reward, terminated, truncated, info = result
    if not isinstance(obs, str):
        raise ValueError(f"observation must be str, got {type(obs).__name__}")
    if not isinstance(reward, (int, float)):
        raise ValueError(f"reward must be a number, got {type(reward).__name__}")
    if not isinstance(terminated, bool) or not isinstance(truncated, bool):
        raise ValueError("terminated and truncated must be bool")
    check_info(info)
