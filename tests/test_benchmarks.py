"""The benchmark scripts run end to end on tiny shapes (no timing is asserted: timings are the scripts' job)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from paw_lightning.rollout.engines import vllm_available

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_suite_dry_run_runs_every_step_on_cpu(tmp_path):
    """`gpu_suite.sh --dry-run`: the suite's five steps (update_step.py twice, vllm_decode.py, fit_qlora.py, ddp.py)
    on CPU with tiny shapes, one results file, copied to $OUT."""
    out, results = tmp_path / "out", tmp_path / "results.json"
    out.mkdir()
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(out))
    done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_suite.sh"), "--dry-run", "--out", str(results)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = json.loads(results.read_text())["runs"]
    assert json.loads((out / "results.json").read_text())["runs"] == runs
    assert {"update.log", "qlora7b.log", "vllm.log", "fit.log", "ddp.log"} <= {p.name for p in out.iterdir()}
    update, qlora, vllm, fit, ddp, suite = runs
    for mode in ("lora", "qlora"):
        assert update[mode]["paw"]["s_per_update"] > 0 and update[mode]["grpo"]["s_per_update"] > 0
        assert update[mode]["paw_over_grpo_time"] > 0
        assert update[mode]["paw_budget"]["s_per_update"] > 0 and update[mode]["budget_over_whole_time"] > 0
        assert "budget_over_whole_memory" in update[mode]  # NaN on CPU: no CUDA peak to read
    # a difference of two timings: on a loaded 2-core machine a tiny shape can even come out negative
    assert math.isfinite(update["decode"]["decode_ms_per_step"]) and update["decode"]["decode_floor_ms"] > 0
    assert update["device"] == "cpu" and update["settings"]["batch"] == 2
    assert set(qlora) >= {"qlora"} and "lora" not in qlora
    assert "skipped" in vllm["vllm_decode"] or math.isfinite(vllm["vllm_decode"]["decode_ms_per_step"])
    assert fit["fit_qlora"]["ok"] and len(fit["fit_qlora"]["iterations"]) == 2
    assert all(s > 0 for s in fit["fit_qlora"]["s_per_iteration"])
    assert "episode/success_rate" in fit["fit_qlora"]["iterations"][0]
    assert "--model.quantize bnb.nf4" in fit["fit_qlora"]["command"]
    # 2 processes, a vLLM engine each: the per-process GPU settings' code path, on CPU
    assert [(r["processes"], r["engine"], r["actor"]) for r in ddp["runs"]] == [(2, "vllm" if vllm_available() else "hf", "generate")]
    assert ddp["runs"][0]["episodes_per_iteration"] == 4 and ddp["device"] == "cpu"
    assert all(ddp["runs"][0][key] > 0 for key in ("rollout_env_steps_per_s", "iteration_s", "env_steps_per_s_overall"))
    assert suite["suite"]["dry_run"] and all(step["ok"] for step in suite["suite"]["steps"].values())
    assert list(suite["suite"]["steps"]) == ["update", "qlora7b", "vllm", "fit", "ddp"]


def test_gpu_suite_rejects_an_unknown_step(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_suite.sh"), "--only", "update,warp"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown step warp" in done.stderr


def test_vllm_decode_records_a_skip_without_vllm(tmp_path):
    """Where vllm is not importable the script writes a note, not a traceback, and exits 0."""
    out = tmp_path / "results.json"
    code = ("import runpy, sys; sys.modules['vllm'] = None; "
            f"sys.argv = ['vllm_decode.py', '--device', 'cpu', '--shape', 'tiny', '--out', {str(out)!r}]; "
            f"runpy.run_path({str(ROOT / 'benchmarks/vllm_decode.py')!r}, run_name='__main__')")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, capture_output=True, timeout=300)
    (run,) = json.loads(out.read_text())["runs"]
    assert "not importable" in run["vllm_decode"]["skipped"] and run["shape"] == "tiny"


@pytest.mark.slow
def test_rollout_benchmark_smoke_run(tmp_path):
    """benchmarks/rollout.py on the tiny model: both engines, both actors, and the raw vLLM replay."""
    pytest.importorskip("vllm")
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/rollout.py"), "--model", "tiny", "--dtype", "float32", "--groups", "2",
         "--group_size", "1", "--steps", "2", "--max_new_tokens", "4", "--kv_cache_gib", "1", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["runs"][0]["rows"]
    assert [(r["actor"], r["engine"]) for r in rows] == [("generate", "hf"), ("generate", "vllm"), ("score", "hf"), ("score", "vllm")]
    assert all(r["env_steps"] > 0 and r["s_per_rollout"] > 0 for r in rows)
    for row in (r for r in rows if r["engine"] == "vllm"):  # replayed twice each, from an empty prefix cache
        assert len(row["raw_vllm_s"]) == len(row["engine_replay_s"]) == 2 and math.isfinite(row["engine_over_raw"]), row
        assert row["same_tokens"], row  # seeded alike: raw vLLM and our engine sample the same responses
        assert 1.0 <= row["engine_over_inside"] < 2.0, row  # our calls contain vLLM's and add little
    assert all(r["valid_action_ratio"] == 1.0 for r in rows if r["actor"] == "score")


@pytest.mark.slow
def test_env_workers_benchmark_smoke_run(tmp_path, alfworld_data):
    out = tmp_path / "results.json"
    env = json.dumps({"data_dir": str(alfworld_data), "generate": None})
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/env_workers.py"), "--workers", "0,1", "--rollouts", "1", "--num_groups", "1",
         "--group_size", "2", "--max_steps", "2", "--env_kwargs", env, "--out", str(out)],
        check=True, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    run = json.loads(out.read_text())["runs"][0]["env_workers"]
    assert [s["env_workers"] for s in run["settings"]] == [0, 1]
    assert all(s["same_rollouts_as_first_setting"] and s["env_steps"] > 0 for s in run["settings"])
    assert run["raw_env"]["env_steps"] == run["settings"][0]["env_steps"]  # the replay took the same steps
    assert run["raw_env"]["in_process_collector_over_raw_env"] > 0
    assert done.stdout.strip().splitlines()[-1].startswith("| ")  # the README table row


@pytest.mark.slow
def test_micro_batch_and_grad_terms_benchmarks_run_on_the_tiny_quickstart(tmp_path):
    small = ["--data.num_groups=1", "--data.group_size=2", "--data.max_steps=2", "--data.mini_batch_size=4", "--data.env_workers=0",
             '--data.env_kwargs={"challenge": "tw-coin_collector", "settings": {"level": 3}, "num_train": 2, "num_eval": 1}']
    env = dict(os.environ, PAW_CACHE_DIR=os.environ["PAW_CACHE_DIR"])
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/micro_batches.py"), "--config", str(ROOT / "configs/quickstart.yaml"),
                           "--budgets", "none,64", "--", *small], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    runs = json.loads(done.stdout[done.stdout.index("{\n"):])["runs"]
    assert [r["budget"] for r in runs] == ["none", "64"] and all(r["peak_rss_gb"] > 0 for r in runs)
    assert runs[1]["pad_frac"] <= runs[0]["pad_frac"] + 1e-9  # rows grouped by length pad less
    assert runs[0]["first_step_loss"] == pytest.approx(runs[1]["first_step_loss"], rel=1e-5)  # the same step, split
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/grad_terms.py"), "--config", str(ROOT / "configs/quickstart.yaml"),
                           "--", "--trainer.max_epochs=1", *small], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(done.stdout[done.stdout.rindex("\n{\n"):])
    assert report["steps"] and all(s["grad/rl_norm"] > 0 for s in report["steps"])


def test_env_zoo_script_measures_a_family_and_writes_its_row(tmp_path):
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/envs.py"), "--families", "frozenlake", "--steps", "8",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    row = json.loads(out.read_text())["runs"][0]["envs"]["frozenlake"]
    assert row["admissible_median"] == 4 and row["steps_per_s"] > 0 and row["steps_per_s_2_workers"] > 0
    assert "| frozenlake | frozenlake_tiny.yaml |" in done.stdout and "not measured |" in done.stdout
