"""Learning curves as PNG: ``paw plot RUN_DIR [RUN_DIR ...]`` and the notebook's figures.

    paw plot runs/csv/version_0 runs/csv/version_1 --out curves.png

``read_metrics`` reads a Lightning CSVLogger ``metrics.csv`` (one row per logged step; the per-iteration
values sit on the rows where they were logged); ``run_panels`` turns runs into panels (success on the
training and held-out tasks, return, world-model loss, lambda, the selected fraction, the WM/RL gradient
ratio; a panel only when some run logged it); ``draw_panels`` draws any panels, and
notebooks/analysis.py draws its mean +- std curves over seeds with it too.
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

METRICS_FILE = "metrics.csv"
# (panel title, y label, [(column, line suffix, line style)], y range or None); the columns as the CSVLogger
# writes them (a metric logged per step and per epoch gets ``_epoch`` for the per-iteration value).
RUN_PANELS = [
    ("success rate", "success", [("episode/success_rate", "train", "-"), ("val/success_rate", "held-out", "--")], (-0.02, 1.02)),
    ("episode return", "return", [("episode/return", "", "-")], None),
    ("world-model loss", "paw/wm_loss", [("paw/wm_loss_epoch", "", "-")], None),
    ("lambda (reward-adaptive weight)", "paw/lambda_mean", [("paw/lambda_mean", "", "-")], None),
    ("selected fraction", "paw/selected_frac", [("paw/selected_frac", "", "-")], (-0.02, 1.02)),
    ("WM / RL gradient norm", "grad/wm_over_rl", [("grad/wm_over_rl", "", "-")], None),
]


@dataclass
class Line:
    """One curve: ``y`` against ``x``, with an optional +- ``std`` band."""

    label: str
    x: list[float]
    y: list[float]
    std: list[float] | None = None
    color: str | None = None
    linestyle: str = "-"


@dataclass
class Panel:
    """One set of axes."""

    title: str
    ylabel: str
    lines: list[Line] = field(default_factory=list)
    ylim: tuple[float, float] | None = None
    xlabel: str = "iteration"
    yscale: str = "linear"  # or "log", for ratios that span decades


def draw_panels(panels: list[Panel], path: str | Path | None = None, ncols: int = 2,
                figsize: tuple[float, float] | None = None, legend_loc: str = "best", dpi: int = 100):
    """A matplotlib figure with one axes per panel (``ncols`` per row; one panel: a single axes); saved as
    PNG at ``dpi`` when ``path`` is given. Returns the figure (its axes' titles are the panels' titles)."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("paw plot draws with matplotlib, which is not installed: pip install matplotlib "
                          "(requirements.txt and the dev extra have it)") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ncols = max(1, min(ncols, len(panels)))
    nrows = max(1, math.ceil(len(panels) / ncols))
    figure, axes = plt.subplots(nrows, ncols, figsize=figsize or (5.0 * ncols, 3.2 * nrows), dpi=dpi, squeeze=False)
    for axis, panel in zip(axes.flat, panels):
        for line in panel.lines:
            axis.plot(line.x, line.y, marker="o" if len(line.x) < 10 else None, markersize=3, label=line.label,
                      color=line.color, linestyle=line.linestyle)
            if line.std is not None:
                axis.fill_between(line.x, [m - s for m, s in zip(line.y, line.std)], [m + s for m, s in zip(line.y, line.std)],
                                  alpha=0.15, color=line.color)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # iterations
        axis.set_xlabel(panel.xlabel)
        axis.set_ylabel(panel.ylabel)
        axis.set_yscale(panel.yscale)
        if panel.ylim is not None:
            axis.set_ylim(*panel.ylim)
        axis.set_title(panel.title)
        axis.grid(alpha=0.3)
        if panel.lines:
            axis.legend(fontsize=7, loc=legend_loc)
    for axis in list(axes.flat)[len(panels):]:
        figure.delaxes(axis)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path)
    return figure


