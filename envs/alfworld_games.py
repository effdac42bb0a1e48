"""Offline generator of ALFWorld-format games for the six ALFWorld task types.

The official ALFWorld games are a download this library cannot rely on (tests, CI, air-gapped machines).
This module writes games in the same on-disk layout that ``alfworld-download`` produces::

    <out>/json_2.1.1/<split>/<task_type>-<Object>-None-<Target>-<scene>/trial_T<seed>_<index>/
        traj_data.json       task_type and pddl_params, as ALFRED's traj_data
        initial_state.pddl   the PDDL problem
        game.tw-pddl         {pddl_domain, grammar, pddl_problem, solvable, walkthrough}

Problems are built on the ``alfred.pddl`` domain and ``alfred.twl2`` grammar shipped in the alfworld
wheel, with ALFRED's object/receptacle compatibility and object properties (``alfworld.gen.constants``)
and its goal formulas and task phrasings (``alfworld.gen.goal_library``). A seed decides the room type, the
receptacles, the target objects, the distractors and the goal. A game is kept only when the Fast Downward
planner that ALFWorld's TextWorld engine uses finds a plan and that plan wins the game; the plan is stored
as the walkthrough.

Splits follow ALFRED: ``train`` and ``valid_seen`` use the same room layouts (scene numbers 1-20 of each
room type) with fresh object placements and goals; ``valid_unseen`` uses held-out layouts (21-30).

    paw-alfworld-games --out $ALFWORLD_DATA --games-per-type 4 --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
SPLIT_FOLDERS = ("train", "valid_seen", "valid_unseen")
DATA_VERSION = "json_2.1.1"
# ALFRED's floor-plan numbering: kitchens 1-30, living rooms 201-230, bedrooms 301-330, bathrooms 401-430.
SCENE_BASE = {"Kitchen": 0, "LivingRoom": 200, "Bedroom": 300, "Bathroom": 400}
SEEN_SCENES = range(1, 21)
UNSEEN_SCENES = range(21, 31)
MAX_ATTEMPTS = 20
ROOM_SIZES = ("full", "small")
DISTRACTORS = {"full": (3, 8), "small": (1, 3)}

# Receptacle types of each room with (min, max) counts; receptacle objects (bowls, mugs, pans...) are
# treated as plain objects, as ALFWorld skips the movable-receptacle tasks.
ROOM_RECEPTACLES = {
    "Kitchen": {"Cabinet": (2, 6), "CounterTop": (1, 2), "Drawer": (1, 4), "Fridge": (1, 1), "Microwave": (1, 1),
                "SinkBasin": (1, 1), "StoveBurner": (2, 4), "GarbageCan": (1, 1), "CoffeeMachine": (1, 1),
                "DiningTable": (0, 1), "Shelf": (0, 2), "Toaster": (0, 1)},
    "LivingRoom": {"Sofa": (1, 1), "ArmChair": (0, 2), "CoffeeTable": (1, 1), "SideTable": (1, 2), "TVStand": (0, 1),
                   "Drawer": (0, 3), "Shelf": (0, 3), "Cabinet": (0, 2), "DiningTable": (0, 1), "GarbageCan": (1, 1),
                   "Dresser": (0, 1), "Ottoman": (0, 1)},
    "Bedroom": {"Bed": (1, 1), "Desk": (0, 1), "Dresser": (0, 1), "SideTable": (1, 2), "Drawer": (1, 4),
                "Shelf": (0, 3), "GarbageCan": (1, 1), "LaundryHamper": (0, 1), "Safe": (0, 1), "ArmChair": (0, 1)},
    "Bathroom": {"Toilet": (1, 1), "SinkBasin": (1, 2), "BathtubBasin": (0, 1), "Cabinet": (1, 4), "CounterTop": (1, 1),
                 "Drawer": (0, 3), "GarbageCan": (1, 1), "HandTowelHolder": (0, 1), "TowelHolder": (0, 1),
                 "ToiletPaperHanger": (1, 1), "Shelf": (0, 2)},
}
ROOM_OBJECTS = {
    "Kitchen": ["Apple", "Bowl", "Bread", "ButterKnife", "Cup", "DishSponge", "Egg", "Fork", "Kettle", "Knife",
                "Ladle", "Lettuce", "Mug", "Pan", "PepperShaker", "Plate", "Pot", "Potato", "SaltShaker",
                "SoapBottle", "Spatula", "Spoon", "Tomato", "WineBottle"],
    "LivingRoom": ["Book", "Box", "Candle", "CellPhone", "CreditCard", "KeyChain", "Laptop", "Newspaper", "Pillow",
                   "RemoteControl", "Statue", "Vase", "Watch", "WateringCan"],
    "Bedroom": ["AlarmClock", "BaseballBat", "BasketBall", "Book", "Bowl", "CD", "CellPhone", "Cloth", "CreditCard",
                "KeyChain", "Laptop", "Mug", "Pen", "Pencil", "Pillow", "TeddyBear", "TennisRacket"],
    "Bathroom": ["Candle", "Cloth", "DishSponge", "HandTowel", "Plunger", "ScrubBrush", "SoapBar", "SoapBottle",
                 "SprayBottle", "ToiletPaper", "Towel"],
}
LAMP = "DeskLamp"
LAMP_RECEPTACLES = ("Desk", "SideTable", "Dresser")
# The receptacle that performs each state change; it is never the goal's target receptacle.
ACTION_RECEPTACLE = {"pick_clean_then_place_in_recep": "SinkBasin", "pick_heat_then_place_in_recep": "Microwave",
                     "pick_cool_then_place_in_recep": "Fridge"}
ACTION_PROPERTY = {"pick_clean_then_place_in_recep": "Cleanable", "pick_heat_then_place_in_recep": "Heatable",
                   "pick_cool_then_place_in_recep": "Coolable"}
# Types the domain names in its action preconditions; every problem declares them.
DOMAIN_TYPES = ("SinkBasinType - rtype", "MicrowaveType - rtype", "FridgeType - rtype", "KnifeType - otype",
                "ButterKnifeType - otype")


def _constants():
    import alfworld.gen.constants as constants

    return constants


def _mangle(kind: str, rng: random.Random, taken: set[str]) -> str:
    """An ALFRED-style id such as ``Apple_bar__plus_01_dot_23_bar__plus_00_dot_90_bar__minus_02_dot_10``."""
    while True:
        parts = []
        for _ in range(3):
            value = rng.randint(-399, 399)
            sign = "_plus_" if value >= 0 else "_minus_"
            parts.append(f"{sign}{abs(value) // 100:02d}_dot_{abs(value) % 100:02d}")
        name = kind + "".join(f"_bar_{p}" for p in parts)
        if kind == "SinkBasin":
            name = "Sink" + "".join(f"_bar_{p}" for p in parts) + "_bar_SinkBasin"
        elif kind == "BathtubBasin":
            name = "Bathtub" + "".join(f"_bar_{p}" for p in parts) + "_bar_BathtubBasin"
        if name not in taken:
            taken.add(name)
            return name


@dataclass
class Layout:
    """A room's fixed furniture: receptacle ids by type, each at its own location."""

    room: str
    scene: int
    receptacles: list[tuple[str, str, str]] = field(default_factory=list)  # (type, id, location)

    def of_type(self, kind: str) -> list[tuple[str, str, str]]:
        return [r for r in self.receptacles if r[0] == kind]

    @property
    def types(self) -> set[str]:
        return {r[0] for r in self.receptacles}


