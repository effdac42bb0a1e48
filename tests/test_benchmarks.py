"""The benchmark scripts run end to end on tiny shapes (no timing is asserted: timings are the scripts' job)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from paw_lightning.rollout.engines import vllm_available

ROOT = Path(__file__).resolve().parents[1]


ALL_STEPS = ["preset", "update", "qlora7b", "lora7b", "fit", "ddp", "vllm"]


@pytest.mark.slow
def test_gpu_suite_dry_run_runs_every_step_on_cpu(tmp_path):
    """`gpu_suite.sh --dry-run --only all`: the suite's seven steps (preset.py, update_step.py three times,
    fit_qlora.py, ddp.py, vllm_decode.py) on CPU with tiny shapes, one results file, copied to $OUT; the
    cap reaches every step that takes one."""
    out, results = tmp_path / "out", tmp_path / "results.json"
    out.mkdir()
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(out))
    done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_suite.sh"), "--dry-run", "--only", "all", "--memory_cap_gb", "16",
                           "--out", str(results)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = json.loads(results.read_text())["runs"]
    assert json.loads((out / "results.json").read_text())["runs"] == runs
    assert {f"{step}.log" for step in ALL_STEPS} <= {p.name for p in out.iterdir()}
    preset, update, qlora, lora7b, fit, ddp, vllm, suite = runs
    for run in (preset, update, qlora, lora7b, fit):  # recorded; a CPU has no allocator to cap
        assert run["memory"] == {"memory_cap_gb": 16.0, "cap_applied": False, "cap_note": "not applied: no CUDA device"}
    # the paper's preset on the ALFWorld games, every phase timed
    step = preset["preset"]
    assert step["ok"] and not step["oom"] and step["env"] == "alfworld" and step["env_fallback"] is None
    assert "configs/alfworld_qwen2.5-1.5b_grpo_paw.yaml" in step["command"] and "--data.engine hf" in step["command"]
    assert all(step["phases_s"][k] > 0 for k in ("rollout", "scoring", "update", "iteration"))
    assert step["env_steps"] == 2 and step["env_steps_per_s"] > 0 and step["train_steps"] >= 1
    assert step["generated_tokens"] > 0 and step["generated_tokens_per_s"] > 0
    assert step["planner"] is None or all(k.startswith(("perf/micro_batch_budget", "perf/gradient_checkpointing", "perf/oom_retries"))
                                          for k in step["planner"])
    for mode in ("lora", "qlora"):
        for arm in ("paw", "grpo", "paw_budget"):
            report = update[mode][arm]
            assert report["s_per_update"] > 0 and not report["oom"] and report["same_baseline"] is None  # CPU
            assert report["mfu"] > 0 and report["hfu"] == pytest.approx(1.5 * report["mfu"])  # recompute: 6 vs 4 x P
        assert update[mode]["paw_over_grpo_time"] > 0 and update[mode]["budget_over_whole_time"] > 0
        assert "budget_over_whole_memory" in update[mode] and update[mode]["oom"] is False
    assert update["peak_bf16_tflops"] > 0 and update["matmul_params"] > 0 and update["settings"]["peak_matmul_size"] == 128
    # a difference of two timings: on a loaded 2-core machine a tiny shape can even come out negative
    assert math.isfinite(update["decode"]["decode_ms_per_step"]) and update["decode"]["decode_floor_ms"] > 0
    assert update["device"] == "cpu" and update["settings"]["batch"] == 2
    assert "qlora" in qlora and "lora" not in qlora and "lora" in lora7b and "qlora" not in lora7b
    assert lora7b["lora"]["paw"]["mfu"] > 0
    assert "skipped" in vllm["vllm_decode"] or math.isfinite(vllm["vllm_decode"]["decode_ms_per_step"])
    assert fit["fit_qlora"]["ok"] and len(fit["fit_qlora"]["iterations"]) == 1 and fit["fit_qlora"]["oom"] is False
    assert all(s > 0 for s in fit["fit_qlora"]["s_per_iteration"])
    assert "episode/success_rate" in fit["fit_qlora"]["iterations"][0]
    assert "--model.quantize bnb.nf4" in fit["fit_qlora"]["command"]
    # 2 processes, a vLLM engine each: the per-process GPU settings' code path, on CPU
    assert [(r["processes"], r["engine"], r["actor"]) for r in ddp["runs"]] == [(2, "vllm" if vllm_available() else "hf", "generate")]
    assert ddp["runs"][0]["episodes_per_iteration"] == 4 and ddp["device"] == "cpu"
    assert all(ddp["runs"][0][key] > 0 for key in ("rollout_env_steps_per_s", "iteration_s", "env_steps_per_s_overall"))
    assert suite["suite"]["dry_run"] and all(step["ok"] for step in suite["suite"]["steps"].values())
    assert list(suite["suite"]["steps"]) == ALL_STEPS and suite["suite"]["memory_cap_gb"] == "16"


def test_gpu_suite_rejects_an_unknown_step_or_cap(tmp_path):
    suite = str(ROOT / "benchmarks/gpu_suite.sh")
    done = subprocess.run(["bash", suite, "--only", "update,warp"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown step warp" in done.stderr
    done = subprocess.run(["bash", suite, "--memory_cap_gb", "big"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--memory_cap_gb takes a number" in done.stderr


@pytest.fixture(scope="module")
def bench():
    """The benchmark scripts' modules, imported as the scripts import each other."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import memory_cap, mfu, preset, update_step  # noqa: E401

    yield SimpleNamespace(memory_cap=memory_cap, mfu=mfu, preset=preset, update_step=update_step)
    sys.path.remove(str(ROOT / "benchmarks"))


