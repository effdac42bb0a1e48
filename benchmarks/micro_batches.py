"""Token-budget micro-batches: the trainer's peak memory and the update's time, with and without a budget.

Each setting is one ``paw fit`` of one iteration in its own process (so that its peak resident memory,
``ru_maxrss``, is its own), on the same seed, hence the same first rollout: the update is the same
mini-batches cut differently. Reports per setting the peak RSS of the trainer process, the iteration's
wall time, the learner's time (real tokens / ``perf/tokens_per_s``) and the padding share of the tokens
the trunk processed (``perf/pad_frac``: without a budget rows pad to the mini-batch's longest; with one,
rows are grouped by length first). Settings alternate for ``--rounds`` rounds; the load average is written
beside each run.

    python benchmarks/micro_batches.py --budgets none,1024 [--rounds 1] [-- extra paw fit arguments]
    python benchmarks/micro_batches.py --config configs/quickstart.yaml --budgets none,256   # tiny, seconds
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_run(config: str, budget: str, extra: list[str]) -> dict:
    """This process: one iteration with ``budget``, then its figures as JSON on stdout's last line."""
    from paw_lightning.cli import cli_main

    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        cli_main(["fit", "--config", config, "--trainer.max_epochs=1", "--data.val_episodes=0", "--data.progress=false",
                  "--trainer.enable_progress_bar=false", f"--model.max_tokens_per_micro_batch={'null' if budget == 'none' else budget}",
                  *extra])
        rows = list(csv.DictReader(open(next(Path(folder).rglob("metrics.csv")))))
        metrics = {k: float(v) for row in rows for k, v in row.items() if v and k not in ("epoch", "step")}
        first_loss = next(float(r["loss/total_step"]) for r in rows if r.get("loss/total_step"))
    tokens_per_s = metrics.get("perf/tokens_per_s")
    return {
        "budget": budget,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "iteration_s": round(metrics.get("perf/iteration_s", float("nan")), 1),
        "tokens_per_s": round(tokens_per_s, 1) if tokens_per_s else None,
        "pad_frac": round(metrics.get("perf/pad_frac", float("nan")), 3),
        "first_step_loss": first_loss,  # the same mini-batch, whole or split: equal up to rounding
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs/smollm2_coin_collector.yaml"))
    parser.add_argument("--budgets", default="none,1024", help="comma-separated; none = no micro-batches")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one setting in this process
    parser.add_argument("extra", nargs="*", help="arguments for paw fit (after --)")
    args = parser.parse_args()
    config = os.path.abspath(args.config)
    if args.one:
        print(json.dumps(one_run(config, args.one, args.extra)))
        return
    runs = []
    for _ in range(args.rounds):
        for budget in args.budgets.split(","):
            load = [round(x, 2) for x in os.getloadavg()]
            proc = subprocess.run([sys.executable, __file__, "--config", config, "--one", budget, "--", *args.extra],
                                  capture_output=True, text=True, cwd=ROOT)
            if proc.returncode:
                raise SystemExit(proc.stderr[-3000:])
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]) | {"load_avg_at_start": load})
            print(json.dumps(runs[-1]), flush=True)
    print(json.dumps({"config": args.config, "extra": args.extra, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