def make_layout(seed: int, room: str, scene: int, room_size: str = "full") -> Layout:
    """The receptacles of one scene; the same (seed, room, scene, room_size) always gives the same layout.

    ``full`` draws each receptacle type's count from its range (like ALFRED's rooms, 8-25 receptacles);
    ``small`` keeps one of each type a room always has (4-9 receptacles), for quick CPU experiments.
    """
    if room_size not in ROOM_SIZES:
        raise ValueError(f"unknown room_size {room_size!r}; choose one of {ROOM_SIZES}")
    rng = random.Random(f"layout:{seed}:{room}:{scene}" + ("" if room_size == "full" else f":{room_size}"))
    layout = Layout(room, SCENE_BASE[room] + scene)
    taken: set[str] = set()
    for index, (kind, (low, high)) in enumerate(sorted(ROOM_RECEPTACLES[room].items())):
        count = rng.randint(low, high) if room_size == "full" else min(low, 1)
        for copy in range(count):
            location = f"loc_bar_{index}_bar_{copy}_bar_{rng.choice((0, 1, 2, 3))}_bar_{rng.choice((0, 30, 60))}"
            layout.receptacles.append((kind, _mangle(kind, rng, taken), location))
    if room in ("Bedroom", "LivingRoom") and not any(layout.of_type(k) for k in LAMP_RECEPTACLES):
        layout.receptacles.append(("SideTable", _mangle("SideTable", rng, taken), "loc_bar_99_bar_0_bar_0_bar_0"))
    return layout