def test_matmul_params_count_every_linear_weight_and_the_lm_head(bench):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    for name in ("tiny", "qwen2.5-1.5b", "qwen2.5-7b"):  # two layers of each: every layer is alike
        shape = bench.update_step.SHAPES[name] | {"num_hidden_layers": 2}
        with torch.device("meta"):
            model = Qwen2ForCausalLM(Qwen2Config(**shape))
        linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
        assert bench.mfu.matmul_params(shape) == linear, name
    # Qwen2.5-1.5B: 1.31e9 in the layers plus the 0.23e9 LM head
    assert bench.mfu.matmul_params(bench.update_step.SHAPES["qwen2.5-1.5b"]) == pytest.approx(1.544e9, rel=1e-3)
    figures = bench.mfu.utilisation(tokens_per_s=1000.0, params=10**9, peak_tflops=100.0, recompute=True)
    assert figures["mfu"] == pytest.approx(0.04) and figures["hfu"] == pytest.approx(0.06)
    assert bench.mfu.utilisation(1000.0, 10**9, 100.0, recompute=False)["hfu"] == pytest.approx(0.04)


def test_an_arm_out_of_memory_is_a_result_and_other_errors_raise(bench, monkeypatch):
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    assert bench.memory_cap.is_oom(oom("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert bench.memory_cap.is_oom(RuntimeError("CUDA error: out of memory")) and not bench.memory_cap.is_oom(ValueError("shape"))

    def run_arm(args, folder, quantize, wm_coef, budget):
        if wm_coef == 0.0:
            raise oom("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"s_per_update": 1.0, "peak_gb": 2.0}

    monkeypatch.setattr(bench.update_step, "run_arm", run_arm)
    args = SimpleNamespace(device="cpu", budget=40)
    results = bench.update_step.update_benchmark(args, "unused", None)
    assert results["grpo"]["oom"] and "out of memory" in results["grpo"]["error"] and results["oom"]
    assert not results["paw"]["oom"] and results["budget_over_whole_time"] == 1.0
    assert "paw_over_grpo_time" not in results  # no ratio against an arm that did not run
    monkeypatch.setattr(bench.update_step, "run_arm", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        bench.update_step.update_benchmark(args, "unused", None)
    assert bench.memory_cap.apply_memory_cap(None, "cpu") == {"memory_cap_gb": None, "cap_applied": False}


def test_the_preset_tokenizer_decodes_every_id_of_the_shape(bench):
    """A random-init Qwen2.5 shape samples any of 151,936 ids: the padded tiny tokenizer decodes each one and
    still encodes text exactly as the tiny tokenizer does."""
    from paw_lightning.models import build_tiny_tokenizer

    tokenizer = bench.preset.padded_tokenizer(151936)
    assert len(tokenizer) == 151936 and len(set(tokenizer.convert_ids_to_tokens(range(2048, 151936)))) == 151936 - 2048
    assert tokenizer("go to desk 1").input_ids == build_tiny_tokenizer()("go to desk 1").input_ids
    assert tokenizer.decode([151935, 100000, 2048]) != ""


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


def test_scienceworld_gold_script_plays_a_plan_raw_and_through_listed_commands(tmp_path):
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/scienceworld_gold.py"), "--tasks", "lifespan-longest-lived",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())["runs"][0]["scienceworld_gold"]
    assert report["episodes"] == 1 and report["raw_won"] == 1 and report["listed_won"] == 1
    assert report["steps"]["exact"] > 0 and set(report["none_commands"]) <= {"open door"}


def test_the_preset_falls_back_to_textworld_when_alfworlds_planner_cannot_load(bench, monkeypatch):
    import ctypes

    assert bench.preset.alfworld_missing() is None  # installed here (the test suite's ALFWorld tests need it)

    def old_libc(path):
        raise OSError("/lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.32' not found")

    monkeypatch.setattr(ctypes, "CDLL", old_libc)
    assert "GLIBC_2.32" in bench.preset.alfworld_missing()
    args = SimpleNamespace(device="cuda", num_groups=2, max_steps=4)
    command = bench.preset.preset_command("folder", args, bench.preset.TEXTWORLD, False, ["--data.max_new_tokens=8"])
    assert command[command.index("--data.env_id") + 1] == "paw/TextWorld-v0" and command[-1] == "--data.max_new_tokens=8"
    assert command[command.index("--data.prompt_template") + 1] == "textworld"
    command = bench.preset.preset_command("folder", args, {"split": "train", "generate": bench.preset.GAMES}, True, [])
    assert "--data.env_id" not in command and command[command.index("--trainer.accelerator") + 1] == "gpu"
    assert command[command.index("--data.num_groups") + 1] == "2" and command[command.index("--data.engine") + 1] == "hf"


def test_the_preset_reads_the_memory_planners_choice_when_logged(bench, tmp_path):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,step,rollout/env_steps,perf/micro_batch_budget_step,perf/oom_retries,loss/kl_step\n"
                       "0,0,64,,,0.1\n0,1,,11264,0,0.2\n0,2,,5632,1,0.3\n")
    found = bench.preset.last_metrics(metrics)
    assert found == {"rollout/env_steps": 64.0, "perf/micro_batch_budget_step": 5632.0, "perf/oom_retries": 1.0}
