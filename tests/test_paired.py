"""notebooks/paired.py: paired held-out differences and the sparse experiment's decision rule, on hand numbers."""

import csv
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "notebooks"))
import paired  # noqa: E402


def rows_of(arm, seed, wins, trained=15):
    return [{"arm": arm, "seed": seed, "trained_iterations": trained, "position": i, "env_seed": 100 + i, "task_type": "t",
             "won": w} for i, w in enumerate(wins)]


def test_paired_differences_match_episodes_and_skip_unfinished_seeds():
    rows = rows_of("paw", 0, [1, 1, 0, 0]) + rows_of("grpo", 0, [1, 0, 1, 0]) + rows_of("paw", 1, [1, 0, 0, 0])
    rows += rows_of("grpo", 0, [0, 0, 0, 0], trained=0)  # another iteration is not mixed in
    assert paired.paired_differences(rows, "paw", "grpo", 15, [0, 1]) == {0: [0, 1, -1, 0]}  # seed 1: no grpo yet


def test_decision_rule_needs_every_seed_positive_and_two_standard_errors():
    # 3 seeds x 4 pairs: differences 1 in 6 pairs, 0 in the other 6: mean 0.5, sd sqrt(3/11), se sd / sqrt(12)
    helps = paired.decide({0: [1, 1, 0, 0], 1: [1, 0, 1, 0], 2: [0, 1, 1, 0]})
    se = math.sqrt(12 * 0.25 / 11) / math.sqrt(12)
    assert helps["pairs"] == 12 and helps["mean"] == 0.5 and math.isclose(helps["se"], se)
    assert helps["per_seed"] == {0: 0.5, 1: 0.5, 2: 0.5} and helps["helps"] is True
    assert math.isclose(helps["upper"], 0.5 + 2 * se)
    # the same mean, but one seed at 0: signs disagree, so it does not help
    assert paired.decide({0: [1, 1, 1, 0], 1: [1, 1, 1, 0], 2: [0, 0, 0, 0]})["helps"] is False
    # every seed positive (0.25) but the mean 0.25 is one SE (sd sqrt(0.75) / sqrt(12) = 0.25): no
    within = paired.decide({s: [1, -1, 1, 0] for s in range(3)})
    assert math.isclose(within["se"], 0.25) and within["helps"] is False
    assert paired.decide({0: [1, 0], 1: [1, 0]})["helps"] is None  # fewer than 3 seeds: no verdict yet
    assert paired.decide({})["mean"] is None


def test_episodes_csv_round_trip_and_success_table(tmp_path):
    path = tmp_path / "episodes.csv"
    columns = ("arm", "seed", "trained_iterations", "position", "env_seed", "task_type", "won", "return", "length")
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerow({"arm": "untrained", "seed": "", "trained_iterations": 0, "position": 0, "env_seed": 7, "task_type": "t",
                         "won": 0, "return": 0.0, "length": 8})
        writer.writerow({"arm": "grpo", "seed": 0, "trained_iterations": 15, "position": 0, "env_seed": 7, "task_type": "t",
                         "won": 1, "return": 10.0, "length": 3})
    rows = paired.load_episodes(path)
    assert rows[0]["seed"] is None and rows[1]["seed"] == 0 and rows[1]["won"] == 1
    assert paired.outcomes(rows, "untrained", None, 0) == {(0, 7): 0}
    table = paired.success_table(rows, ["grpo", "grpo_paw"], [0, 1], 15)
    assert "| grpo | 1.000 (1) | - | 1.000 |" in table and "| grpo_paw | - | - | - |" in table