def can_contain(receptacle: str, obj: str) -> bool:
    return obj in _constants().VAL_RECEPTACLE_OBJECTS.get(receptacle, ())


@dataclass
class GameDraft:
    """One sampled game before it is written: the task, the placed objects, the PDDL problem."""

    task_type: str
    layout: Layout
    object_target: str
    parent_target: str
    toggle_target: str
    objects: list[tuple[str, str, str]]  # (type, id, receptacle id)
    task_desc: str

    @property
    def folder_name(self) -> str:
        target = self.toggle_target if self.task_type == "look_at_obj_in_light" else self.parent_target
        return f"{self.task_type}-{self.object_target}-None-{target}-{self.layout.scene}"

    def traj_data(self, trial: str) -> dict:
        return {
            "task_id": trial,
            "task_type": self.task_type,
            "pddl_params": {"object_target": self.object_target, "parent_target": self.parent_target,
                            "toggle_target": self.toggle_target, "mrecep_target": "", "object_sliced": False},
            "scene": {"floor_plan": f"FloorPlan{self.layout.scene}", "scene_num": self.layout.scene,
                      "room_type": self.layout.room},
            "turk_annotations": {"anns": [{"task_desc": self.task_desc, "high_descs": [], "assignment_id": "generated"}]},
            "generator": "paw_lightning.envs.alfworld_games",
        }

    def pddl_problem(self, name: str) -> str:
        constants = _constants()
        actions = constants.VAL_ACTION_OBJECTS
        location_of = {rid: loc for _, rid, loc in self.layout.receptacles}
        otypes = sorted({kind for kind, _, _ in self.objects})
        rtypes = sorted(self.layout.types)
        declared = [f"{t}Type - otype" for t in otypes] + [f"{t}Type - rtype" for t in rtypes]
        declared += [d for d in DOMAIN_TYPES if d not in declared]
        start = "loc_bar_start_bar_0_bar_0_bar_0"
        lines = ["(define (problem plan_{})".format(name), "(:domain alfred)", "(:objects", "agent1 - agent"]
        lines += declared
        lines += [f"{oid} - object" for _, oid, _ in self.objects]
        lines += [f"{rid} - receptacle" for _, rid, _ in self.layout.receptacles]
        lines += [f"{loc} - location" for loc in sorted(set(location_of.values()) | {start})]
        lines += [")", "(:init", f"(atLocation agent1 {start})"]
        for kind, rid, loc in self.layout.receptacles:
            lines.append(f"(receptacleType {rid} {kind}Type)")
            lines.append(f"(receptacleAtLocation {rid} {loc})")
            if kind in constants.OPENABLE_CLASS_SET:
                lines.append(f"(openable {rid})")
        for kind, oid, rid in self.objects:
            lines.append(f"(objectType {oid} {kind}Type)")
            lines.append(f"(inReceptacle {oid} {rid})")
            lines.append(f"(objectAtLocation {oid} {location_of[rid]})")
            if kind == self.toggle_target:
                lines.append(f"(toggleable {oid})")
            elif kind != LAMP:
                lines.append(f"(pickupable {oid})")
            for prop, predicate in (("Cleanable", "cleanable"), ("Heatable", "heatable"), ("Coolable", "coolable"),
                                    ("Sliceable", "sliceable")):
                if kind in actions[prop]:
                    lines.append(f"({predicate} {oid})")
            if rid in {r for k, r, _ in self.layout.receptacles if k == "Fridge"} and kind in actions["Coolable"]:
                lines.append(f"(isCool {oid})")  # ALFRED marks what starts in the fridge as cool
        for rtype in rtypes:
            for otype in otypes:
                if can_contain(rtype, otype):
                    lines.append(f"(canContain {rtype}Type {otype}Type)")
        lines.append(")")
        goal = _goal_formula(self.task_type, self.object_target, self.parent_target, self.toggle_target)
        return "\n".join(lines) + "\n" + goal + "\n"


