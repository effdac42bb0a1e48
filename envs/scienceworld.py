"""ScienceWorld (``scienceworld`` on PyPI, a Scala simulator in a JVM) as a Gymnasium text env.

30 tasks of elementary science (7 topics in the package's labels), each with numbered variations split into train, dev and
test. ``reset(seed=s)`` plays task ``tasks[s % len(tasks)]``, variation ``split[(s // len(tasks)) % n]``
(or ``options={"task": name, "variation": v}``); a (task, variation, simplifications) triple fixes the
world's layout, but the simulator itself is not deterministic for some tasks (docs/environments.md). Each env starts its own JVM on its first reset (2-3 s).

    env = gymnasium.make("paw/ScienceWorld-v0", tasks=["find-living-thing", "boil"], split="dev")
    obs, info = env.reset(seed=0)   # info: task, admissible_commands, won, task_type, task_label, ...
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import gymnasium as gym
import numpy as np

from paw_lightning.envs.base import text_space, tidy_text
from paw_lightning.envs.java import check_java_env, start_simulator

SIMPLIFICATIONS = ("easy", "teleportAction", "selfWateringFlowerPots", "openContainers", "openDoors", "noElectricalAction")


def task_topics() -> dict[str, str]:
    """Every task name -> its topic (``Matter``, ``Biology``, ...), read from the package without a JVM."""
    from scienceworld.constants import TASKS

    return {task["task_name"]: task["topic"] for task in TASKS}


def canonical_text(text: str) -> str:
    """The simulator's text with each block of tab-indented object lines sorted: it lists objects of the
    same name ("a wood cup (containing red paint)", "... blue paint") in an order that changes from one
    reset of the same world to the next, and a replay must read the same."""
    lines, block, out = text.split("\n"), [], []
    for line in lines + [""]:
        if line.startswith("\t"):
            block.append(line)
            continue
        out.extend(sorted(block))
        block = []
        out.append(line)
    return tidy_text("\n".join(out[:-1]))


def check_tasks(tasks: Sequence[str] | None) -> list[str]:
    """The task names to play (None or empty: all 30); ValueError listing the valid names on an unknown one."""
    known = task_topics()
    names = list(tasks or known)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown ScienceWorld task(s) {unknown}; valid tasks: {sorted(known)}")
    return names


# words the simulator's parser takes for a listed verb (gold plans say "examine", the list "look at")
VERB_SYNONYMS = {"examine ": "look at ", "drop ": "put down "}
TERMINAL = re.compile(r"terminal \d+")  # a device's terminal: "terminal 1", "terminal 1 on aluminum foil", ...


def object_containers(tree: dict[str, Any]) -> dict[str, str]:
    """Every object's id -> the id of what holds it, from the simulator's object tree (``getObjectTree``)."""
    containers: dict[str, str] = {}
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in node.get("contents", {}).values():
            containers[child["uuid"]] = node["uuid"]
            stack.append(child)
    return containers


def listed_equivalent(command: str, listed: set[str], combos: list[dict[str, Any]],
                      referents: dict[str, list[str]], containers: dict[str, str]) -> str | None:
    """The listed command the simulator would carry out as ``command``, or None when no listed command does.

    The valid list names each (action, objects) combination once, in one wording; the parser also takes a
    verb's synonyms (``VERB_SYNONYMS``, and ``in`` for ``into``), any referent of an object (``battery anode``
    for ``anode in battery``) and ``<referent> in|on <a referent of what holds it>`` (``thermometer in
    inventory``, ``cup in art studio``, ``organism on reproducing plant``). So: the
    command itself if listed; else a listed command naming the same action and objects as a valid combination
    (``combos``: the simulator's ``action`` / ``obj_ids`` records, whose wording of an object can differ from
    the list's) that reads as ``command`` with its objects named in any of those ways; else,
    for a command naming a device's terminal, the listed one naming the device (the simulator connects its
    next free terminal). ``referents``: object id -> every referent; ``containers``: object id -> holder id.
    """
    if command in listed:
        return command
    for synonym, verb in VERB_SYNONYMS.items():
        if command.startswith(synonym):
            command = verb + command[len(synonym):]
    if command in listed:
        return command
    names: dict[tuple[str, bool], str] = {}  # (object id, whole_device) -> a regex of every way to name it

    def name(obj: str, whole_device: bool) -> str:
        key = (obj, whole_device)
        if key not in names:
            own = referents.get(obj, [])
            if whole_device:  # the device's name may also stand for one of its terminals
                own = own + [r for child, holder in containers.items() if holder == obj
                             for r in referents.get(child, []) if TERMINAL.search(r)]
            holders, up = [], containers.get(obj)
            while up is not None:  # "cup in art studio": any holder up the tree
                holders += referents.get(up, [])
                up = containers.get(up)
            words = set(own) | {f"{r} {at} {h}" for r in own for at in ("in", "on") for h in holders}
            names[key] = "(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + ")"
        return names[key]

    def between(text: str) -> str:  # the words between object names: "pour X into Y" is also "pour X in Y"
        return re.escape(text).replace(r"\ into\ ", r"\ in(?:to)?\ ")

    verb = command.split(" ", 1)[0]
    for whole_device in (False, True):
        matches: set[str] = set()
        for combo in combos:
            action, objects = combo["action"], [str(i) for i in combo["obj_ids"]]
            if not objects or not action.startswith(verb):
                continue
            pattern, rest = "", action
            for obj in objects:  # the action read as text between its object names
                found = re.search(rf"(?<![\w]){name(obj, False)}(?![\w])", rest)
                if found is None:
                    break
                pattern += between(rest[:found.start()]) + name(obj, whole_device)
                rest = rest[found.end():]
            else:
                same = re.compile(pattern + between(rest))
                if same.fullmatch(command):  # the list words this combination its own way (and anew at each call)
                    matches.update(text for text in listed if text.startswith(verb) and same.fullmatch(text))
        if matches:
            return min(matches)  # objects alike in all but id (seeds of one jar): any of them
    return None


class ScienceWorldEnv(gym.Env):
    """ScienceWorld tasks behind the text-env contract (see envs/base.py and the module doc).

    ``info`` adds ``task_type`` (the task name), ``task_label`` (its topic), ``variation``, ``score``
    (0-100) and, with ``gold_plan``, ``gold_plan`` (the simulator's winning command sequence from the start).

    Args:
        tasks: task names to play (default all 30), e.g. ``["find-living-thing", "boil"]``.
        split: the variations to draw from: ``train`` for rollouts, ``dev`` or ``test`` for validation.
        simplifications: comma-separated ScienceWorld simplifications; ``easy`` (all of them) opens doors and
            containers and adds teleport, which shrinks the action list (boil: 115 commands instead of 417).
        reward: ``score`` (the change of the 0-100 score, ScienceWorld's own reward) or ``win`` (``win_reward``
            on the completing step, else 0, like ALFWorld, so ``r_max`` means the same).
        win_reward: reward of the completing step when ``reward: win``.
        step_limit: moves after which the episode is truncated (the collector's ``max_steps`` may end it first).
        keep_commands: list only admissible commands starting with one of these (e.g. ``["teleport to", "focus
            on", "pick up", "move", "look around"]`` for the find-* tasks); None: all. The list reaches 1,000+
            in a furnished room, and the score actor ranks every entry; the game still accepts any text.
        drop_commands: then leave out commands starting with any of these (e.g. ``["close", "look at"]``).
            ``reset task`` is always left out (it restarts the episode's world behind the collector's back);
            a step where the filters leave nothing lists the simulator's whole list (or ``look around``).
        max_commands: list at most this many (0 = all): a random subset, drawn from the reset seed and the
            step number (so a replay lists the same), that may miss the command a step needs.
        gold_plan: put the gold command sequence in ``info["gold_plan"]`` (costs up to a few seconds per new
            variation; for tests and a scripted baseline).
        jvm_heap_mb: maximum heap of this env's JVM (the JVM default takes 2.5 GB; 512 MB is plenty).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        tasks: Sequence[str] | None = None,
        split: str = "train",
        simplifications: str = "easy",
        reward: str = "score",
        win_reward: float = 10.0,
        step_limit: int = 100,
        keep_commands: Sequence[str] | None = None,
        drop_commands: Sequence[str] = (),
        max_commands: int = 0,
        gold_plan: bool = False,
        jvm_heap_mb: int = 512,
    ) -> None:
        self.check_kwargs(tasks, split, simplifications, reward, step_limit, max_commands, jvm_heap_mb)
        self.tasks = check_tasks(tasks)
        self.topics = task_topics()
        self.split, self.simplifications, self.reward_mode = split, simplifications, reward
        self.win_reward, self.step_limit, self.gold_plan = float(win_reward), int(step_limit), gold_plan
        self.keep_commands = tuple(keep_commands) if keep_commands else ("",)
        self.drop_commands = (*drop_commands, "reset task")
        self.max_commands = int(max_commands)
        self.jvm_heap_mb = int(jvm_heap_mb)
        self.observation_space = text_space()
        self.action_space = text_space()
        self._sim = None
        self._variations: dict[str, list[int]] = {}
        self._loaded: tuple[str, int] | None = None
        self._plan: list[str] = []
        self._valid: set[str] = set()  # the simulator's whole list at this step, before the filters
        self._moves, self._draw = 0, 0
        self._won = False

    @staticmethod
    def check_kwargs(tasks, split, simplifications, reward, step_limit, max_commands, jvm_heap_mb, **_) -> None:
        """Raise on a bad argument or a missing Java, without starting a JVM (the CLI checks configs with it)."""
        check_tasks(tasks)
        unknown = [s for s in simplifications.split(",") if s and s not in SIMPLIFICATIONS]
        if unknown:
            raise ValueError(f"unknown ScienceWorld simplification(s) {unknown}; valid: {SIMPLIFICATIONS} (comma-separated)")
        if max_commands < 0:
            raise ValueError(f"max_commands must be >= 0 (0 = all), got {max_commands}")
        check_java_env("ScienceWorld", split, reward, step_limit, jvm_heap_mb)

    def _simulator(self):
        if self._sim is None:
            from scienceworld import ScienceWorldEnv as Simulator

            # the package's own limit ends episodes as "done"; ours truncates, so it is set out of the way
            self._sim = start_simulator(Simulator, self.jvm_heap_mb, taskName="", envStepLimit=10**9)
        return self._sim

    def variations(self, task: str) -> list[int]:
        """The variation numbers of ``task`` in this env's split (asked once per task)."""
        if task not in self._variations:
            server = self._simulator().server
            getter = {"train": server.getVariationsTrain, "dev": server.getVariationsDev, "test": server.getVariationsTest}
            server.load(task, 0, self.simplifications, False)  # the split lists are per loaded task
            self._variations[task] = list(getter[self.split]())
            self._loaded = None
        return self._variations[task]

    def _info(self, sim_info: dict[str, Any], won: bool) -> dict[str, Any]:
        task, variation = self._loaded
        valid = self._valid = set(sim_info["valid"]) - {"reset task"}
        commands = sorted(c for c in valid if c.startswith(self.keep_commands) and not c.startswith(self.drop_commands))
        # the score actor needs a candidate: when the filters leave none, the simulator's own list (or a look)
        commands = commands or sorted(valid) or ["look around"]
        if 0 < self.max_commands < len(commands):
            rng = np.random.default_rng([self._draw, self._moves])
            commands = [commands[i] for i in sorted(rng.choice(len(commands), self.max_commands, replace=False))]
        info = {"task": self._task, "admissible_commands": commands, "won": won, "task_type": task,
                "task_label": self.topics[task], "variation": variation, "score": int(sim_info["score"])}
        if self.gold_plan:
            info["gold_plan"] = list(self._plan)
        return info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        draw = self._draw = seed if seed is not None else int(self.np_random.integers(2**31))
        task = options.get("task", self.tasks[draw % len(self.tasks)])
        variations = self.variations(check_tasks([task])[0])
        variation = int(options.get("variation", variations[(draw // len(self.tasks)) % len(variations)]))
        sim = self._simulator()
        if self._loaded != (task, variation):
            sim.load(task, variation, self.simplifications, generateGoldPath=self.gold_plan)
            self._loaded = (task, variation)
            self._plan = sim.get_gold_action_sequence() if self.gold_plan else []
        obs, sim_info = sim.reset()
        self._task, self._moves, self._won = tidy_text(sim.get_task_description()), 0, False
        return canonical_text(obs), self._info(sim_info, won=False)

    def step(self, action: str):
        if self._loaded is None:
            raise RuntimeError("call reset() before step()")
        obs, score_change, done, sim_info = self._sim.step(action)
        self._moves += 1
        won = bool(self._sim.server.getCompleted())
        if self.reward_mode == "score":
            reward = float(score_change)
        else:
            reward = self.win_reward if won and not self._won else 0.0
        self._won = won
        truncated = not done and self._moves >= self.step_limit
        return canonical_text(obs), reward, bool(done), truncated, self._info(sim_info, won)

    def listed_equivalent(self, command: str) -> str | None:
        """The command of the simulator's whole valid list at this step (before ``keep_commands``, ``drop_commands``
        and ``max_commands``) that does what ``command`` does, None when none does (see ``listed_equivalent``):
        how a gold plan, written in the simulator's free wording, is played through listed commands only."""
        if self._loaded is None:
            raise RuntimeError("call reset() before listed_equivalent()")
        if command in self._valid:
            return command
        sim = self._sim
        referents = {obj: entry["referents"] for obj, entry in sim.get_all_object_ids_types_referents_LUTJSON().items()}
        for obj, unique in sim.get_possible_object_referent_LUT().items():  # the list's own names of visible objects
            referents[obj] = [*referents.get(obj, []), unique]
        return listed_equivalent(command, self._valid, sim.get_valid_action_object_combinations_with_templates(),
                                 referents, object_containers(sim.getObjectTree()))

    def close(self) -> None:
        sim, self._sim, self._loaded = self._sim, None, None  # forgotten first: a JVM that fails to stop is gone anyway
        if sim is not None:
            sim.close()
