"""The env zoo table: every registered env family, measured on this machine.

For each family (its config in ``FAMILIES``): the admissible commands per step (median over a random
walk), env steps per second in this process and with 2 env workers (4 envs, random admissible commands,
resets included, engine/JVM start excluded), memory per env (the RSS that building and playing 4 envs
adds, this process plus its children: the JVMs), and, with ``--smollm2-episodes N``, untrained SmolLM2's
success on the config's validation split (score actor at the config's ``val_temperature``, N episodes,
binomial standard error). The load average is written beside the figures.

    python benchmarks/envs.py                                   # every family, no SmolLM2 column
    nice -n 15 python benchmarks/envs.py --smollm2-episodes 32  # plus the SmolLM2 column (CPU-heavy)
    python benchmarks/envs.py --no-speed --smollm2-episodes 32 --families textworld_express
    python benchmarks/envs.py --families scienceworld,frozenlake
Prints the JSON report and the README table and appends the report to --out (benchmarks/results.json).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import gymnasium as gym
import numpy as np
import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from update_step import append_report  # noqa: E402 - a sibling script

ROOT = Path(__file__).resolve().parents[1]
# family -> (config whose env is measured, what its tasks are)
FAMILIES = {
    "textworld": ("smollm2_coin_collector.yaml", "generated TextWorld games (here coin collector, level 3)"),
    "alfworld": ("alfworld_tiny.yaml", "6 task types (here generated games, small rooms)"),
    "scienceworld": ("smollm2_scienceworld.yaml", "30 tasks, 7,207 variations (here the 4 find-* tasks, easy)"),
    "textworld_express": ("smollm2_textworld_express.yaml", "8 games (here coin, 5 rooms, no doors)"),
    "frozenlake": ("frozenlake_tiny.yaml", "FrozenLake-v1 4x4"),
    "frozenlake_slippery": ("frozenlake_slippery_tiny.yaml", "FrozenLake-v1 4x4, slippery"),
    "cliffwalking": ("cliffwalking_tiny.yaml", "CliffWalking-v1"),
    "taxi": ("taxi_tiny.yaml", "Taxi-v4"),
    "cartpole": ("cartpole_tiny.yaml", "CartPole-v1 from its id alone (no code), won = up at the 12-step limit"),
    "sokoban": ("smollm2_sokoban.yaml", "generated rooms (here 6x6, one box)"),
    "babyai": ("smollm2_babyai.yaml", "96 BabyAI levels (here GoToLocalS5N2 and GoToRedBallNoDists)"),
}


def family_config(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / FAMILIES[name][0]).read_text())


def make_env_fn(data: dict):
    from paw_lightning.rollout.env_workers import make_text_env

    return functools.partial(make_text_env, gym.spec(data["env_id"]), dict(data.get("env_kwargs") or {}))


def rss_mb() -> float:
    """Resident memory of this process and all its children (JVMs, workers), in MB."""
    me = psutil.Process()
    return sum(p.memory_info().rss for p in [me, *me.children(recursive=True)]) / 2**20


def random_walk(calls, num_envs: int, steps: int, max_steps: int, rng) -> tuple[list[int], int]:
    """Play random admissible commands on ``num_envs`` envs through ``calls`` (reset/step of dicts);
    returns (admissible counts per step, env calls made)."""
    results, commands, counts, made, episode = calls.reset({i: i for i in range(num_envs)}), {}, [], 0, {}
    for i, r in results.items():
        commands[i], episode[i] = r.value[1]["admissible_commands"], 0
    while made < steps:
        results = calls.step({i: str(rng.choice(commands[i])) for i in range(num_envs)})
        made += num_envs
        resets = {}
        for i, r in results.items():
            obs, _, terminated, truncated, info = r.value
            counts.append(len(info["admissible_commands"]))
            episode[i] += 1
            if terminated or truncated or episode[i] >= max_steps:
                resets[i] = made + i
            commands[i] = info["admissible_commands"]
        for i, r in calls.reset(resets).items():
            commands[i], episode[i] = r.value[1]["admissible_commands"], 0
    return counts, made


def speed(name: str, steps: int) -> dict:
    """Admissible commands, steps/s in process and with 2 workers, memory per env."""
    from paw_lightning.rollout.env_workers import EnvWorkers, InProcessEnvs

    data = family_config(name)["data"]
    make_env, max_steps = make_env_fn(data), int(data["max_steps"])
    before = rss_mb()
    envs = InProcessEnvs(make_env, 4)
    random_walk(envs, 4, 4, max_steps, np.random.default_rng(0))  # engines and JVMs start here, not timed
    start = time.perf_counter()
    counts, made = random_walk(envs, 4, steps, max_steps, np.random.default_rng(1))
    in_process = made / (time.perf_counter() - start)
    memory = (rss_mb() - before) / 4
    envs.close()
    workers = EnvWorkers(make_env, 4, 2)
    try:
        random_walk(workers, 4, 4, max_steps, np.random.default_rng(0))
        start = time.perf_counter()
        _, made = random_walk(workers, 4, steps, max_steps, np.random.default_rng(1))
        two_workers = made / (time.perf_counter() - start)
    finally:
        workers.close()
    return {"admissible_median": statistics.median(counts), "steps_per_s": in_process,
            "steps_per_s_2_workers": two_workers, "memory_mb_per_env": memory}


def smollm2_success(name: str, episodes: int, batch: int = 8) -> dict:
    """Untrained SmolLM2 (bf16) on the config's validation envs: score actor, ``val_temperature``."""
    from paw_lightning.models import load_model
    from paw_lightning.rollout.datamodule import RolloutDataModule

    config = family_config(name)
    data = dict(config["data"], actor="score", env_workers=2, progress=False)
    model, tokenizer = load_model("smollm2-135m-instruct", dtype="bfloat16")
    wins = 0
    for first in range(0, episodes, batch):
        dm = RolloutDataModule(**(data | {"val_episodes": min(batch, episodes - first), "val_seed": 1_000_000 + first}))
        try:
            wins += sum(e.won for e in dm.validate(model, tokenizer).episodes)
        finally:
            dm.teardown("validate")
    p = wins / episodes
    return {"smollm2_success": p, "smollm2_se": math.sqrt(p * (1 - p) / episodes), "smollm2_episodes": episodes,
            "val_temperature": data.get("val_temperature"), "val_env_kwargs": data.get("val_env_kwargs")}


