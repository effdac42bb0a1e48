"""The analysis notebook runs top to bottom on the committed results CSV, and its functions are right."""

import json
import math
import shutil
import sys
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
sys.path.insert(0, str(NOTEBOOKS))
import analysis  # noqa: E402

HEADER = "arm,config,seed,iteration,env_steps,wall_s,train_success,eval_success,eval_count\n"


def test_curve_and_table_use_every_seed(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(HEADER + "".join([
        "a,c,0,0,16,1,0.0,,\n", "a,c,0,1,32,2,0.5,0.25,8\n",
        "a,c,1,0,16,1,0.5,,\n", "a,c,1,1,32,3,1.0,0.75,8\n",
        "b,c,0,0,16,1,0.0,,\n", "b,c,0,1,32,2,0.0,0.0,8\n",
    ]))
    rows = analysis.load(path)
    iterations, means, stds, seeds = analysis.curve(rows, "a", "train_success")
    assert (iterations, means, stds, seeds) == ([0, 1], [0.25, 0.75], [0.25, 0.25], 2)
    assert analysis.curve(rows, "a", "eval_success")[:2] == ([1], [0.5])
    (a, b) = analysis.final_table(rows, eval_last=3, train_last=2)
    assert a["eval_success"] == 0.5 and a["eval_success_std"] == 0.25 and a["seeds"] == 2 and a["eval_last"] == 0.5
    assert math.isclose(a["train_success"], 0.5) and a["wall_s"] == 2.5
    assert b["eval_success"] == 0.0 and b["seeds"] == 1
    assert "| a | 2 | 0.500 +- 0.250 | 0.250, 0.750 |" in analysis.markdown_table([a, b])
    with_two_validations = analysis.load(path)
    with_two_validations.append(dict(with_two_validations[1], iteration=2, eval_success=1.0))
    assert analysis.per_seed_final(with_two_validations, "a", "eval_success", last=3) == {0: 0.625, 1: 0.75}
    summary = analysis.column_summary(with_two_validations, "eval_success")
    assert summary["a"] == (0.875, 0.125, {0: 1.0, 1: 0.75}) and summary["b"] == (0.0, 0.0, {0: 0.0})


def test_plot_runs_draws_one_line_per_seed_and_drops_nonpositive_values_on_a_log_axis(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("arm,config,seed,iteration,ratio\n" + "".join([
        "a,c,0,0,0.1\n", "a,c,0,1,50\n", "a,c,1,0,0\n", "a,c,1,1,0.2\n", "b,c,0,0,0\n", "b,c,0,1,0\n",
    ]))
    rows = analysis.load(path)
    figure = analysis.plot_runs(rows, "ratio", tmp_path / "ratio.png", arms=["a"], log=True)
    (axis,) = figure.axes
    assert axis.get_yscale() == "log" and (tmp_path / "ratio.png").stat().st_size > 1000
    lines = {line.get_label(): list(line.get_ydata()) for line in axis.get_lines()}
    assert lines == {"a seed 0": [0.1, 50.0], "a seed 1": [0.2]}  # b left out; the 0 of seed 1 dropped
    linear = analysis.plot_runs(rows, "ratio")
    assert {line.get_label() for line in linear.axes[0].get_lines()} == {"a seed 0", "a seed 1", "b seed 0"}


def test_notebook_runs_top_to_bottom_on_the_committed_csv(tmp_path, monkeypatch):
    for name in ("results.csv", "results_alfworld.csv", "results_smollm2.csv", "calibration_sparse.csv", "episodes_sparse.csv", "results_sparse.csv", "analysis.py", "paired.py"):
        shutil.copy(NOTEBOOKS / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    notebook = json.loads((NOTEBOOKS / "paw_vs_grpo.ipynb").read_text())
    namespace: dict = {}
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), "notebook", "exec"), namespace)
    assert (tmp_path / "figures/eval_success.png").stat().st_size > 1000
    assert {e["arm"] for e in namespace["table"]} >= {"grpo", "grpo_paw"}
    assert {e["arm"] for e in namespace["alf_table"]} == {"grpo", "grpo_paw"}
    assert {e["arm"] for e in namespace["sm_table"]} == {"grpo", "grpo_paw", "paw_shuffled", "paw_ce"}
    assert (tmp_path / "figures/smollm2_train_success.png").stat().st_size > 1000
    assert (tmp_path / "figures/sparse_grad_wm_over_rl.png").stat().st_size > 1000
    assert len(namespace["untrained"]) == 64  # the sparse experiment's iteration-0 validation
    assert namespace["sparse_verdict"]["pairs"] == 192  # all 3 seeds of both arms validated after iteration 15
    assert {r["candidate"] for r in namespace["calibration"]} >= {"tw-coin_collector level 5", "tw-cooking recipe 1 take 1"}