def _goal_formula(task_type: str, obj: str, recep: str, toggle: str) -> str:
    from alfworld.gen import goal_library

    text = goal_library.gdict[task_type]["pddl"].replace("#", "-")
    return "\n".join(line.strip() for line in text.format(obj=obj, recep=recep, toggle=toggle, mrecep="").strip().splitlines())


def _task_desc(task_type: str, obj: str, recep: str, toggle: str, rng: random.Random) -> str:
    from alfworld.gen import goal_library

    template = rng.choice(goal_library.gdict[task_type]["templates"])
    return template.format(obj=obj.lower(), recep=recep.lower(), toggle=toggle.lower(), mrecep="")


def sample_game(task_type: str, layout: Layout, rng: random.Random, distractors: tuple[int, int] = (3, 8)) -> GameDraft | None:
    """Sample a task for ``layout`` and place its objects; None when this room cannot host the task."""
    actions = _constants().VAL_ACTION_OBJECTS
    room_types = sorted(layout.types)
    pool = [o for o in ROOM_OBJECTS[layout.room] if any(can_contain(r, o) for r in room_types)]
    action_recep = ACTION_RECEPTACLE.get(task_type)
    if action_recep and action_recep not in layout.types:
        return None
    toggle = parent = ""
    if task_type == "look_at_obj_in_light":
        lamp_spots = [r for r in layout.receptacles if r[0] in LAMP_RECEPTACLES]
        if not lamp_spots or not pool:
            return None
        obj, toggle = rng.choice(pool), LAMP
    else:
        if task_type in ACTION_PROPERTY:
            pool = [o for o in pool if o in actions[ACTION_PROPERTY[task_type]]]
        pairs = [(o, r) for o in pool for r in room_types if r != action_recep and can_contain(r, o)
                 and any(can_contain(s, o) for s in room_types if s not in (r, "Fridge"))]
        if not pairs:
            return None
        obj, parent = rng.choice(pairs)

    # Where a target instance may start: not already in the goal receptacle type, not in the fridge for
    # cooling (it would start cool), never in the receptacle that performs the state change.
    banned = {parent, action_recep or "", "Fridge" if task_type == "pick_cool_then_place_in_recep" else ""}
    spots = [r for r in layout.receptacles if r[0] not in banned and can_contain(r[0], obj)]
    if not spots:
        return None
    taken: set[str] = {rid for _, rid, _ in layout.receptacles}
    copies = rng.randint(2, 3) if task_type == "pick_two_obj_and_place" else rng.randint(1, 2)
    objects = [(obj, _mangle(obj, rng, taken), rng.choice(spots)[1]) for _ in range(copies)]
    if toggle:
        lamp_spot = rng.choice([r for r in layout.receptacles if r[0] in LAMP_RECEPTACLES])
        objects.append((LAMP, _mangle(LAMP, rng, taken), lamp_spot[1]))
    distractor_kinds = [o for o in ROOM_OBJECTS[layout.room] if o != obj and any(can_contain(r, o) for r in room_types)]
    for _ in range(rng.randint(*distractors)):
        kind = rng.choice(distractor_kinds)
        where = [r for r in layout.receptacles if can_contain(r[0], kind)]
        objects.append((kind, _mangle(kind, rng, taken), rng.choice(where)[1]))
    desc = _task_desc(task_type, obj, parent, toggle, rng)
    return GameDraft(task_type, layout, obj, parent, toggle, objects, desc)


