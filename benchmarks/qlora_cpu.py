"""QLoRA on this CPU: peak RSS and seconds per iteration of a SmolLM2-135M-Instruct nf4 + LoRA ``paw fit``,
for one or more checkouts of this repository, run back to back (alternating) so their ratio is fair.

    python benchmarks/qlora_cpu.py                       # this checkout, 2 runs
    python benchmarks/qlora_cpu.py --checkout /path/to/old/clone --checkout . --rounds 2

Each checkout needs its own installed environment (``<checkout>/.venv/bin/python``, else this Python). A
fit: ``configs/smollm2_textworld.yaml`` with ``--model.quantize bnb.nf4 --model.lora_rank 8``, the HF engine, 3 iterations
of 2 groups x 2 episodes x 3 steps, no validation; the first iteration (which loads and warms up) is left
out of s/iteration. The model is SmolLM2's de-quantised HF folder (``models.serving_folder``), which every
version of the loader can quantise (older ones could not quantise the GGUF file itself). The report (per checkout: commit, peak RSS of the fit's process tree, s/iteration,
the rollout and update seconds and learner tokens/s of each iteration, the load average before and after) is printed as JSON and appended to benchmarks/results_qlora_cpu.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIT = ["fit", "--config", "configs/smollm2_textworld.yaml", "--model.quantize=bnb.nf4", "--model.lora_rank=8",
       "--trainer.max_epochs=3", "--trainer.enable_progress_bar=false", "--data.num_groups=2", "--data.group_size=2",
       "--data.max_steps=3", "--data.val_episodes=0", "--data.progress=false", "--data.env_workers=0",
       "--data.engine=hf"]


def fit_once(checkout: Path, model: str) -> dict:
    python = checkout / ".venv/bin/python"
    python = str(python) if python.exists() else sys.executable
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="paw-qlora-cpu-") as run:
        args = [str(checkout / a) if a.startswith("configs/") else a for a in FIT] + [f"--model.model_name={model}"]
        # a fresh interpreter per fit (its own package, from the checkout's environment): its ru_maxrss is the peak
        code = ("import resource; from paw_lightning.cli import main; main(); "
                "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        proc_args = [python, "-c", code, *args]
        started = time.perf_counter()
        proc = subprocess.run(proc_args, capture_output=True, text=True, cwd=run, env=os.environ | {"HF_HUB_OFFLINE": "1"})
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            return {"checkout": checkout.name, "error": proc.stderr[-2000:]}
        peak_kb = int(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PEAK_RSS_KB")))
        rows = list(csv.DictReader(open(Path(run) / "runs/csv/version_0/metrics.csv")))
        column = lambda name: [round(float(r[name]), 2) for r in rows if r.get(name)]  # noqa: E731 - one per iteration
        iteration_s, rollout_s, learner = column("perf/iteration_s"), column("rollout/wall_s"), column("perf/tokens_per_s")
    commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"checkout": checkout.name, "commit": commit, "peak_rss_gb": round(peak_kb / 1024**2, 3),
            "s_per_iteration": round(sum(iteration_s[1:]) / max(len(iteration_s) - 1, 1), 2), "iterations_s": iteration_s,
            "rollout_s": rollout_s, "update_s": [round(i - r, 2) for i, r in zip(iteration_s, rollout_s)],
            "learner_tokens_per_s": learner,
            "wall_s": round(wall, 1), "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", action="append", type=Path, help="a checkout to measure (repeatable; default: this one)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds over the checkouts")
    args = parser.parse_args()
    checkouts = [c.resolve() for c in (args.checkout or [ROOT])]
    sys.path.insert(0, str(ROOT))
    from paw_lightning.models import SMOLLM2, serving_folder

    model = serving_folder(SMOLLM2)
    runs = [fit_once(c, model) for _ in range(args.rounds) for c in checkouts]
    report = {"benchmark": "qlora_cpu", "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "runs": runs}
    print(json.dumps(report, indent=1))
    out = ROOT / "benchmarks/results_qlora_cpu.json"
    history = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(history + [report], indent=1) + "\n")


if __name__ == "__main__":
    main()
