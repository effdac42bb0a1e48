"""notebooks/calibrate.py: one row per (candidate, split), and a re-run measures only what is missing."""

import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "notebooks"))
import calibrate  # noqa: E402


def test_calibration_writes_a_row_per_split_and_resumes(tmp_path, monkeypatch):
    output = tmp_path / "calibration.csv"
    args = ["--model", "tiny", "--episodes", "2", "--candidates", "tw-coin_collector level 2", "--output", str(output), "--quiet"]
    assert calibrate.main(args) == 0
    rows = list(csv.DictReader(open(output)))
    assert [(r["split"], float(r["temperature"]), int(r["episodes"])) for r in rows] == [("train", 1.0, 2), ("held-out", 0.4, 2)]
    assert all(0.0 <= float(r["success"]) <= 1.0 and int(r["env_steps"]) >= 2 for r in rows)
    monkeypatch.setattr(calibrate, "measure", lambda *a, **k: (_ for _ in ()).throw(AssertionError("measured again")))
    assert calibrate.main(args) == 0  # both rows exist: nothing is played again
    assert list(csv.DictReader(open(output))) == rows
