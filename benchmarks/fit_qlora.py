"""An end-to-end ``paw fit`` of a Qwen2.5-0.5B-shaped model with QLoRA: does the whole loop run, how long
does an iteration take and how much GPU memory does it hold?

A random-init Qwen2.5-0.5B-shaped HF folder (bf16 weights + the tiny tokenizer, written by
update_step.py's ``save_random_model``; no weights can be downloaded on the GPU machine) is trained for
two iterations of the quickstart (GRPO + PaW, score actor, generated TextWorld games) with LoRA rank 16
on an nf4 base, in this process, exactly as

    paw fit --config configs/quickstart.yaml --model.model_name <folder> --model.lora_rank 16 \\
        --model.quantize bnb.nf4 --trainer.accelerator gpu --trainer.max_epochs 2 --data.val_episodes 0

would. Run it as

    python benchmarks/fit_qlora.py                                          # GPU, the suite's settings
    python benchmarks/fit_qlora.py --shape tiny --device cpu -- --data.num_groups=2   # a smoke run
(anything after ``--`` is passed on to ``paw fit``). The report (wall time, seconds per iteration, peak
GPU memory, success rate and losses per iteration, or the error) is printed as JSON and appended to
benchmarks/results.json; the exit status is 1 when the fit failed, 0 when it ran out of memory (``oom``: a
result, e.g. under ``--memory_cap_gb``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_cap import apply_memory_cap, is_oom, oom_result, peak_memory, settle  # noqa: E402
from update_step import SHAPES, append_report, save_random_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PER_ITERATION = ("episode/success_rate", "episode/return", "episode/length", "episode/valid_action_ratio",
                 "perf/iteration_s", "rollout/wall_s", "rollout/env_steps", "rollout/env_steps_per_s",
                 "loss/policy_epoch", "loss/kl_epoch", "paw/wm_loss_epoch", "wm/token_acc_epoch",
                 "paw/selected_frac", "paw/lambda_mean")


def fit_command(folder: str, args, extra: list[str]) -> list[str]:
    """The ``paw fit`` arguments of the run (without the leading ``paw``)."""
    return [
        "fit", "--config", str(ROOT / "configs/quickstart.yaml"),
        "--model.model_name", folder, "--model.dtype", "bfloat16",
        "--model.lora_rank", str(args.lora_rank), "--model.quantize", "bnb.nf4",
        "--trainer.accelerator", "gpu" if args.device.startswith("cuda") else "cpu",
        "--trainer.max_epochs", str(args.iterations), "--data.val_episodes", "0",
        "--trainer.enable_progress_bar", "false", "--data.progress", "false",
        *extra,
    ]


def per_iteration(metrics_csv: Path) -> list[dict]:
    """One dict per iteration (epoch) with the metrics of ``PER_ITERATION`` that were logged."""
    rows: dict[int, dict] = {}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            epoch = rows.setdefault(int(row["epoch"]), {"iteration": int(row["epoch"])})
            for key in PER_ITERATION:
                if row.get(key):
                    epoch[key] = float(row[key])
    return [rows[k] for k in sorted(rows)]


def fit_benchmark(args, extra: list[str]) -> dict:
    from paw_lightning.cli import cli_main

    with tempfile.TemporaryDirectory() as folder, tempfile.TemporaryDirectory() as workdir:
        save_random_model(args.shape, folder, args.device)
        command = fit_command(folder, args, extra)
        cwd = os.getcwd()
        os.chdir(workdir)  # runs/ (logs, checkpoints) go to the scratch folder
        settle(args.device)
        start = time.perf_counter()
        try:
            cli = cli_main(command)
            wall = time.perf_counter() - start
            iterations = per_iteration(Path(cli.trainer.logger.log_dir) / "metrics.csv")
        finally:
            os.chdir(cwd)
    report = {
        "ok": len(iterations) == args.iterations,
        "command": "paw " + " ".join(command).replace(folder, "<random-init folder>"),
        "wall_s": wall,
        "s_per_iteration": [it.get("perf/iteration_s") for it in iterations],
        "peak_gb": peak_memory(args.device)["peak_allocated_gb"],
        "peak_reserved_gb": peak_memory(args.device)["peak_reserved_gb"],
        "oom": False,
        "iterations": iterations,
    }
    if not report["ok"]:
        report["error"] = f"expected {args.iterations} iterations in metrics.csv, found {len(iterations)}"
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-0.5b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--lora_rank", type=int, default=16)
    parser.add_argument("--memory_cap_gb", type=float, default=None,
                        help="cap this process's CUDA allocator at this many GiB (a card's size); an OOM is recorded")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    report = {"device": device_name, "date": time.strftime("%Y-%m-%d"), "shape": args.shape,
              "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"paw_overrides": extra}}
    report["memory"] = apply_memory_cap(args.memory_cap_gb, args.device)
    try:
        report["fit_qlora"] = fit_benchmark(args, extra)
    except (Exception, SystemExit) as err:  # noqa: BLE001 - the failure is the measurement: record it, exit 1
        traceback.print_exc()
        report["fit_qlora"] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        if is_oom(err):  # running out of memory (under a cap: the card's size) is the answer, not a failure
            report["fit_qlora"] |= oom_result(err) | peak_memory(args.device)
    print(json.dumps(report, indent=2))
    append_report(report, args.out)
    sys.exit(0 if report["fit_qlora"]["ok"] or report["fit_qlora"].get("oom") else 1)


if __name__ == "__main__":
    main()
