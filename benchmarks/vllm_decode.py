"""vLLM decode speed for a real model shape: ms per decode step at batch 64 with 512-token prompts.

A random-init Qwen2.5-1.5B-shaped HF folder (config + bf16 weights, written by update_step.py's
``save_random_model``) is served by ``vllm.LLM`` in this process; the prompts are random token ids given
as ``prompt_token_ids``, so no real tokenizer or weights are needed. One decode step is
(time to generate 1 + N tokens - time to generate 1 token) / N, the same definition as update_step.py's
HF ``decode`` figure, next to the floor of reading every weight once per step at the measured bandwidth.

    python benchmarks/vllm_decode.py                                   # GPU, the issue's settings
    python benchmarks/vllm_decode.py --shape tiny --device cpu --batch 2 --prompt 8 --steps 2   # a smoke run
Without an importable vLLM the script records a skip note and exits 0. Results are printed as JSON
and appended to benchmarks/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from update_step import SHAPES, append_report, measured_bandwidth_gbs, save_random_model  # noqa: E402


def weight_bytes(folder: str) -> int:
    """Bytes of the saved weights (bf16 safetensors): what one decode step must read at least once."""
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


def vllm_decode_benchmark(args, folder: str) -> dict:
    """ms per decode step of ``vllm.LLM.generate`` at ``batch`` x ``prompt`` tokens, greedy, no EOS stop."""
    on_gpu = args.device.startswith("cuda")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process
    if not on_gpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM otherwise sizes it from the NUMA node
    from vllm import LLM, SamplingParams

    kwargs = dict(model=folder, skip_tokenizer_init=True, dtype="bfloat16", seed=0,
                  max_model_len=args.prompt + args.steps + 8, enable_prefix_caching=False,
                  enforce_eager=not on_gpu)  # GPU: CUDA graphs, as a real rollout runs
    if on_gpu:
        kwargs["gpu_memory_utilization"] = args.gpu_memory_utilization
    start = time.perf_counter()
    llm = LLM(**kwargs)
    startup_s = time.perf_counter() - start
    g = torch.Generator().manual_seed(0)
    prompts = [{"prompt_token_ids": torch.randint(10, 2000, (args.prompt,), generator=g).tolist()} for _ in range(args.batch)]

    def run(new_tokens: int) -> float:
        params = SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True, temperature=0.0,
                                detokenize=False)
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        assert all(len(o.outputs[0].token_ids) == new_tokens for o in outputs), "vLLM stopped early"
        return seconds

    run(2)  # warm-up
    prefill, full = run(1), run(1 + args.steps)
    step_ms = (full - prefill) / args.steps * 1e3
    bandwidth = measured_bandwidth_gbs(args.device)
    weights = weight_bytes(folder)
    return {"decode_ms_per_step": step_ms, "decode_floor_ms": weights / (bandwidth * 1e9) * 1e3,
            "bandwidth_gbs": bandwidth, "weight_gb": weights / 1e9, "prefill_s": prefill, "startup_s": startup_s,
            "tokens_per_s": args.batch * args.steps / (full - prefill)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-1.5b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--steps", type=int, default=32, help="decode steps timed")
    parser.add_argument("--gpu_memory_utilization", type=float, default=0.85)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = parser.parse_args()
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    report = {"device": device_name, "date": time.strftime("%Y-%m-%d"), "shape": args.shape,
              "settings": {k: v for k, v in vars(args).items() if k != "out"}}
    try:
        import vllm
    except Exception as err:  # noqa: BLE001 - a broken install is a skip too, with its reason
        report["vllm_decode"] = {"skipped": f"vllm is not importable here ({type(err).__name__}: {err}); "
                                            "install vllm (GPU: the `vllm` wheel for this CUDA) to measure it"}
    else:
        report["vllm_version"] = vllm.__version__
        with tempfile.TemporaryDirectory() as folder:
            save_random_model(args.shape, folder, args.device)
            report["vllm_decode"] = vllm_decode_benchmark(args, folder)
    print(json.dumps(report, indent=2))
    append_report(report, args.out)


if __name__ == "__main__":
    main()