def game_logic() -> dict[str, str]:
    """The PDDL domain and TextWorld grammar shipped in the alfworld wheel."""
    from alfworld.info import ALFRED_PDDL_PATH, ALFRED_TWL2_PATH

    return {"pddl_domain": Path(ALFRED_PDDL_PATH).read_text(), "grammar": Path(ALFRED_TWL2_PATH).read_text()}


def solve(game_file: str | Path, max_steps: int = 50) -> list[str] | None:
    """The planner's walkthrough when it wins the game within ``max_steps``, else None."""
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos
    from textworld.envs import PddlEnv

    env = AlfredInfos(AlfredDemangler(PddlEnv(textworld.EnvInfos(won=True, policy_commands=True, admissible_commands=True))))
    try:
        env.load(str(game_file))
        state = env.reset()
        plan = list(state["policy_commands"] or [])
        if not plan or len(plan) > max_steps:
            return None
        for command in plan:
            if command not in state["admissible_commands"]:
                return None
            state, _, done = env.step(command)
        return plan if state["won"] else None
    except Exception:  # the planner or the engine rejected the problem: not a usable game
        return None
    finally:
        env.close()


def write_game(draft: GameDraft, folder: Path, trial: str, logic: dict[str, str]) -> Path:
    """Write traj_data.json, initial_state.pddl and game.tw-pddl (not yet marked solvable)."""
    folder.mkdir(parents=True, exist_ok=True)
    problem = draft.pddl_problem(trial)
    (folder / "traj_data.json").write_text(json.dumps(draft.traj_data(trial), indent=1))
    (folder / "initial_state.pddl").write_text(problem)
    game = {"pddl_domain": logic["pddl_domain"],
            "grammar": logic["grammar"].replace("UNKNOWN GOAL", draft.task_desc),
            "pddl_problem": problem, "solvable": None, "walkthrough": None}
    path = folder / "game.tw-pddl"
    path.write_text(json.dumps(game))
    return path


@dataclass
class GenerationReport:
    """Per split and task type: games written and drafts tried (written / tried = solved fraction)."""

    written: dict[str, dict[str, int]] = field(default_factory=dict)
    tried: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0

    def solved_fraction(self, task_type: str) -> float:
        tried = sum(split.get(task_type, 0) for split in self.tried.values())
        written = sum(split.get(task_type, 0) for split in self.written.values())
        return written / tried if tried else 0.0

    def total(self) -> int:
        return sum(sum(split.values()) for split in self.written.values())


