"""Throughput of the quickstart with 1 process vs N DDP processes on this machine's CPU (gloo), or GPUs.

    python benchmarks/ddp.py                                  # 1 vs 2 processes, 5 iterations each
    python benchmarks/ddp.py --processes 1,2 --iterations 8 --same_update
    python benchmarks/ddp.py --engines hf,vllm --actor generate   # the engine column: one vLLM engine per process
    python benchmarks/ddp.py --device cuda --processes 1,2 --engines hf,vllm --actor generate   # GPUs (gpu_suite.sh)

Each run is a real ``paw fit`` of configs/quickstart.yaml (tiny model, TextWorld coin collector, score
actor, no validation) in a temporary folder, with the CPU threads split evenly over the processes.
With N processes every process plays ``num_groups`` groups, so an iteration holds N times the
episodes; ``--same_update`` also runs N processes with ``num_groups / N`` groups each (the update of
one process, in less time if the processes help). The first iteration (warm-up: game loading, first
forward passes) is left out of the medians. Reports, per run: env steps per second of the rollout
phase (all processes' steps over the slowest process's rollout time), seconds per iteration
(rollout + update), env steps per second over whole iterations, and episodes per iteration; prints
one JSON report and appends it to ``benchmarks/results_ddp.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run_fit(processes: int, num_groups: int, iterations: int, threads: int, extra: list[str], timeout: int,
            engine: str = "hf", actor: str = "score", device: str = "cpu") -> dict:
    """One ``paw fit`` of the quickstart; the per-iteration metrics rank 0 logged."""
    with tempfile.TemporaryDirectory(prefix="paw-ddp-bench-") as folder:
        strategy = ["--trainer.strategy=ddp"] if processes > 1 else []
        cmd = [
            sys.executable, "-m", "paw_lightning.cli", "fit", "--config", str(ROOT / "configs/quickstart.yaml"),
            f"--trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}", f"--trainer.devices={processes}", *strategy,
            f"--trainer.max_epochs={iterations}", "--trainer.enable_progress_bar=false",
            "--data.val_episodes=0", "--data.progress=false", f"--data.num_groups={num_groups}", f"--data.engine={engine}",
            f"--data.actor={actor}", "--data.vllm_kv_cache_gib=1", *extra,
        ]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout,
                              start_new_session=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"paw fit with {processes} process(es) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        rows = list(csv.DictReader(open(Path(folder) / "runs/csv/version_0/metrics.csv")))
    by_epoch: dict[int, dict[str, float]] = {}
    for row in rows:
        by_epoch.setdefault(int(row["epoch"]), {}).update({k: float(v) for k, v in row.items() if v and k not in ("epoch", "step")})
    return {"epochs": [by_epoch[e] for e in sorted(by_epoch)], "process_wall_s": wall}


def summarise(processes: int, num_groups: int, threads: int, fit: dict, engine: str = "hf", actor: str = "score") -> dict:
    epochs = fit["epochs"][1:] or fit["epochs"]  # the first iteration is warm-up
    median = lambda key: statistics.median(e[key] for e in epochs)  # noqa: E731
    return {
        "processes": processes,
        "engine": engine,
        "actor": actor,
        "num_groups_per_process": num_groups,
        "threads_per_process": threads,
        "episodes_per_iteration": median("episode/count"),
        "env_steps_per_iteration": median("rollout/env_steps"),
        "rollout_env_steps_per_s": round(median("rollout/env_steps_per_s"), 2),
        "iteration_s": round(median("perf/iteration_s"), 2),
        "env_steps_per_s_overall": round(statistics.median(e["rollout/env_steps"] / e["perf/iteration_s"] for e in epochs), 2),
        "iterations_measured": len(epochs),
        "process_wall_s": round(fit["process_wall_s"], 1),
        "load_after": load_average(),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts to compare")
    parser.add_argument("--iterations", type=int, default=5, help="iterations per run (the first is warm-up)")
    parser.add_argument("--num_groups", type=int, default=4, help="groups per process (the quickstart: 4)")
    parser.add_argument("--same_update", action="store_true", help="also run N processes with num_groups / N groups each")
    parser.add_argument("--engines", default="hf", help="comma-separated rollout engines to compare (hf, vllm: one engine per process)")
    parser.add_argument("--actor", default="score", choices=["score", "generate"], help="the actor of every run (the quickstart: score)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: one process per GPU (benchmarks/gpu_suite.sh)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPU threads to split over the processes")
    parser.add_argument("--threads", type=int, default=None, help="threads per process (default: cpus / processes)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds before a run counts as hung")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results_ddp.json"), help="JSON file the report is appended to")
    parser.add_argument("extra", nargs="*", help="more `paw fit` options, after --")
    args = parser.parse_args(argv)

    plan = []
    for n in (int(p) for p in args.processes.split(",")):
        plan.append((n, args.num_groups))
        if args.same_update and n > 1 and args.num_groups % n == 0:
            plan.append((n, args.num_groups // n))
    report = {
        "benchmark": "ddp",
        "device": args.device,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_before": load_average(),
        "runs": [],
    }
    for engine in args.engines.split(","):
        for n, groups in plan:
            threads = args.threads or max(1, args.cpus // n)
            fit = run_fit(n, groups, args.iterations, threads, args.extra, args.timeout, engine, args.actor, args.device)
            report["runs"].append(summarise(n, groups, threads, fit, engine, args.actor))
            print(json.dumps(report["runs"][-1]), flush=True)
    report["load_after"] = load_average()
    print(json.dumps(report, indent=1))
    out = Path(args.out)
    history = json.loads(out.read_text()) if out.exists() else {"runs": []}
    history["runs"].append(report)
    out.write_text(json.dumps(history, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
