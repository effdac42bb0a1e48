"""``paw/BabyAI-v0``: the BabyAI levels of ``minigrid`` (AgentGym-RL's and BALROG's grid world) as a text env.

The task is the level's mission (``go to the green ball``); the observation describes the agent's 7x7
partial view in its own frame: each object with its colour and where it is (``2 steps forward and 1
step left``), doors open, closed or locked, the nearest wall ahead, left and right, and what the agent
carries. The actions are ``turn left``, ``turn right``, ``go forward``, ``pick up``, ``drop``, ``toggle``
and ``done``. The reward is minigrid's (1 - 0.9 x steps / the level's step limit on success, else 0);
``won`` when the mission succeeds.

``reset(seed=s)`` plays level ``levels[s % len(levels)]``; the level instance comes from seed
``s`` in the split's own stream (``numpy.random.SeedSequence([split, s])``), so train and validation
draw apart and a seed replays exactly. ``task_type`` is the level. With ``gold_plan: true`` the reset's
``info["plan"]`` holds what minigrid's ``BabyAIBot`` does on a copy of the level (a gold plan for tests
and a scripted baseline; None where the bot gives up, as on ``KeyInBox``).

    env = gymnasium.make("paw/BabyAI-v0", levels=["GoToLocal", "PickupLoc"])
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from paw_lightning.envs.base import NO_ACTION, game_index, text_space

ACTION_NAMES = ("turn left", "turn right", "go forward", "pick up", "drop", "toggle", "done")
SPLITS = ("train", "validation")
INSTALL = "BabyAI needs minigrid: pip install minigrid==3.2.0 (or paw-lightning[babyai])"
DOOR_STATES = ("open", "closed", "locked")
FACING = ("east", "south", "west", "north")
VIEW_X, VIEW_Y = 3, 6  # the agent's cell in minigrid's 7x7 view, which faces toward y = 0


def level_ids() -> dict[str, str]:
    """BabyAI level name -> Gymnasium id (``GoToLocal`` -> ``BabyAI-GoToLocal-v0``); ValueError without minigrid."""
    try:
        import minigrid  # noqa: F401  (registers the BabyAI ids)
    except ImportError:
        raise ValueError(INSTALL) from None
    return {key.removeprefix("BabyAI-").rsplit("-v", 1)[0]: key for key in gym.registry if key.startswith("BabyAI-")}


def steps_text(forward: int, right: int) -> str:
    """``2 steps forward and 1 step left``; ``right`` < 0 is left."""
    parts = [f"{abs(n)} step{'s' if abs(n) != 1 else ''} {word}"
             for n, word in ((forward, "forward"), (right, "right" if right > 0 else "left")) if n]
    return " and ".join(parts) if parts else "here"


def describe_view(image: np.ndarray, direction: int, carrying: Any) -> str:
    """The 7x7 view (minigrid's ``(x, y, [object, colour, state])`` encoding) as text in the agent's frame."""
    from minigrid.core.constants import IDX_TO_COLOR, IDX_TO_OBJECT

    seen = []
    for y in range(VIEW_Y, -1, -1):
        for x in range(image.shape[0]):
            kind, colour, state = (int(v) for v in image[x, y])
            name = IDX_TO_OBJECT[kind]
            if name in ("unseen", "empty", "wall", "floor", "agent") or (x, y) == (VIEW_X, VIEW_Y):
                continue
            what = f"{DOOR_STATES[state]} {IDX_TO_COLOR[colour]} door" if name == "door" else f"{IDX_TO_COLOR[colour]} {name}"
            seen.append(f"a {what} {steps_text(VIEW_Y - y, x - VIEW_X)}")
    walls = []
    for word, cells in (("forward", [(VIEW_X, y) for y in range(VIEW_Y - 1, -1, -1)]),
                        ("left", [(x, VIEW_Y) for x in range(VIEW_X - 1, -1, -1)]),
                        ("right", [(x, VIEW_Y) for x in range(VIEW_X + 1, image.shape[0])])):
        for k, (x, y) in enumerate(cells, 1):
            if IDX_TO_OBJECT[int(image[x, y, 0])] == "wall":
                walls.append(f"{k} step{'s' if k != 1 else ''} {word}")
                break
    held = f"a {carrying.color} {carrying.type}" if carrying is not None else "nothing"
    lines = [f"You face {FACING[direction]}.",
             "You see " + ("; ".join(seen) if seen else "no objects") + ".",
             "The nearest walls: " + (", ".join(walls) if walls else "none in view") + ".",
             f"You carry {held}."]
    return "\n".join(lines)


class BabyAIEnv(gym.Env):
    """BabyAI behind the text-env contract (see envs/base.py and the module doc).

    Args:
        levels: BabyAI level names (``GoToLocal``, ``PickupLoc``, ... as minigrid registers them without
            ``BabyAI-`` and version); an unknown one fails before the model loads, listing the valid ones.
        split: ``train`` for rollouts, ``validation`` in ``val_env_kwargs`` (a separate seed stream).
        gold_plan: put the ``BabyAIBot``'s actions for the level in the reset's ``info["plan"]``.
        reward_scale: multiplies minigrid's reward (e.g. 10 so a quick success returns about 10, as ALFWorld).
    """

    metadata = {"render_modes": []}

    def __init__(self, levels: Sequence[str] = ("GoToLocal",), split: Literal["train", "validation"] = "train",
                 gold_plan: bool = False, reward_scale: float = 1.0) -> None:
        self.check_kwargs(levels, split, gold_plan, reward_scale)
        ids = level_ids()
        self.levels, self.split = list(levels), split
        self.gold_plan, self.reward_scale = gold_plan, float(reward_scale)
        self._envs = {name: gym.make(ids[name], disable_env_checker=True) for name in self.levels}
        self.observation_space = text_space()
        self.action_space = text_space()
        self.env: gym.Env | None = None
        self.level, self._text = "", ""

    @staticmethod
    def check_kwargs(levels, split, gold_plan, reward_scale, **_) -> None:
        """Raise ValueError on an unknown level or split, or without minigrid (checked before the model loads)."""
        if split not in SPLITS:
            raise ValueError(f"unknown BabyAI split {split!r}; choose one of {SPLITS}")
        if isinstance(levels, str) or not levels:
            raise ValueError(f"levels must be a non-empty list of BabyAI level names, got {levels!r}")
        valid = level_ids()
        unknown = [name for name in levels if name not in valid]
        if unknown:
            raise ValueError(f"unknown BabyAI level(s) {unknown}; valid levels: {sorted(valid)}")

    def _observe(self, obs: dict) -> str:
        self._text = describe_view(obs["image"], int(obs["direction"]), self.env.unwrapped.carrying)
        return self._text

    def _info(self, won: bool) -> dict[str, Any]:
        return {"task": self.mission, "admissible_commands": list(ACTION_NAMES), "won": won, "task_type": self.level}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.level = self.levels[game_index(self, len(self.levels), seed, options)]
        level_seed = seed if seed is not None else int(self.np_random.integers(2**31))
        self.env = self._envs[self.level]
        state = np.random.SeedSequence([SPLITS.index(self.split), level_seed]).generate_state(1)[0]
        with contextlib.redirect_stdout(io.StringIO()):  # minigrid prints each rejected level layout
            obs, _ = self.env.reset(seed=int(state))
        self.mission = str(obs["mission"])
        info = self._info(False)
        if self.gold_plan:
            info["plan"] = bot_plan(self.env.unwrapped)
        return self._observe(obs), info

    def step(self, action: str):
        if self.env is None:
            raise RuntimeError("call reset before step")
        command = " ".join(str(action).lower().split())
        if command not in ACTION_NAMES:
            return f"{NO_ACTION}\n{self._text}", 0.0, False, False, self._info(False)
        obs, reward, terminated, truncated, _ = self.env.step(ACTION_NAMES.index(command))
        won = bool(terminated) and reward > 0
        return self._observe(obs), self.reward_scale * float(reward), bool(terminated), bool(truncated), self._info(won)


def bot_plan(level_env: gym.Env) -> list[str] | None:
    """The actions minigrid's ``BabyAIBot`` takes to solve ``level_env`` from its current state, played on a
    copy (the level itself is left as it is); None where the bot gives up (it cannot solve ``KeyInBox``,
    whose key is hidden in a box)."""
    from minigrid.utils.baby_ai_bot import BabyAIBot

    env = copy.deepcopy(level_env)
    bot, plan = BabyAIBot(env), []
    for _ in range(env.max_steps):
        try:
            action = bot.replan()
        except (AssertionError, ValueError, KeyError):
            return None
        plan.append(ACTION_NAMES[int(action)])
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break
    return plan