def generate_games(
    out: str | Path,
    games_per_type: int = 4,
    seed: int = 0,
    eval_games_per_type: int | None = None,
    task_types: tuple[str, ...] = TASK_TYPES,
    progress: bool = True,
    room_size: str = "full",
) -> GenerationReport:
    """Write ``games_per_type`` train games and ``eval_games_per_type`` games in each validation split
    for every task type under ``out/json_2.1.1``; existing games are kept (the run resumes).
    ``room_size`` is ``full`` (ALFRED-like rooms) or ``small`` (see ``make_layout``).

    Game ``i`` of a (split, task type) is drawn from ``random.Random("<seed>:<split>:<type>:<i>:<try>")``,
    so the same arguments always write the same games.
    """
    unknown = set(task_types) - set(TASK_TYPES)
    if unknown:
        raise ValueError(f"unknown ALFWorld task types {sorted(unknown)}; choose from {TASK_TYPES}")
    if room_size not in ROOM_SIZES:
        raise ValueError(f"unknown room_size {room_size!r}; choose one of {ROOM_SIZES}")
    eval_count = games_per_type if eval_games_per_type is None else eval_games_per_type
    logic = game_logic()
    constants = _constants()
    root = Path(out) / DATA_VERSION
    report = GenerationReport()
    started = time.perf_counter()
    jobs = [(split, t, i) for split in SPLIT_FOLDERS for t in task_types
            for i in range(games_per_type if split == "train" else eval_count)]
    for split, task_type, index in tqdm(jobs, desc="generating ALFWorld games", disable=not progress, unit="game"):
        trial = f"trial_T{seed:06d}_{index:06d}"
        existing = list((root / split).glob(f"{task_type}-*/{trial}/game.tw-pddl"))
        report.tried.setdefault(split, {}).setdefault(task_type, 0)
        report.written.setdefault(split, {}).setdefault(task_type, 0)
        if existing and json.loads(existing[0].read_text()).get("solvable"):
            report.written[split][task_type] += 1
            continue
        for stale in existing:  # a run stopped before the planner finished: start this game again
            shutil.rmtree(stale.parent)
        scenes = UNSEEN_SCENES if split == "valid_unseen" else SEEN_SCENES
        rooms = sorted(constants.GOALS_VALID[task_type])
        for attempt in range(MAX_ATTEMPTS):
            rng = random.Random(f"{seed}:{split}:{task_type}:{index}:{attempt}")
            layout = make_layout(seed, rng.choice(rooms), rng.choice(scenes), room_size)
            draft = sample_game(task_type, layout, rng, DISTRACTORS[room_size])
            if draft is None:
                continue
            report.tried[split][task_type] += 1
            folder = root / split / draft.folder_name / trial
            path = write_game(draft, folder, trial, logic)
            walkthrough = solve(path)
            if walkthrough is None:
                shutil.rmtree(folder)
                if not any(folder.parent.iterdir()):
                    folder.parent.rmdir()
                continue
            game = json.loads(path.read_text())
            game.update(solvable=True, walkthrough=walkthrough)
            path.write_text(json.dumps(game))
            report.written[split][task_type] += 1
            break
    report.seconds = time.perf_counter() - started
    return report


def main(argv: list[str] | None = None) -> int:
    """Console script ``paw-alfworld-games``."""
    parser = argparse.ArgumentParser(
        prog="paw-alfworld-games",
        description="Write ALFWorld-format games (train, valid_seen, valid_unseen) for the six task types.",
    )
    parser.add_argument("--out", required=True, help="data folder; point $ALFWORLD_DATA at it to play the games")
    parser.add_argument("--games-per-type", type=int, default=4, help="train games per task type (default 4)")
    parser.add_argument("--eval-games-per-type", type=int, default=None,
                        help="games per task type in each validation split (default: --games-per-type)")
    parser.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    parser.add_argument("--task-types", nargs="+", default=list(TASK_TYPES), choices=TASK_TYPES, metavar="TYPE",
                        help="task types to generate (default: all six)")
    parser.add_argument("--room-size", choices=ROOM_SIZES, default="full",
                        help="full: ALFRED-like rooms (default); small: one receptacle per type, few distractors")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.games_per_type < 0 or (args.eval_games_per_type or 0) < 0:
        parser.error("game counts must be >= 0")
    report = generate_games(args.out, args.games_per_type, args.seed, args.eval_games_per_type,
                            tuple(args.task_types), progress=not args.no_progress, room_size=args.room_size)
    print(f"wrote {report.total()} games to {Path(args.out) / DATA_VERSION} in {report.seconds:.1f} s")
    for task_type in args.task_types:
        counts = ", ".join(f"{split} {report.written.get(split, {}).get(task_type, 0)}" for split in SPLIT_FOLDERS)
        print(f"  {task_type:32s} {counts}; planner solved {report.solved_fraction(task_type):.0%} of the drafts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
