"""Learning curves from CSVLogger files: parsing, the panels a run gets, and ``paw plot`` on a tiny run."""

import shutil

import pytest

from paw_lightning.cli import main as paw
from paw_lightning.plots import plot_runs, read_metrics, run_names, run_panels

CSV = """epoch,step,episode/success_rate,loss/policy_step,val/success_rate
0,0,,0.5,
0,1,0.25,,
0,1,,,0.5
1,2,,0.4,
1,3,0.75,,
"""


def test_metrics_are_read_per_iteration_and_panels_follow_the_columns(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(CSV)
    metrics = read_metrics(path)
    assert metrics["episode/success_rate"] == ([0, 1], [0.25, 0.75])
    assert metrics["val/success_rate"] == ([0], [0.5]) and metrics["loss/policy_step"] == ([0, 1], [0.5, 0.4])
    panels = run_panels({"a": metrics, "b": {"episode/return": ([0], [1.0])}})
    assert [p.title for p in panels] == ["success rate", "episode return"]  # no WM columns: no WM panels
    assert [(line.label, line.linestyle, line.color) for line in panels[0].lines] == [("a train", "-", "C0"), ("a held-out", "--", "C0")]
    assert panels[1].lines[0].color == "C1"  # a run keeps its colour in every panel


def test_run_names_are_the_shortest_tails_that_differ(tmp_path):
    files = [tmp_path / "paw/version_0/metrics.csv", tmp_path / "grpo/version_0/metrics.csv"]
    assert run_names(files) == ["paw/version_0", "grpo/version_0"]
    assert run_names([tmp_path / "x/version_0/metrics.csv", tmp_path / "x/version_1/metrics.csv"]) == ["version_0", "version_1"]


@pytest.mark.slow
def test_paw_plot_overlays_two_runs_in_one_png(tiny_run, tmp_path, capsys):
    run = tiny_run / "runs/csv/version_0"
    other = tmp_path / "other/version_0"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("checkpoints"))
    out = tmp_path / "curves.png"
    paw(["plot", str(run), str(other), "--names", "paw", "copy", "--out", str(out)])
    assert out.stat().st_size > 10_000 and "wrote " in capsys.readouterr().out
    figure = plot_runs([run, other], names=["paw", "copy"])
    titles = [axis.get_title() for axis in figure.axes]
    assert titles == ["success rate", "episode return", "world-model loss", "lambda (reward-adaptive weight)",
                      "selected fraction", "WM / RL gradient norm"]
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert labels == ["paw train", "paw held-out", "copy train", "copy held-out"]
    assert list(figure.axes[0].get_lines()[0].get_xdata()) == [0, 1]  # one point per iteration


def test_paw_plot_of_a_folder_without_logs_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        paw(["plot", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "paw: error: no metrics.csv in or under" in err
