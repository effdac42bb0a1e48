"""PaW vs GRPO-only update cost, QLoRA peak memory and decode speed for real model shapes.

Random-init models of the real shapes (built from their configs: their weights cannot be downloaded
here) with LoRA (bf16) or QLoRA (nf4) run one PaWModule training step on a synthetic mini-batch of
``batch x (prompt + action + observation)`` tokens, with the world-model loss on (PaW) and off (GRPO).

    python benchmarks/update_step.py --shape qwen2.5-1.5b --device cuda          # the issue's settings
    python benchmarks/update_step.py --shape tiny --device cpu --steps 1         # a smoke run
Results are printed as JSON and merged into benchmarks/results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_cap import apply_memory_cap, is_oom, on_cuda, oom_result, peak_memory, settle  # noqa: E402
from mfu import bf16_peak_tflops, matmul_params, utilisation  # noqa: E402

SHAPES = {  # the public configs of the models the paper trains (0.5B: the suite's end-to-end fit)
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=2048, tie_word_embeddings=True),
}


def save_random_model(shape: str, folder: str, device: str = "cpu", tokenizer=None) -> str:
    """Write a random-init Qwen2 model of ``shape`` (bf16) and a tokenizer (default the tiny one) to ``folder``.

    The weights are drawn on ``device`` directly in bf16 (a 7B model initialises in seconds on a GPU,
    minutes on a CPU); the tiny tokenizer's ids (< 2048) are valid ids of every shape's vocabulary.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from paw_lightning.models import build_tiny_tokenizer

    tokenizer = tokenizer or build_tiny_tokenizer()
    config = Qwen2Config(max_position_embeddings=32768, rope_theta=1e6, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id, **SHAPES[shape])
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(default_dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return folder


def synthetic_batch(batch: int, prompt: int, action: int, obs: int, vocab: int, device: str) -> dict:
    """A generate-actor mini-batch: every row ``[prompt | action | obs]`` of the given lengths."""
    from paw_lightning.rollout.batch import build_rows

    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(10, vocab - 1, (n,), generator=g).tolist()  # noqa: E731
    rows = build_rows([ids(prompt) for _ in range(batch)], [[ids(action)] for _ in range(batch)], 0,
                      [ids(obs) for _ in range(batch)], [0] * batch)
    rows |= {
        "chosen": torch.zeros(batch, dtype=torch.long), "num_candidates": torch.ones(batch, dtype=torch.long),
        "mode": "generate", "temperature": 1.0, "advantages": torch.randn(batch, generator=g),
        "wm_selected": torch.ones(batch, dtype=torch.bool), "wm_weight": torch.ones(batch),
    }
    rows["unit_mask"] = rows["action_mask"]
    rows["old_logprobs"] = torch.full(rows["action_mask"].shape, -2.0)
    rows["ref_logprobs"] = torch.full(rows["action_mask"].shape, -2.0)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in rows.items()}


