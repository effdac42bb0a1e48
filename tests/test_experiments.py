"""The experiment runner: a matrix of configs x seeds into one tidy CSV, resuming what is unfinished."""

import csv
import json

import pytest

from paw_lightning.experiments import COLUMNS, EPISODE_COLUMNS, load_matrix, read_run, run_command, run_matrix

from .conftest import COIN_POOL
from .test_cli import ROOT, SMALL


def write_metrics(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r})
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def test_read_run_merges_rows_and_resumed_versions(tmp_path):
    write_metrics(tmp_path / "runs/csv/version_0/metrics.csv", [
        {"epoch": 0, "step": 1, "loss/policy_step": 0.5},
        {"epoch": 0, "step": 1, "episode/success_rate": 0.25, "perf/elapsed_s": 3.0},
        {"epoch": 1, "step": 2, "episode/success_rate": 0.5},
    ])
    write_metrics(tmp_path / "runs/csv/version_1/metrics.csv", [
        {"epoch": 1, "step": 2, "episode/success_rate": 0.75, "val/success_rate": 1.0},
        {"epoch": 2, "step": 3, "episode/success_rate": 1.0},
    ])
    rows = read_run(tmp_path)
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert rows[0] == {"loss/policy_step": 0.5, "episode/success_rate": 0.25, "perf/elapsed_s": 3.0, "iteration": 0}
    assert rows[1]["episode/success_rate"] == 0.75 and rows[1]["val/success_rate"] == 1.0


