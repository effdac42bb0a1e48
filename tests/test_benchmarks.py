"""The benchmark scripts run end to end on tiny shapes (no timing is asserted: timings are the scripts' job)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_update_benchmark_smoke_run(tmp_path):
    out = tmp_path / "results.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/update_step.py"), "--shape", "tiny", "--device", "cpu", "--batch", "2",
         "--prompt", "16", "--action", "8", "--obs", "8", "--lora_rank", "4", "--steps", "1", "--modes", "lora,qlora,decode",
         "--decode_batch", "2", "--decode_prompt", "8", "--decode_steps", "2",
         "--out", str(out)],
        check=True, cwd=tmp_path, capture_output=True, timeout=600,
    )
    run = json.loads(out.read_text())["runs"][0]
    for mode in ("lora", "qlora"):
        assert run[mode]["paw"]["s_per_update"] > 0 and run[mode]["grpo"]["s_per_update"] > 0
        assert run[mode]["paw_over_grpo_time"] > 0
    assert run["decode"]["decode_ms_per_step"] > 0 and run["decode"]["decode_floor_ms"] > 0
    assert run["device"] == "cpu" and run["settings"]["batch"] == 2