def read_metrics(path: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """Per column of a CSVLogger ``metrics.csv``: (iterations, values), one value per iteration (the last
    logged in it), iterations in order."""
    by_column: dict[str, dict[int, float]] = {}
    for row in csv.DictReader(open(path)):
        if not row.get("epoch"):
            continue
        epoch = int(float(row["epoch"]))
        for key, value in row.items():
            if key in ("epoch", "step") or value in ("", None):
                continue
            by_column.setdefault(key, {})[epoch] = float(value)
    return {key: (sorted(values), [values[e] for e in sorted(values)]) for key, values in by_column.items()}


def find_runs(run_dirs: list[str | Path]) -> list[Path]:
    """The ``metrics.csv`` files of the given folders: the folder's own, else every one below it."""
    found = []
    for folder in map(Path, run_dirs):
        if (folder / METRICS_FILE).is_file():
            found.append(folder / METRICS_FILE)
            continue
        below = sorted(folder.rglob(METRICS_FILE))
        if not below:
            raise FileNotFoundError(f"no {METRICS_FILE} in or under {folder}: give a CSVLogger run folder "
                                    "(e.g. runs/csv/version_0) or a folder above some")
        found.extend(below)
    return found


def run_names(files: list[Path]) -> list[str]:
    """Short distinct names: the shortest tail of each run folder's path that tells the runs apart."""
    folders = [f.parent.resolve() for f in files]
    for depth in range(1, max((len(p.parts) for p in folders), default=1) + 1):
        names = ["/".join(p.parts[-depth:]) for p in folders]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in folders]


def run_panels(runs: dict[str, dict[str, tuple[list[int], list[float]]]]) -> list[Panel]:
    """The learning-curve panels of named runs (``read_metrics`` output), one colour per run; a panel
    appears when some run has one of its columns."""
    panels = []
    for title, ylabel, columns, ylim in RUN_PANELS:
        panel = Panel(title, ylabel, ylim=ylim)
        for index, (name, metrics) in enumerate(runs.items()):
            for column, suffix, style in columns:
                if column in metrics:
                    x, y = metrics[column]
                    panel.lines.append(Line(f"{name} {suffix}".strip(), x, y, color=f"C{index}", linestyle=style))
        if panel.lines:
            panels.append(panel)
    return panels


def plot_runs(run_dirs: list[str | Path], path: str | Path | None = None, names: list[str] | None = None, dpi: int = 100):
    """Learning curves of one or more runs overlaid, saved as PNG when ``path``; returns the figure."""
    files = find_runs(run_dirs)
    if names is not None and len(names) != len(files):
        raise ValueError(f"--names gives {len(names)} names for {len(files)} runs ({', '.join(map(str, files))})")
    runs = {name: read_metrics(f) for name, f in zip(names or run_names(files), files)}
    panels = run_panels(runs)
    if not panels:
        raise ValueError(f"none of {', '.join(map(str, files))} has a learning-curve column "
                         f"({', '.join(c for _, _, cols, _ in RUN_PANELS for c, _, _ in cols)}); is it a paw run?")
    return draw_panels(panels, path, dpi=dpi)


def main(args: list[str] | None = None) -> None:
    """``paw plot``: learning curves of runs as one PNG."""
    parser = argparse.ArgumentParser(prog="paw plot", description="Learning curves (PNG) from the CSV logs of paw runs.")
    parser.add_argument("run_dirs", nargs="+", help="CSVLogger run folders (runs/csv/version_N) or folders above them")
    parser.add_argument("--out", default="curves.png", help="the PNG to write (default: curves.png)")
    parser.add_argument("--names", nargs="+", help="a name per run for the legends (default: the folders' names)")
    parser.add_argument("--dpi", type=int, default=100, help="resolution of the PNG (default 100)")
    options = parser.parse_args(args)
    figure = plot_runs(options.run_dirs, options.out, options.names, options.dpi)
    print(f"wrote {options.out}: " + ", ".join(axis.get_title() for axis in figure.axes))
