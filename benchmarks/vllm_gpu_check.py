"""The vLLM rollout engine's GPU paths, checked on a real GPU in about two minutes (the tiny model).

For the day a GPU with vLLM installed is at hand: the engine's sleep mode, weight reloads, LoRA
serving and per-request seeds are GPU-only code paths that the test suite only runs against a fake
``vllm.LLM`` (tests/test_vllm_gpu_paths.py). Not part of benchmarks/gpu_suite.sh's default steps (the
measuring image has no vLLM). Each check prints one JSON line; the exit status is 1 if any failed.

1. build with sleep mode and a LoRA adapter (rank 12, served as vLLM's 16);
2. adapter: greedy, then a rollout's level-1 sleep and the wake: greedy equals greedy before sleeping;
3. merged: reload trained weights, greedy; level-2 sleep; the next rollout (no sync from the caller:
   the engine pushes the weights again): greedy equals the reloaded weights' greedy, and HF's;
4. two sampled runs from the same generator seed are equal (per-request seeds);
5. shutting the engine down while it sleeps is clean (it is woken first);
and it prints vLLM's version and the model runner it used (V1 ``GPUModelRunner`` or Model Runner V2).

    CUDA_VISIBLE_DEVICES=0 python benchmarks/vllm_gpu_check.py
    python benchmarks/vllm_gpu_check.py --device cpu     # a smoke run of the script here (no sleep checks)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import torch

from paw_lightning.models import load_model, serving_folder
from paw_lightning.rollout.engines import HFEngine, Sampling, vllm_available

WORDS = "you are in a kitchen there is a closed door to the north take the coin go east open box look".split()
RESULTS: list[dict] = []


def report(check: str, ok: bool | None, **details) -> None:
    """One JSON line per check: ok true/false, or null when skipped."""
    line = {"check": check, "ok": ok} | details
    RESULTS.append(line)
    print(json.dumps(line), flush=True)


def prompts_for(tokenizer, count: int = 4, words: int = 40) -> list[list[int]]:
    rng = torch.Generator().manual_seed(0)
    texts = [" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (words,), generator=rng)) for _ in range(count)]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def model_runner(llm) -> str:
    """The class of the model runner that vLLM's worker in this process uses."""
    def name(worker):
        runner = getattr(getattr(worker, "worker", worker), "model_runner", None)
        return f"{type(runner).__module__}.{type(runner).__name__}"

    try:
        return llm.collective_rpc(name)[0]
    except Exception as err:  # noqa: BLE001 - a report, not a check
        return f"unknown ({type(err).__name__}: {err})"


def perturbed(model: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """A copy whose weights moved (what an update does), so that a reload is visible in the outputs."""
    trained = copy.deepcopy(model)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)).to(p) * scale)
    return trained


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda:0", help="the trainer's device (cuda:0 by default; cpu: a smoke run)")
    parser.add_argument("--dtype", default="float32", help="the engine's dtype (float32: greedy compared exactly with HF)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    args = parser.parse_args()
    if not vllm_available():
        print(json.dumps({"skipped": "vLLM is not installed"}))
        return 0
    import vllm

    from paw_lightning.rollout import vllm_shared
    from paw_lightning.rollout.vllm_engine import VLLMEngine, VLLMSettings, engine_kwargs

    gpu = vllm_shared.on_gpu()
    print(json.dumps({"vllm": vllm.__version__, "gpu_platform": gpu, "device": args.device,
                      "gpu_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}), flush=True)
    device = torch.device(args.device)
    base, tokenizer = load_model("tiny", seed=0)
    base.to(device)
    lora, _ = load_model("tiny", seed=0, lora_rank=12)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    lora.to(device)
    folder = serving_folder("tiny", 0, tokenizer)
    prompts = prompts_for(tokenizer)
    greedy, sampled = Sampling(temperature=0.0, max_new_tokens=12), Sampling(temperature=1.0, max_new_tokens=12)

    def settings(**kw) -> VLLMSettings:
        return VLLMSettings(folder=folder, dtype=args.dtype, max_model_len=1024, kv_cache_gib=1.0,
                            gpu_memory_utilization=args.gpu_memory_utilization, sleep=True, device=str(device), **kw)

    def ids(engine, sampling=greedy, seed=0):
        with engine.rollout_mode():  # sleeps on the way out (on a GPU)
            return [g.token_ids for g in engine.generate(prompts, sampling, torch.Generator().manual_seed(seed))]

    # 1-2: adapter serving with sleep level 1
    start = time.perf_counter()
    engine = VLLMEngine(settings(lora_sync="adapter", lora_rank=12), tokenizer)
    report("build: sleep mode and a rank-12 adapter", True, seconds=round(time.perf_counter() - start, 1),
           max_lora_rank=engine_kwargs(engine.settings)["max_lora_rank"], model_runner=model_runner(engine.llm))
    engine.sync(lora)
    before = ids(engine)
    level = vllm_shared.sleep_level()
    after = ids(engine)
    report("adapter: greedy after a level-1 sleep and wake equals greedy before", before == after if level == 1 else None,
           slept_at_level=level)
    # 5 (first half): the engine sleeps now; another settings' engine shuts it down, woken first
    try:
        engine = VLLMEngine(settings(lora_sync="merged"), tokenizer)
        report("shutdown while asleep (level 1) is clean", True if level else None)
    except Exception as err:  # noqa: BLE001
        report("shutdown while asleep (level 1) is clean", False, error=repr(err))
        return 1
    # 3: merged reload, level-2 sleep, the next rollout without a sync
    trained = perturbed(base)
    engine.sync(trained)
    reloaded = ids(engine)
    level = vllm_shared.sleep_level()
    again = ids(engine)  # the engine itself pushes the weights again after the level-2 sleep
    hf = [g.token_ids for g in HFEngine(trained, tokenizer).generate(prompts, greedy, torch.Generator())]
    engine.sync(base)
    base_ids = ids(engine)
    report("merged: greedy after a level-2 sleep equals the reloaded weights' greedy", reloaded == again if level == 2 else None,
           slept_at_level=level, equals_hf=reloaded == hf, differs_from_base=reloaded != base_ids)
    # 4: per-request seeds
    first, second = ids(engine, sampled, seed=7), ids(engine, sampled, seed=7)
    report("two sampled runs from the same generator seed are equal", first == second, differs_with_another_seed=first != ids(engine, sampled, seed=8))
    # 5: shutdown while asleep at level 2
    level = vllm_shared.sleep_level()
    try:
        engine.llm = None
        vllm_shared.shutdown()
        report("shutdown while asleep (level 2) is clean", True if level else None, slept_at_level=level)
    except Exception as err:  # noqa: BLE001
        report("shutdown while asleep (level 2) is clean", False, error=repr(err))
    return 0 if all(r["ok"] is not False for r in RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
