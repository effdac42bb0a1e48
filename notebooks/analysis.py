"""Reading the experiment CSV (``python -m paw_lightning.experiments``): learning curves and the final table.

Used by ``notebooks/paw_vs_grpo.ipynb`` and by the test that runs that notebook. Standard library plus
matplotlib; no pandas.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path


def load(path: str | Path) -> list[dict]:
    """The CSV's rows with numbers parsed (empty cells become None)."""
    rows = []
    for raw in csv.DictReader(open(path)):
        row = {}
        for key, value in raw.items():
            if key in ("arm", "config"):
                row[key] = value
            elif value in ("", None):
                row[key] = None
            else:
                row[key] = float(value)
        row["seed"], row["iteration"] = int(row["seed"]), int(row["iteration"])
        rows.append(row)
    return rows


def arms_in_order(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["arm"] for r in rows))


def curve(rows: list[dict], arm: str, column: str) -> tuple[list[int], list[float], list[float], int]:
    """(iterations, mean over seeds, std over seeds, number of seeds) of ``column`` for one arm, at the
    iterations where every seed of the arm has a value."""
    by_iteration: dict[int, dict[int, float]] = defaultdict(dict)
    seeds = {r["seed"] for r in rows if r["arm"] == arm}
    for r in rows:
        if r["arm"] == arm and r.get(column) is not None:
            by_iteration[r["iteration"]][r["seed"]] = r[column]
    iterations = [i for i in sorted(by_iteration) if set(by_iteration[i]) == seeds]
    means = [statistics.fmean(by_iteration[i].values()) for i in iterations]
    stds = [statistics.pstdev(by_iteration[i].values()) if len(seeds) > 1 else 0.0 for i in iterations]
    return iterations, means, stds, len(seeds)


def per_seed_final(rows: list[dict], arm: str, column: str, last: int = 1) -> dict[int, float]:
    """Per seed: the mean of ``column`` over that seed's last ``last`` logged values (no seed selection)."""
    out = {}
    for seed in sorted({r["seed"] for r in rows if r["arm"] == arm}):
        values = [r[column] for r in sorted(rows, key=lambda r: r["iteration"])
                  if r["arm"] == arm and r["seed"] == seed and r.get(column) is not None]
        if values:
            out[seed] = statistics.fmean(values[-last:])
    return out


def final_table(rows: list[dict], eval_last: int = 3, train_last: int = 5) -> list[dict]:
    """One row per arm, mean and std over seeds of: held-out success (per seed, the mean of its last
    ``eval_last`` validations; fixed in advance, the same for every arm), held-out success at the last
    validation alone, training success (mean of the last ``train_last`` iterations), wall time, env steps."""
    table = []
    for arm in arms_in_order(rows):
        entry = {"arm": arm}
        for name, column, last in (("eval_success", "eval_success", eval_last), ("eval_last", "eval_success", 1),
                                   ("train_success", "train_success", train_last),
                                   ("wall_s", "wall_s", 1), ("env_steps", "env_steps", 1)):
            values = list(per_seed_final(rows, arm, column, last).values())
            entry[name] = statistics.fmean(values) if values else math.nan
            entry[name + "_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
            entry["seeds"] = len(values) if name == "eval_success" else entry.get("seeds", len(values))
        entry["eval_per_seed"] = per_seed_final(rows, arm, "eval_success", eval_last)
        entry["eval_rule"], entry["train_rule"] = eval_last, train_last
        table.append(entry)
    return table


def column_summary(rows: list[dict], column: str, last: int = 1) -> dict[str, tuple[float, float, dict[int, float]]]:
    """Per arm: (mean, std over seeds, per-seed value) of ``column``, each seed's value the mean of its
    last ``last`` logged values (e.g. the held-out WM token accuracy at the last validation)."""
    out = {}
    for arm in arms_in_order(rows):
        per_seed = per_seed_final(rows, arm, column, last)
        values = list(per_seed.values())
        if values:
            out[arm] = (statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0, per_seed)
    return out


def markdown_table(table: list[dict]) -> str:
    """The final table as Markdown (mean +- std over seeds)."""
    eval_last, train_last = (table[0]["eval_rule"], table[0]["train_rule"]) if table else (3, 5)
    lines = [f"| arm | seeds | held-out success (mean of last {eval_last} validations) | per seed | held-out, last validation | "
             f"training success (last {train_last} iterations) | wall time per run |", "|---|---|---|---|---|---|---|"]
    for e in table:
        per_seed = ", ".join(f"{v:.3f}" for v in e["eval_per_seed"].values())
        lines.append(f"| {e['arm']} | {e['seeds']} | {e['eval_success']:.3f} +- {e['eval_success_std']:.3f} | {per_seed} | "
                     f"{e['eval_last']:.3f} +- {e['eval_last_std']:.3f} | "
                     f"{e['train_success']:.3f} +- {e['train_success_std']:.3f} | {e['wall_s']:.0f} +- {e['wall_s_std']:.0f} s |")
    return "\n".join(lines)


def plot_curves(rows: list[dict], column: str, path: str | Path | None = None, title: str | None = None):
    """Mean +- std over seeds of ``column`` against iterations, one line per arm; saved when ``path``
    (drawn by ``paw_lightning.plots.draw_panels``, the function behind ``paw plot``)."""
    from paw_lightning.plots import Line, Panel, draw_panels

    panel = Panel(title or column.replace("_", " "), column.replace("_", " "), ylim=(-0.02, 1.02))
    for index, arm in enumerate(arms_in_order(rows)):  # an arm keeps its colour in every plot
        iterations, means, stds, seeds = curve(rows, arm, column)
        if iterations:
            panel.lines.append(Line(f"{arm} ({seeds} seeds)", iterations, means, stds, color=f"C{index}"))
    return draw_panels([panel], path, figsize=(6, 3.6), legend_loc="lower right")


def plot_runs(rows: list[dict], column: str, path: str | Path | None = None, title: str | None = None,
              arms: list[str] | None = None, log: bool = False):
    """``column`` against iterations, one line per run (arm and seed; an arm keeps its colour, seeds
    differ by line style): for a quantity whose spikes a mean over seeds would hide. ``log``: log y axis,
    where values <= 0 are left out."""
    from paw_lightning.plots import Line, Panel, draw_panels

    panel = Panel(title or column.replace("_", " "), column.replace("_", " "), yscale="log" if log else "linear")
    for index, arm in enumerate(arms_in_order(rows)):
        if arms is not None and arm not in arms:
            continue
        for number, seed in enumerate(sorted({r["seed"] for r in rows if r["arm"] == arm})):
            points = sorted((r["iteration"], r[column]) for r in rows if r["arm"] == arm and r["seed"] == seed
                            and r.get(column) is not None and (r[column] > 0 or not log))
            if points:
                panel.lines.append(Line(f"{arm} seed {seed}", [i for i, _ in points], [v for _, v in points],
                                        color=f"C{index}", linestyle=("-", "--", ":", "-.")[number % 4]))
    return draw_panels([panel], path, figsize=(6, 3.6))