def test_matrix_file_is_checked_and_seeds_reach_every_seeded_part(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: configs/quickstart.yaml\nseeds: [0]\n")
    with pytest.raises(ValueError, match="needs"):
        load_matrix(bad)
    matrix = load_matrix("notebooks/textworld_matrix.yaml")
    command = run_command(matrix, "grpo", 7, None)
    assert {"--seed_everything=7", "--model.model_seed=7", "--data.seed=7"} <= set(command)
    assert command[command.index("--config", 6) + 1].endswith("configs/algorithms/no_paw.yaml")


@pytest.mark.slow
def test_matrix_runs_writes_tidy_csv_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    env = "--data.env_kwargs=" + json.dumps(dict(COIN_POOL, progress=False))
    small = [a for a in SMALL if not a.startswith("--trainer.max_epochs")] + [env, "--data.val_episodes=2",
                                                                               "--trainer.check_val_every_n_epoch=1"]
    spec = {"base": "configs/quickstart.yaml", "seeds": [3], "runs_dir": str(tmp_path / "runs"),
            "output": str(tmp_path / "results.csv"), "args": small + ["--trainer.max_epochs=1"],
            "arms": {"grpo": ["--config", "configs/algorithms/no_paw.yaml"], "grpo_paw": []},
            "untrained_validation": True, "episodes_output": str(tmp_path / "episodes.csv")}
    rows = run_matrix(spec)
    assert [(r["arm"], r["seed"], r["iteration"]) for r in rows] == [("grpo", 3, 0), ("grpo_paw", 3, 0)]
    # every held-out episode, paired across runs: the untrained model at iteration 0, each arm after 1
    episodes = list(csv.DictReader(open(tmp_path / "episodes.csv")))
    assert tuple(episodes[0]) == EPISODE_COLUMNS
    assert [(e["arm"], e["seed"], e["trained_iterations"], e["position"]) for e in episodes] == [
        ("untrained", "", "0", "0"), ("untrained", "", "0", "1"),
        ("grpo", "3", "1", "0"), ("grpo", "3", "1", "1"), ("grpo_paw", "3", "1", "0"), ("grpo_paw", "3", "1", "1")]
    assert len({e["env_seed"] for e in episodes}) == 2  # the same two held-out episodes in every run
    table = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert tuple(table[0]) == COLUMNS and float(table[1]["env_steps"]) > 0 and float(table[1]["wall_s"]) > 0
    assert table[0]["paw_wm_loss"] == "" and table[1]["paw_wm_loss"] != ""  # GRPO has no WM loss
    assert table[1]["eval_success"] != "" and float(table[1]["eval_count"]) == 2.0

    # An interrupted run (no `done` file) resumes from its checkpoint; a finished one is skipped.
    (tmp_path / "runs/grpo_paw/seed-3/done").unlink()
    finished_log = (tmp_path / "runs/grpo/seed-3/log.txt").read_text()
    spec["args"] = small + ["--trainer.max_epochs=2"]
    rows = run_matrix(spec)
    assert [(r["arm"], r["iteration"]) for r in rows] == [("grpo", 0), ("grpo_paw", 0), ("grpo_paw", 1)]
    assert (tmp_path / "runs/grpo/seed-3/log.txt").read_text() == finished_log
    assert (tmp_path / "runs/grpo_paw/seed-3/runs/csv/version_1").exists()
    assert rows[2]["wall_s"] > rows[1]["wall_s"]  # elapsed time carries over the resume
    assert run_matrix(spec, collect_only=True) == rows
    # --extend: a finished run trains on to the larger budget; one already there only reloads
    rows = run_matrix(spec, extend=True)
    assert [(r["arm"], r["iteration"]) for r in rows] == [("grpo", 0), ("grpo", 1), ("grpo_paw", 0), ("grpo_paw", 1)]


def test_a_fresh_clone_keeps_finished_runs_from_the_ledger_and_the_committed_csvs(tmp_path, monkeypatch, capsys):
    # Run folders are not committed: on a new machine only the ledger and the CSVs say what has run.
    monkeypatch.chdir(ROOT)
    spec = {"base": "configs/quickstart.yaml", "seeds": [0, 1], "runs_dir": str(tmp_path / "runs"),
            "output": str(tmp_path / "results.csv"), "args": [], "untrained_validation": True,
            "arms": {"grpo": ["--config", "configs/algorithms/no_paw.yaml"], "grpo_paw": []},
            "episodes_output": str(tmp_path / "episodes.csv")}
    ledger = [("untrained", ""), ("grpo", "0"), ("grpo_paw", "0"), ("grpo", "1")]
    (tmp_path / "results_runs.csv").write_text("arm,seed,seconds\n" + "".join(f"{a},{s},60.0\n" for a, s in ledger))
    results = [{c: "" for c in COLUMNS} | {"arm": a, "seed": s, "iteration": "0", "train_success": f"0.{i}"}
               for i, (a, s) in enumerate(ledger[1:])]
    write_metrics(tmp_path / "results.csv", results)
    episodes = [{c: "0" for c in EPISODE_COLUMNS} | {"arm": a, "seed": s, "won": str(i % 2)} for i, (a, s) in enumerate(ledger)]
    write_metrics(tmp_path / "episodes.csv", episodes)
    # grpo_paw seed 1 is not in the ledger: it would start; the other four are skipped
    run_matrix(spec, dry_run=True)
    printed = capsys.readouterr().out
    assert printed.count("finished elsewhere") == 4 and "[5/5] grpo_paw seed 1: starting" in printed
    # grpo seed 1 ran again here (a fresh metrics.csv): its rows come from its folder, the others' from the CSV
    write_metrics(tmp_path / "runs/grpo/seed-1/runs/csv/version_0/metrics.csv",
                  [{"epoch": 0, "step": 1, "episode/success_rate": 0.75}])
    rows = run_matrix(spec, collect_only=True)
    assert [(r["arm"], str(r["seed"]), str(r["train_success"])) for r in rows] == [
        ("grpo", "0", "0.0"), ("grpo_paw", "0", "0.1"), ("grpo", "1", "0.75")]
    kept = list(csv.DictReader(open(tmp_path / "episodes.csv")))
    assert [(e["arm"], e["seed"], e["won"]) for e in kept] == [(a, s, str(i % 2)) for i, (a, s) in enumerate(ledger)]
