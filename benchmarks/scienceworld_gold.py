"""Does ScienceWorld's admissible list cover its gold plans? Play each gold plan through listed commands only.

For every task (default all 30) and its first N train variations (``easy``): play the simulator's gold
plan as written (``raw``), then again through our env choosing only commands of the whole valid list:
each gold step's ``ScienceWorldEnv.listed_equivalent`` (``exact``: the step is listed; ``reworded``: a
listed command in another wording does it), or ``look at agent`` where no listed command does (``none``: the
step names something the simulator refuses, e.g. ``open door to X`` on a door ``easy`` opened, which
changes nothing but takes one tick of the world's clock, as ``look at agent`` does; ``look around``,
``inventory`` and ``task`` take none and ``wait1`` more than one, and plants and animals grow by the clock). A bare number in the plan answers the simulator's "Ambiguous request" question (the
list then holds the numbers); where the reworded command before it named one object and raised no
question, it is skipped (``choice``). Counts the steps of each kind, lists every ``none`` step with the simulator's answer,
and says whether each play won. Prints the JSON report and appends it to --out (benchmarks/results.json).

    python benchmarks/scienceworld_gold.py                        # 30 tasks x 1 variation, ~5 min
    python benchmarks/scienceworld_gold.py --tasks boil,grow-plant --variations 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import gymnasium as gym

sys.path.insert(0, str(Path(__file__).resolve().parent))
from update_step import append_report  # noqa: E402 - a sibling script

import paw_lightning.envs  # noqa: E402,F401 - registers paw/ScienceWorld-v0
from paw_lightning.envs.scienceworld import task_topics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TICK = "look at agent"  # a listed command that changes nothing and takes one tick, as a refused command does


def play(env, task: str, variation: int, listed_only: bool) -> dict:
    """One gold-plan episode; with ``listed_only`` every step goes through ``listed_equivalent``."""
    _, info = env.reset(options={"task": task, "variation": variation})
    kinds, refused = Counter(), []
    for command in info["gold_plan"]:
        step = command
        if listed_only and command.isdigit() and command not in info["admissible_commands"]:
            kinds["choice"] += 1  # answers an "Ambiguous request" that the reworded command before it did not raise
            continue
        if listed_only:
            listed = env.listed_equivalent(command)
            kind = "exact" if listed == command else "reworded" if listed else "none"
            kinds[kind] += 1
            # the stand-in for a refused step: one tick, no change (an agent-less world lists "look at inventory")
            step = listed or next((c for c in (TICK, "look at inventory") if c in env._valid), "look around")
        obs, _, terminated, truncated, info = env.step(step)
        if listed_only and step == TICK and command != TICK:
            refused.append({"command": command, "listed_tick_answer": obs[:80]})
        if terminated or truncated:
            break
    return {"won": bool(info["won"]), "score": info["score"], "kinds": dict(kinds), "none_steps": refused}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="", help="comma-separated task names (default: all 30)")
    parser.add_argument("--variations", type=int, default=1, help="train variations per task (the first N)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results.json"), help="results file to append to")
    args = parser.parse_args()
    tasks = [t for t in args.tasks.split(",") if t] or sorted(task_topics())
    env = gym.make("paw/ScienceWorld-v0", tasks=tasks, gold_plan=True, jvm_heap_mb=512, disable_env_checker=True).unwrapped
    episodes, totals, start = [], Counter(), time.time()
    load_before = os.getloadavg()
    try:
        for task in tasks:
            for variation in env.variations(task)[: args.variations]:
                raw = play(env, task, variation, listed_only=False)
                listed = play(env, task, variation, listed_only=True)
                totals.update(listed["kinds"])
                episodes.append({"task": task, "variation": variation, "raw_won": raw["won"], "raw_score": raw["score"],
                                 "listed_won": listed["won"], "listed_score": listed["score"], **listed})
                print(f"{task} {variation}: raw won {raw['won']}, listed-only won {listed['won']} "
                      f"{listed['kinds']} ({time.time() - start:.0f} s)", flush=True)
    finally:
        env.close()
    report = {"scienceworld_gold": {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "simplifications": "easy",
        "episodes": len(episodes), "steps": dict(totals),
        "raw_won": sum(e["raw_won"] for e in episodes), "listed_won": sum(e["listed_won"] for e in episodes),
        "none_commands": dict(Counter(s["command"].split(" to ")[0] if s["command"].startswith("open door")
                                      else s["command"] for e in episodes for s in e["none_steps"])),
        "loadavg_before": [f"{x:.2f}" for x in load_before], "loadavg_after": [f"{x:.2f}" for x in os.getloadavg()],
        "seconds": round(time.time() - start, 1), "per_episode": episodes}}
    print(json.dumps({k: v for k, v in report["scienceworld_gold"].items() if k != "per_episode"}, indent=2))
    append_report(report, args.out)


if __name__ == "__main__":
    main()
