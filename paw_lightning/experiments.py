"""Run a matrix of ``paw fit`` configs x seeds and gather one tidy CSV; a half-finished matrix resumes.

A matrix is a YAML file::

    base: configs/quickstart.yaml          # every arm starts from this config
    seeds: [0, 1, 2]
    runs_dir: runs/experiments/textworld   # one folder per (arm, seed)
    output: notebooks/results.csv
    args: ["--trainer.check_val_every_n_epoch=5"]   # optional, for every arm
    arms:
      grpo: ["--config", "configs/algorithms/no_paw.yaml"]
      grpo_paw: []
      paw_ce: ["--model.wm_loss=ce"]

Each (arm, seed) runs ``paw fit --config base <args> <arm args>`` with ``seed_everything``,
``model.model_seed`` and ``data.seed`` set to the seed, in its own folder. A finished run leaves a
``done`` file and is skipped next time; an interrupted one resumes from its ``last.ckpt``. The CSV has one
row per (arm, seed, iteration)::

    python -m paw_lightning.experiments notebooks/textworld_matrix.yaml [--dry-run] [--only ARM ...] [--collect] [--extend]

Two optional keys serve paired comparisons of held-out episodes (validation plays the same episodes with
the same random numbers in every run)::

    untrained_validation: true                  # one `paw validate` of the untrained model, in runs_dir/untrained
    episodes_output: notebooks/episodes.csv     # every held-out episode of every run, one row each

The untrained model is every arm's starting point (a fresh LoRA adapter changes nothing), so one
validation of it stands for iteration 0 of every (arm, seed); its rows have arm ``untrained`` and no seed.

Run folders are not committed, so every finished run is also listed in a ledger beside the output
(``results_runs.csv`` for ``results.csv``: arm, seed and the seconds each sitting took, which is the
compute the matrix has spent). On a fresh clone, where the run folders are gone, a run in the ledger is
not run again, and the CSVs keep the rows they already hold for every run whose folder holds nothing.

``--extend`` grows a finished matrix's budget: raise ``trainer.max_epochs`` (in the base config or the
matrix's ``args``) and every run resumes from its ``last.ckpt`` and trains on to the new last iteration.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

EPISODE_COLUMNS = ("arm", "seed", "trained_iterations", "position", "env_seed", "task_type", "won", "return", "length")
LEDGER_COLUMNS = ("arm", "seed", "seconds")
UNTRAINED = "untrained"  # the run folder and arm name of the untrained-model validation
COLUMNS = (
    "arm", "config", "seed", "iteration", "env_steps", "episodes", "wall_s", "train_success", "eval_success",
    "eval_count", "train_return", "episode_length", "valid_action_ratio", "paw_lambda_mean", "paw_selected_frac",
    "paw_wm_loss", "paw_clipped_token_frac", "wm_token_acc", "action_entropy", "policy_loss", "kl", "eval_wm_token_acc",
    "paw_wm_term", "zero_adv_group_frac", "grad_wm_over_rl",
)
# CSV column -> the Lightning metric it is read from (the epoch-level value when there are both).
METRIC_OF = {
    "env_steps": "rollout/total_env_steps", "episodes": "rollout/total_episodes", "wall_s": "perf/elapsed_s",
    "train_success": "episode/success_rate", "eval_success": "val/success_rate", "eval_count": "val/count",
    "train_return": "episode/return", "episode_length": "episode/length",
    "valid_action_ratio": "episode/valid_action_ratio", "paw_lambda_mean": "paw/lambda_mean",
    "paw_selected_frac": "paw/selected_frac", "paw_wm_loss": "paw/wm_loss_epoch",
    "paw_clipped_token_frac": "paw/clipped_token_frac_epoch", "wm_token_acc": "wm/token_acc_epoch",
    "action_entropy": "paw/action_entropy", "policy_loss": "loss/policy_epoch", "kl": "loss/kl_epoch",
    "eval_wm_token_acc": "val/wm_token_acc", "paw_wm_term": "paw/wm_term_epoch",
    "zero_adv_group_frac": "rollout/zero_adv_group_frac", "grad_wm_over_rl": "grad/wm_over_rl",
}


def load_matrix(path: str | Path) -> dict[str, Any]:
    """Read and check a matrix file; relative paths are taken from the current folder."""
    matrix = yaml.safe_load(Path(path).read_text())
    missing = [k for k in ("base", "seeds", "arms", "runs_dir", "output") if k not in (matrix or {})]
    if missing:
        raise ValueError(f"{path}: a matrix needs {missing}")
    if not Path(matrix["base"]).exists():
        raise FileNotFoundError(f"{path}: base config {matrix['base']} not found")
    for arm, args in matrix["arms"].items():
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ValueError(f"{path}: arm {arm!r} must be a list of CLI arguments")
    matrix.setdefault("args", [])
    return matrix


def absolute_configs(args: list[str]) -> list[str]:
    """Config paths after ``--config`` made absolute, since every run works in its own folder."""
    out = list(args)
    for i, arg in enumerate(out[:-1]):
        if arg == "--config":
            out[i + 1] = str(Path(out[i + 1]).resolve())
    return out


def run_command(matrix: dict[str, Any], arm: str, seed: int, resume_from: Path | None) -> list[str]:
    """The ``paw fit`` command line of one (arm, seed)."""
    command = [sys.executable, "-m", "paw_lightning.cli", "fit", "--config", str(Path(matrix["base"]).resolve())]
    command += absolute_configs(matrix["args"]) + absolute_configs(matrix["arms"][arm])
    command += [f"--seed_everything={seed}", f"--model.model_seed={seed}", f"--data.seed={seed}",
                "--trainer.enable_progress_bar=false", "--data.progress=false"]
    if resume_from is not None:
        command.append(f"--ckpt_path={resume_from}")
    return command


def validate_command(matrix: dict[str, Any]) -> list[str]:
    """The ``paw validate`` command line of the untrained model (the base config and the matrix's args)."""
    command = [sys.executable, "-m", "paw_lightning.cli", "validate", "--config", str(Path(matrix["base"]).resolve())]
    return command + absolute_configs(matrix["args"]) + ["--trainer.enable_progress_bar=false", "--data.progress=false"]


def seed_field(seed: int | None) -> str:
    """A run's seed as the CSVs write it: empty for the untrained validation."""
    return "" if seed is None else str(seed)


def run_folder(matrix: dict[str, Any], arm: str, seed: int | None) -> Path:
    return Path(matrix["runs_dir"]) / (UNTRAINED if seed is None else Path(arm) / f"seed-{seed}")


def read_val_episodes(folder: Path) -> list[dict[str, str]]:
    """Every held-out episode a run played (its ``val_episodes.csv`` across resumed versions; for a
    validation after the same number of iterations in two versions the later one wins)."""
    by_iteration: dict[str, list[dict[str, str]]] = {}
    for version in run_versions(folder):
        rows: dict[str, list[dict[str, str]]] = {}
        path = version / "val_episodes.csv"
        for row in csv.DictReader(open(path)) if path.exists() else []:
            rows.setdefault(row["trained_iterations"], []).append(row)
        by_iteration |= rows
    return [row for iteration in sorted(by_iteration, key=int) for row in by_iteration[iteration]]


def episode_rows(matrix: dict[str, Any], kept: dict[tuple[str, str], list[dict[str, str]]]) -> list[dict[str, Any]]:
    """The held-out episodes of the whole matrix, one row each (the untrained validation first); a run
    whose folder holds none keeps its rows from ``kept`` (the episodes CSV as it was)."""
    runs = [(UNTRAINED, None)] if matrix.get("untrained_validation") else []
    runs += [(arm, int(seed)) for seed in matrix["seeds"] for arm in matrix["arms"]]
    rows: list[dict[str, Any]] = []
    for arm, seed in runs:
        played = read_val_episodes(run_folder(matrix, arm, seed))
        rows += [{"arm": arm, "seed": seed_field(seed), "trained_iterations": int(row["trained_iterations"]),
                  "position": int(row["position"]), "env_seed": int(row["seed"]), "task_type": row["task_type"],
                  "won": int(row["won"]), "return": float(row["return"]), "length": int(row["length"])}
                 for row in played] or kept.get((arm, seed_field(seed)), [])
    return rows


def run_versions(folder: Path) -> list[Path]:
    """A run's ``runs/csv/version_*`` folders, oldest first (a resumed run writes a new one)."""
    return sorted((folder / "runs" / "csv").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


def ledger_path(matrix: dict[str, Any]) -> Path:
    """The committed list of finished sittings: ``<output stem>_runs.csv`` beside the output CSV."""
    output = Path(matrix["output"])
    return output.with_name(f"{output.stem}_runs.csv")


def read_ledger(matrix: dict[str, Any]) -> list[dict[str, str]]:
    path = ledger_path(matrix)
    return list(csv.DictReader(open(path))) if path.exists() else []


def record_finished(matrix: dict[str, Any], arm: str, seed: int | None, seconds: float) -> None:
    """Append one finished sitting of (arm, seed) to the ledger."""
    rows = read_ledger(matrix) + [{"arm": arm, "seed": seed_field(seed), "seconds": f"{seconds:.1f}"}]
    write_csv(ledger_path(matrix), rows, LEDGER_COLUMNS)


def previous_rows(path: str | Path) -> dict[tuple[str, str], list[dict[str, str]]]:
    """The rows a CSV already holds, by (arm, seed) as strings; nothing when there is no such file."""
    kept: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in csv.DictReader(open(path)) if Path(path).exists() else []:
        kept.setdefault((row["arm"], row["seed"]), []).append(row)
    return kept


def read_run(folder: Path) -> list[dict[str, float]]:
    """One merged dict of metrics per iteration, across every ``runs/csv/version_*`` of a run (a resumed
    run writes a new version; the later one wins for an iteration both hold)."""
    by_epoch: dict[int, dict[str, float]] = {}
    for version in run_versions(folder):
        metrics = version / "metrics.csv"
        if not metrics.exists():
            continue
        for row in csv.DictReader(open(metrics)):
            if not row.get("epoch"):
                continue
            merged = by_epoch.setdefault(int(row["epoch"]), {})
            merged.update({k: float(v) for k, v in row.items() if v not in ("", None) and k not in ("epoch", "step")})
    return [by_epoch[e] | {"iteration": float(e)} for e in sorted(by_epoch)]


def tidy_rows(matrix: dict[str, Any], arm: str, seed: int) -> list[dict[str, Any]]:
    """The CSV rows of one (arm, seed)."""
    config = " ".join([matrix["base"], *matrix["args"], *matrix["arms"][arm]])
    rows = []
    for metrics in read_run(run_folder(matrix, arm, seed)):
        row = {"arm": arm, "config": config, "seed": seed, "iteration": int(metrics["iteration"])}
        row |= {column: metrics.get(name, "") for column, name in METRIC_OF.items()}
        rows.append(row)
    return rows


def write_csv(path: str | Path, rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def run_matrix(matrix: dict[str, Any], only: list[str] | None = None, dry_run: bool = False,
               collect_only: bool = False, extend: bool = False) -> list[dict[str, Any]]:
    """Run every unfinished (arm, seed), then write and return the tidy rows of the whole matrix
    (``collect_only``: run nothing, just gather what the run folders hold so far; ``extend``: finished
    runs resume from their last checkpoint too, to train on to a larger ``trainer.max_epochs``)."""
    arms = [a for a in matrix["arms"] if not only or a in only]
    unknown = set(only or []) - set(matrix["arms"])
    if unknown:
        raise ValueError(f"unknown arms {sorted(unknown)}; the matrix has {list(matrix['arms'])}")
    jobs = [] if collect_only else [(arm, int(seed)) for seed in matrix["seeds"] for arm in arms]
    if matrix.get("untrained_validation") and not collect_only:
        jobs.insert(0, (UNTRAINED, None))
    ledger = {(row["arm"], row["seed"]) for row in read_ledger(matrix)}
    for number, (arm, seed) in enumerate(jobs, 1):
        folder = run_folder(matrix, arm, seed)
        name = arm if seed is None else f"{arm} seed {seed}"
        checkpoints = sorted(folder.glob("runs/csv/version_*/checkpoints/last.ckpt"), key=os.path.getmtime)
        if (folder / "done").exists() and (not extend or seed is None):
            print(f"[{number}/{len(jobs)}] {name}: done, skipped", flush=True)
            continue
        if (arm, seed_field(seed)) in ledger and not checkpoints:
            print(f"[{number}/{len(jobs)}] {name}: finished elsewhere ({ledger_path(matrix)}), skipped"
                  + (" (its checkpoint is not here, so it cannot be extended)" if extend else ""), flush=True)
            continue
        resume = checkpoints[-1].resolve() if checkpoints else None
        command = validate_command(matrix) if seed is None else run_command(matrix, arm, seed, resume)
        print(f"[{number}/{len(jobs)}] {name}: {'resuming' if resume else 'starting'}", flush=True)
        if dry_run:
            print("  " + " ".join(command))
            continue
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with open(folder / "log.txt", "a") as log:
            result = subprocess.run(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            raise RuntimeError(f"{name} failed (exit {result.returncode}); see {folder / 'log.txt'}")
        seconds = time.perf_counter() - started
        (folder / "done").write_text(f"{seconds:.1f} s\n")
        record_finished(matrix, arm, seed, seconds)
        print(f"  finished in {seconds:.0f} s", flush=True)
    # A run whose folder holds nothing (a fresh clone) keeps the rows the committed CSV has for it.
    kept = previous_rows(matrix["output"])
    rows = [row for seed in matrix["seeds"] for arm in matrix["arms"]
            for row in tidy_rows(matrix, arm, int(seed)) or kept.get((arm, seed_field(seed)), [])]
    if not dry_run:
        write_csv(matrix["output"], rows)
        if matrix.get("episodes_output"):
            episodes = episode_rows(matrix, previous_rows(matrix["episodes_output"]))
            write_csv(matrix["episodes_output"], episodes, EPISODE_COLUMNS)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paw_lightning.experiments", description=__doc__.split("\n")[0])
    parser.add_argument("matrix", help="the matrix YAML file")
    parser.add_argument("--only", nargs="+", metavar="ARM", help="run only these arms (the CSV still has all)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--extend", action="store_true",
                        help="resume finished runs as well (after raising trainer.max_epochs: a larger budget)")
    parser.add_argument("--collect", action="store_true",
                        help="run nothing; write the CSV from what the run folders hold so far")
    args = parser.parse_args(argv)
    rows = run_matrix(load_matrix(args.matrix), args.only, args.dry_run, args.collect, args.extend)
    if not args.dry_run:
        print(f"wrote {len(rows)} rows to {load_matrix(args.matrix)['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
