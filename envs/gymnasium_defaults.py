"""What ``paw/Gymnasium-v0`` fills in when a config names only ``env_id``: action names, task text,
observation labels, and the win rule, known for Gymnasium's own Discrete-action envs (else generic ones).

Win rules (the ``win`` option of envs/wrappers.py), checked on every step of the wrapped env:

- ``survive``: won when the episode is truncated (the time limit) without having terminated (CartPole:
  every fall is a termination, so only surviving to the limit is a success);
- ``terminate``: won on any termination (MountainCar, Acrobot, CliffWalking: the env ends only at the goal);
- ``reward>X`` / ``reward>=X``: won when the episode terminates on a step whose reward (before
  ``reward_scale``) is above / at least X (Blackjack: ``reward>0``, a loss is -1 and a draw 0);
- ``none``: the env has no win, only a return; ``won`` stays False and ``info["winnable"]`` is False, so the
  success-rate metrics leave its episodes out instead of logging 0 as if it meant something;
- ``package.module:function``: your rule, ``function(reward, terminated, truncated, env) -> bool``.

An env without a known rule gets ``none``: the default never calls a failure a win.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

ACTION_NAMES: dict[str, list[str]] = {
    "CartPole": ["push cart left", "push cart right"],
    "MountainCar": ["accelerate left", "do not accelerate", "accelerate right"],
    "Acrobot": ["apply torque -1", "apply no torque", "apply torque +1"],
    "Blackjack": ["stick", "hit"],
    "FrozenLake": ["left", "down", "right", "up"],
    "FrozenLake8x8": ["left", "down", "right", "up"],
    "CliffWalking": ["up", "right", "down", "left"],
    "CliffWalkingSlippery": ["up", "right", "down", "left"],
    "Taxi": ["south", "north", "east", "west", "pick up", "drop off"],
    "LunarLander": ["do nothing", "fire left engine", "fire main engine", "fire right engine"],
}

TASKS: dict[str, str] = {
    "CartPole": "Keep the pole on the cart upright by pushing the cart left or right, for as many steps as you can; "
                "the episode is lost when the pole tilts past 12 degrees or the cart leaves the track.",
    "MountainCar": "Drive the car up the right hill to the flag at position 0.5. The engine is too weak to climb "
                   "straight up: rock back and forth to build momentum. Every step costs 1.",
    "Acrobot": "Swing the free end of the two-link pendulum up above the height of the bar (one link length) "
               "by applying torque at the joint between the links. Every step costs 1.",
    "Blackjack": "Play a hand of Blackjack against the dealer: hit to draw a card, stick to stop. Get closer to 21 "
                 "than the dealer without going over.",
    "FrozenLake": "Walk on the frozen lake from S to the goal G without falling into a hole H. F is frozen ice.",
    "FrozenLake8x8": "Walk on the frozen lake from S to the goal G without falling into a hole H. F is frozen ice.",
    "CliffWalking": "Walk from the start x to the goal T without stepping off the cliff C. Every step costs 1.",
    "CliffWalkingSlippery": "Walk from the start x to the goal T without stepping off the cliff C. Every step costs 1.",
    "Taxi": "Drive the taxi to the passenger, pick them up, drive to the destination and drop them off.",
    "LunarLander": "Land the lander gently on the pad between the two flags, firing its engines.",
}

OBSERVATION_LABELS: dict[str, list[str]] = {
    "CartPole": ["cart position", "cart velocity", "pole angle (radians)", "pole angular velocity"],
    "MountainCar": ["car position", "car velocity"],
    "Acrobot": ["cos(angle of link 1)", "sin(angle of link 1)", "cos(angle of link 2 to link 1)",
                "sin(angle of link 2 to link 1)", "angular velocity of link 1", "angular velocity of link 2"],
    "Blackjack": ["your hand's sum", "the dealer's showing card (1 = ace)", "you hold a usable ace (1 = yes)"],
    "LunarLander": ["x position", "y position", "x velocity", "y velocity", "angle", "angular velocity",
                    "left leg touches ground (1 = yes)", "right leg touches ground (1 = yes)"],
}

WIN_RULES: dict[str, str] = {
    "CartPole": "survive", "MountainCar": "terminate", "Acrobot": "terminate", "Blackjack": "reward>0",
    "FrozenLake": "reward>0", "FrozenLake8x8": "reward>0", "CliffWalking": "terminate",
    "CliffWalkingSlippery": "terminate", "Taxi": "reward>0", "LunarLander": "reward>0",
}

RULE_FORMS = "survive, terminate, reward>X, reward>=X, none, or 'package.module:function'"
_REWARD_RULE = re.compile(r"^reward\s*(>=|>)\s*(-?[0-9.]+(?:e-?[0-9]+)?)$")


def family(env_id: str) -> str:
    """The table key of a Gymnasium id: its name without namespace and version (``CartPole-v1`` -> ``CartPole``)."""
    return env_id.rsplit("/", 1)[-1].rsplit("-v", 1)[0]


def default_action_names(env_id: str, env: gym.Env) -> list[str]:
    """The env's own action meanings (ALE's ``get_action_meanings``), the table's, else ``action 0..n-1``."""
    n = env.action_space.n
    meanings = getattr(env.unwrapped, "get_action_meanings", None)
    if callable(meanings):
        names = [str(m).lower().replace("_", " ") for m in meanings()]
        if len(names) == n:
            return names
    names = ACTION_NAMES.get(family(env_id))
    return list(names) if names and len(names) == n else [f"action {i}" for i in range(n)]


def default_task(env_id: str, action_names: list[str]) -> str:
    """The table's goal text, else a generic one that names the env and asks for return."""
    return TASKS.get(family(env_id)) or (f"Play the Gymnasium environment {env_id}: choose one of the actions "
                                         f"({', '.join(action_names)}) each step to collect as much reward as you can.")


def default_labels(env_id: str) -> list[str] | None:
    """Names of the observation's values, where known."""
    return OBSERVATION_LABELS.get(family(env_id))


def default_win_rule(env_id: str) -> str:
    """The table's rule for Gymnasium's own envs, else ``none``."""
    return WIN_RULES.get(family(env_id), "none")


@dataclass(frozen=True)
class WinRule:
    """A parsed win rule (see the module doc)."""

    kind: str  # survive | terminate | reward | none | custom
    threshold: float = 0.0
    inclusive: bool = False  # reward>=X (True) or reward>X (False)
    function: Callable | None = None

    @property
    def winnable(self) -> bool:
        return self.kind != "none"

    def won(self, reward: float, terminated: bool, truncated: bool, env: Any) -> bool:
        if self.kind == "survive":
            return bool(truncated) and not terminated
        if self.kind == "terminate":
            return bool(terminated)
        if self.kind == "reward":
            return bool(terminated) and (reward >= self.threshold if self.inclusive else reward > self.threshold)
        if self.kind == "custom":
            return bool(self.function(reward, terminated, truncated, env))
        return False


def parse_win_rule(rule: str, import_function: Callable[[str], Callable]) -> WinRule:
    """The ``WinRule`` that ``rule`` names; ValueError with the valid forms when it names none."""
    text = str(rule).strip()
    if text in ("survive", "terminate", "none"):
        return WinRule(text)
    match = _REWARD_RULE.match(text)
    if match:
        return WinRule("reward", float(match.group(2)), inclusive=match.group(1) == ">=")
    if ":" in text:
        return WinRule("custom", function=import_function(text))
    raise ValueError(f"unknown win rule {rule!r}; give one of {RULE_FORMS}")