def table(rows: dict) -> str:
    def cell(row, key, fmt):
        return fmt.format(row[key]) if key in row else "not measured"

    lines = ["| family | config | tasks | offline | admissible commands (median) | env steps/s | env steps/s, 2 workers "
             "| memory per env | untrained SmolLM2 success (score actor, +- SE) |", "|" + "---|" * 9]
    for name, row in rows.items():
        smol = (f"{100 * row['smollm2_success']:.0f} % +- {100 * row['smollm2_se']:.0f} ({row['smollm2_episodes']} episodes)"
                if "smollm2_success" in row else "not measured")
        lines.append(f"| {name} | {FAMILIES[name][0]} | {FAMILIES[name][1]} | yes | {cell(row, 'admissible_median', '{:g}')} | "
                     f"{cell(row, 'steps_per_s', '{:,.0f}')} | {cell(row, 'steps_per_s_2_workers', '{:,.0f}')} | "
                     f"{cell(row, 'memory_mb_per_env', '{:.0f} MB')} | {smol} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated names of FAMILIES")
    parser.add_argument("--steps", type=int, default=200, help="timed env steps per family and setting")
    parser.add_argument("--smollm2-episodes", type=int, default=0, help="episodes of the SmolLM2 column (0 = skip)")
    parser.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the speed and memory columns (--no-speed: only the SmolLM2 column)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results.json"), help="results file to append to")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import paw_lightning.envs  # noqa: F401 - registers the paw/ ids

    rows = {}
    for name in args.families.split(","):
        rows[name] = {"loadavg_before": open("/proc/loadavg").read().split()[:3]}
        if args.speed:
            rows[name] |= speed(name, args.steps)
        if args.smollm2_episodes:
            rows[name] |= smollm2_success(name, args.smollm2_episodes)
        rows[name]["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
        print(name, json.dumps(rows[name]), flush=True)
    report = {"envs": rows, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
              "steps": args.steps}
    print(json.dumps(report, indent=2))
    print(table(rows))
    append_report(report, args.out)


if __name__ == "__main__":
    main()
