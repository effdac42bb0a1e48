"""``paw/Sokoban-v0``: push every box onto a target, RAGEN's headline puzzle, as a text env.

Rooms come from our own generator (envs/sokoban_rooms.py: reverse play from a solved room, so every room
is solvable and carries its plan). ``reset(seed=s)`` builds the room of seed ``s`` in the split's own
stream (``numpy.random.default_rng([split, s])``), so the same seed gives the same room, and train and
validation seeds draw from separate streams. The observation is the grid as text (legend in the task);
the actions are ``up``, ``down``, ``left``, ``right``.

Reward, as RAGEN's (gym-sokoban's) shaping: -0.1 a step, +1 for a box pushed onto a target, -1 for one
pushed off, +10 when the last box is on its target (the episode ends there, ``won``). ``info`` holds
``task``, ``admissible_commands``, ``won``, ``task_type`` (``sokoban``), ``task_label`` (e.g. ``6x6, 1 box``),
``boxes_on_targets`` and, at reset, ``plan``: moves that solve the room (a gold plan for tests and a
scripted baseline; not the shortest).

    env = gymnasium.make("paw/Sokoban-v0", size=6, num_boxes=1)
"""

from __future__ import annotations

from typing import Any, Literal

import gymnasium as gym
import numpy as np

from paw_lightning.envs.base import NO_ACTION, text_space
from paw_lightning.envs.sokoban_rooms import (DIRECTIONS, LEGEND, MAX_SIZE, MIN_SIZE, Room, generate_room, max_boxes,
                                              render, step)

SPLITS = ("train", "validation")
STEP_REWARD, BOX_ON_REWARD, BOX_OFF_REWARD, SOLVED_REWARD = -0.1, 1.0, -1.0, 10.0


class SokobanEnv(gym.Env):
    """Sokoban behind the text-env contract (see envs/base.py and the module doc).

    Args:
        size: the room's side, walls included, 5..12 (RAGEN: 6).
        num_boxes: boxes and targets, 1..(size - 2)**2 // 4 (RAGEN: 1).
        split: ``train`` for rollouts, ``validation`` in ``val_env_kwargs`` (a separate stream of rooms).
        reverse_steps: moves of the generator's reverse walks (more: boxes further from targets, harder rooms).
        step_limit: steps before the episode is truncated.
    """

    metadata = {"render_modes": []}

    def __init__(self, size: int = 6, num_boxes: int = 1, split: Literal["train", "validation"] = "train",
                 reverse_steps: int = 100, step_limit: int = 100) -> None:
        self.check_kwargs(size, num_boxes, split, reverse_steps, step_limit)
        self.size, self.num_boxes, self.split = size, num_boxes, split
        self.reverse_steps, self.step_limit = reverse_steps, step_limit
        self.observation_space = text_space()
        self.action_space = text_space()
        self.task = (f"Push every box onto a target: walk with up, down, left or right; walking into a box pushes it "
                     f"one cell, if the cell beyond it is free floor. Boxes cannot be pulled. Map legend: {LEGEND}.")
        self.room: Room | None = None
        self._steps = 0

    @staticmethod
    def check_kwargs(size, num_boxes, split, reverse_steps, step_limit, **_) -> None:
        """Raise ValueError, with the valid choices, on a room that cannot be built (checked before the model loads)."""
        if split not in SPLITS:
            raise ValueError(f"unknown Sokoban split {split!r}; choose one of {SPLITS}")
        if not MIN_SIZE <= size <= MAX_SIZE:
            raise ValueError(f"Sokoban size must be {MIN_SIZE}..{MAX_SIZE} (walls included), got {size}")
        if not 1 <= num_boxes <= max_boxes(size):
            raise ValueError(f"a {size}x{size} Sokoban room holds 1..{max_boxes(size)} boxes, got num_boxes={num_boxes}; "
                             "use fewer boxes or a larger size")
        if reverse_steps < 1 or step_limit < 1:
            raise ValueError(f"reverse_steps and step_limit must be >= 1, got {reverse_steps} and {step_limit}")

    def _observe(self) -> str:
        on = len(self.room.boxes & self.room.targets)
        return f"{render(self.room)}\nBoxes on targets: {on} of {self.num_boxes}."

    def _info(self, won: bool) -> dict[str, Any]:
        label = f"{self.size}x{self.size}, {self.num_boxes} box{'es' if self.num_boxes > 1 else ''}"
        return {"task": self.task, "admissible_commands": list(DIRECTIONS), "won": won, "task_type": "sokoban",
                "task_label": label, "boxes_on_targets": len(self.room.boxes & self.room.targets)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        room_seed = seed if seed is not None else int(self.np_random.integers(2**31))
        rng = np.random.default_rng([SPLITS.index(self.split), room_seed])
        self.room = generate_room(self.size, self.num_boxes, rng, self.reverse_steps)
        self._steps = 0
        return self._observe(), self._info(False) | {"plan": list(self.room.plan)}

    def step(self, action: str):
        if self.room is None:
            raise RuntimeError("call reset before step")
        move = " ".join(str(action).lower().split())
        if move not in DIRECTIONS:
            return f"{NO_ACTION}\n{self._observe()}", 0.0, False, False, self._info(False)
        self._steps += 1
        before = self.room.player, self.room.boxes
        self.room, change = step(self.room, move)
        won = self.room.solved()
        reward = STEP_REWARD + (BOX_ON_REWARD if change > 0 else BOX_OFF_REWARD if change < 0 else 0.0)
        reward += SOLVED_REWARD if won else 0.0
        text = self._observe()
        if (self.room.player, self.room.boxes) == before:
            text = f"You cannot move {move}: a wall or a box that cannot move is in the way.\n{text}"
        truncated = not won and self._steps >= self.step_limit
        return text, reward, won, truncated, self._info(won)
