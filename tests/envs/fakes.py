"""A tiny deterministic text env for tests: say "go" ``goal`` times to win; it can crash on demand."""

from __future__ import annotations

import gymnasium as gym

from paw_lightning.envs.base import text_space

CRASHES = {"left": 0}  # how many more step() calls should raise, shared by every instance


class CorridorEnv(gym.Env):
    """Walk a corridor: "go" moves forward, "wait" does nothing; reaching the end wins 10."""

    def __init__(self, goal: int = 2, free_text: bool = False) -> None:
        self.goal = goal
        self.free_text = free_text
        self.observation_space = text_space()
        self.action_space = text_space()
        self.position = 0
        self.seed_used = None

    def _info(self, won=False):
        return {
            "task": f"reach the end of corridor {self.seed_used}",
            "admissible_commands": None if self.free_text else ["go", "wait"],
            "won": won,
            "task_type": "corridor",
        }

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.seed_used = seed
        self.position = 0
        return f"You stand in corridor {seed} at position 0.", self._info()

    def step(self, action: str):
        if CRASHES["left"] > 0:
            CRASHES["left"] -= 1
            raise RuntimeError("the game engine died")
        if action.strip() == "go":
            self.position += 1
        won = self.position >= self.goal
        return f"You are at position {self.position}.", 10.0 if won else 0.0, won, False, self._info(won)


if "paw-test/Corridor-v0" not in gym.registry:
    gym.register(id="paw-test/Corridor-v0", entry_point=CorridorEnv)
