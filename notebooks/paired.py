"""Paired comparison of two arms on the same held-out episodes, and the sparse experiment's decision rule.

Validation replays the same episodes with the same random numbers in every run, so for a seed s and a
held-out episode i the two arms' outcomes pair up: d(s, i) = won(arm, s, i) - won(baseline, s, i). The
rule pre-registered in ``paw_vs_grpo.ipynb`` ("Sparse rewards"): the arm helps only if every seed's mean
difference has the same (positive) sign and the mean over all pairs exceeds twice its standard error
(the standard error of the mean of the pairs' differences). Reads the runner's ``episodes_output`` CSV
(``python -m paw_lightning.experiments MATRIX``). Standard library only.
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path


def load_episodes(path: str | Path) -> list[dict]:
    """The episodes CSV with numbers parsed (the untrained model's rows have seed None)."""
    rows = []
    for raw in csv.DictReader(open(path)):
        rows.append({"arm": raw["arm"], "seed": int(raw["seed"]) if raw["seed"] else None,
                     "trained_iterations": int(raw["trained_iterations"]), "position": int(raw["position"]),
                     "env_seed": int(raw["env_seed"]), "task_type": raw["task_type"], "won": int(raw["won"])})
    return rows


def outcomes(rows: list[dict], arm: str, seed: int | None, trained_iterations: int) -> dict[tuple[int, int], int]:
    """(position, env seed) -> won, for one run's validation after ``trained_iterations`` iterations."""
    return {(r["position"], r["env_seed"]): r["won"] for r in rows
            if r["arm"] == arm and r["seed"] == seed and r["trained_iterations"] == trained_iterations}


def paired_differences(rows: list[dict], arm: str, baseline: str, trained_iterations: int,
                       seeds: list[int]) -> dict[int, list[int]]:
    """Seed -> the per-episode differences won(arm) - won(baseline) after ``trained_iterations``, over the episodes
    both arms played (a seed where either arm has not validated after them yet is left out)."""
    out = {}
    for seed in seeds:
        a, b = outcomes(rows, arm, seed, trained_iterations), outcomes(rows, baseline, seed, trained_iterations)
        shared = sorted(a.keys() & b.keys())
        if shared:
            out[seed] = [a[k] - b[k] for k in shared]
    return out


def decide(differences: dict[int, list[int]], seeds_needed: int = 3) -> dict:
    """The decision rule on per-seed paired differences: the per-seed means, the mean and its standard
    error over all pairs, and ``helps`` = every seed positive and mean > 2 SE (None while fewer than
    ``seeds_needed`` seeds are in). ``upper`` = mean + 2 SE: an effect larger than this is ruled out."""
    pairs = [d for seed in sorted(differences) for d in differences[seed]]
    if not pairs:
        return {"per_seed": {}, "pairs": 0, "mean": None, "se": None, "upper": None, "helps": None}
    mean = sum(pairs) / len(pairs)
    se = statistics.stdev(pairs) / math.sqrt(len(pairs)) if len(pairs) > 1 else math.inf
    per_seed = {seed: sum(d) / len(d) for seed, d in sorted(differences.items())}
    helps = None
    if len(per_seed) >= seeds_needed:
        helps = all(v > 0 for v in per_seed.values()) and mean > 2 * se
    return {"per_seed": per_seed, "pairs": len(pairs), "mean": mean, "se": se, "upper": mean + 2 * se, "helps": helps}


def success_table(rows: list[dict], arms: list[str], seeds: list[int], trained_iterations: int) -> str:
    """Markdown: held-out success per arm and seed after ``trained_iterations`` iterations (episodes in brackets)."""
    lines = ["| arm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |", "|---" * (len(seeds) + 2) + "|"]
    for arm in arms:
        cells, rates = [], []
        for seed in seeds:
            won = outcomes(rows, arm, seed, trained_iterations)
            if won:
                rates.append(sum(won.values()) / len(won))
                cells.append(f"{rates[-1]:.3f} ({len(won)})")
            else:
                cells.append("-")
        mean = f"{sum(rates) / len(rates):.3f}" if rates else "-"
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines)