def time_updates(module, batch: dict, steps: int, device: str) -> dict:
    """Mean seconds per update (forward, backward, optimiser step) and peak memory in GB: over the timed
    steps (``peak_gb``, as the first GPU run read it) and over the whole arm since the last ``settle``
    (model load and warm-up step included: ``arm_peak_*``, what a card must hold)."""
    optimizer = module.configure_optimizers()
    module.log = module.log_dict = lambda *a, **k: None
    cuda = on_cuda(device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    warm = {}
    for i in range(steps + 1):  # the first step warms up kernels and allocator
        if i == 1:
            sync()
            warm = peak_memory(device)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
        loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync()
    seconds = (time.perf_counter() - start) / steps
    timed = peak_memory(device)
    arm = {f"arm_{k}": (max(v, warm[k]) if cuda else None) for k, v in timed.items()}
    return {"s_per_update": seconds, "peak_gb": timed["peak_allocated_gb"] if cuda else float("nan"),
            "peak_reserved_gb": timed["peak_reserved_gb"], **arm}


def run_arm(args, folder: str, quantize: str | None, wm_coef: float, budget: int | None) -> dict:
    """One arm: load the module, time ``args.steps`` updates, report time, memory and utilisation."""
    from paw_lightning.module import PaWModule

    module = PaWModule(model_name=folder, dtype="bfloat16", lora_rank=args.lora_rank, quantize=quantize,
                       gradient_checkpointing=True, kl_coef=0.01, wm_coef=wm_coef, lr=1e-5,
                       max_tokens_per_micro_batch=budget).to(args.device)
    module.train()
    vocab = module.model.config.vocab_size
    batch = synthetic_batch(args.batch, args.prompt, args.action, args.obs, min(vocab, 2048), args.device)
    result = time_updates(module, batch, args.steps, args.device)
    result["tokens_per_s"] = args.batch * (args.prompt + args.action + args.obs) / result["s_per_update"]
    result |= utilisation(result["tokens_per_s"], matmul_params(SHAPES[args.shape]), args.peak_tflops, recompute=True)
    return result


def update_benchmark(args, folder: str, quantize: str | None) -> dict:
    """The PaW, GRPO and (with ``--budget``) split-PaW arms, one after another, each from the same
    allocated baseline: everything the previous arm held is freed and collected first, and each arm
    records the GB allocated when it started (``start_allocated_gb``) and whether that was the baseline.
    An arm that runs out of memory records ``oom`` (a result under ``--memory_cap_gb``)."""
    results = {}
    arms = [("paw", 1.0, None), ("grpo", 0.0, None)] + ([("paw_budget", 1.0, args.budget)] if args.budget else [])
    baseline = settle(args.device)
    for arm, wm_coef, budget in arms:
        start = settle(args.device)
        try:
            results[arm] = {"oom": False} | run_arm(args, folder, quantize, wm_coef, budget)
        except Exception as err:  # noqa: BLE001 - an OOM is the cap's answer; anything else is a failure
            if not is_oom(err):
                raise
            results[arm] = oom_result(err)
        results[arm] |= {"start_allocated_gb": start,
                         "same_baseline": None if baseline is None else abs(start - baseline) < 0.01}
    settle(args.device)
    ok = {arm: r for arm, r in results.items() if not r["oom"]}
    if {"paw", "grpo"} <= set(ok):
        results["paw_over_grpo_time"] = ok["paw"]["s_per_update"] / ok["grpo"]["s_per_update"]
        results["paw_over_grpo_memory"] = ok["paw"]["peak_gb"] / ok["grpo"]["peak_gb"]
    if {"paw", "paw_budget"} <= set(ok):  # the same mini-batch in micro-batches of at most --budget tokens
        results["budget_over_whole_time"] = ok["paw_budget"]["s_per_update"] / ok["paw"]["s_per_update"]
        results["budget_over_whole_memory"] = ok["paw_budget"]["peak_gb"] / ok["paw"]["peak_gb"]
    results["oom"] = len(ok) < len(arms)
    return results


def measured_bandwidth_gbs(device: str, gigabytes: float = 1.0) -> float:
    """Device memory bandwidth from copying a large buffer (read + write)."""
    n = int(gigabytes * 1e9 / 2)
    src = torch.empty(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    dst.copy_(src)
    sync()
    start = time.perf_counter()
    for _ in range(5):
        dst.copy_(src)
    sync()
    return 2 * n * 2 * 5 / (time.perf_counter() - start) / 1e9


def decode_benchmark(args, folder: str) -> dict:
    """ms per decode step of the generate path at ``decode_batch`` x ``decode_prompt`` tokens, and the floor
    of reading every weight once per step at the measured bandwidth."""
    from paw_lightning.models import load_model

    model, _ = load_model(folder, dtype="bfloat16")
    model = model.to(args.device).eval()
    ids = torch.randint(10, 2000, (args.decode_batch, args.decode_prompt), device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def run(new_tokens: int) -> float:
        sync()
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        sync()
        return time.perf_counter() - start

    run(2)  # warm-up
    prefill, full = run(1), run(1 + args.decode_steps)
    step_ms = (full - prefill) / args.decode_steps * 1e3
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = measured_bandwidth_gbs(args.device)
    return {"decode_ms_per_step": step_ms, "decode_floor_ms": weight_bytes / (bandwidth * 1e9) * 1e3,
            "bandwidth_gbs": bandwidth, "weight_gb": weight_bytes / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-1.5b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=2048)
    parser.add_argument("--action", type=int, default=512)
    parser.add_argument("--obs", type=int, default=256)
    parser.add_argument("--lora_rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--budget", type=int, default=None,
                        help="also time PaW with max_tokens_per_micro_batch = this (the same mini-batch, split)")
    parser.add_argument("--modes", default="lora,qlora,decode", help="comma list of lora (bf16), qlora (nf4), decode")
    parser.add_argument("--decode_batch", type=int, default=64)
    parser.add_argument("--decode_prompt", type=int, default=512)
    parser.add_argument("--decode_steps", type=int, default=32)
    parser.add_argument("--memory_cap_gb", type=float, default=None,
                        help="cap this process's CUDA allocator at this many GiB (a card's size); OOM is recorded")
    parser.add_argument("--peak_matmul_size", type=int, default=None,
                        help="the bf16 peak for MFU/HFU is measured on matmuls of this size (default 8192 on a GPU, 512 on CPU)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = parser.parse_args()
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    report = {"device": device_name, "date": time.strftime("%Y-%m-%d"), "shape": args.shape,
              "settings": {k: v for k, v in vars(args).items() if k != "out"}}
    with tempfile.TemporaryDirectory() as folder:
        save_random_model(args.shape, folder, args.device)
        args.peak_tflops = bf16_peak_tflops(args.device, args.peak_matmul_size or (8192 if on_cuda(args.device) else 512))
        report["memory"] = apply_memory_cap(args.memory_cap_gb, args.device)
        report["peak_bf16_tflops"] = args.peak_tflops
        report["matmul_params"] = matmul_params(SHAPES[args.shape])
        for mode in args.modes.split(","):
            if mode == "decode":
                try:
                    settle(args.device)
                    report[mode] = {"oom": False} | decode_benchmark(args, folder) | peak_memory(args.device)
                except Exception as err:  # noqa: BLE001 - an OOM under a cap is a result
                    if not is_oom(err):
                        raise
                    report[mode] = oom_result(err)
            else:
                report[mode] = update_benchmark(args, folder, "bnb.nf4" if mode == "qlora" else None)
    print(json.dumps(report, indent=2))
    append_report(report, args.out)


def append_report(report: dict, out: str) -> None:
    """Add one run's report to the ``runs`` list of the results file (created when missing)."""
    path = Path(out)
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.setdefault("runs", []).append(report)
    path.write_text(json.dumps(merged, indent=2) + "\n")


if __name__ == "__main__":
    main()
