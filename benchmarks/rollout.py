"""Rollout speed of each engine (hf, vllm) and actor (generate, score), back to back in one process.

One TextWorld rollout per (actor, engine) with the same games, seeds and model (SmolLM2-135M-Instruct
from the offline wheel by default, bf16), then the raw vLLM calls on exactly the requests our vLLM
path sent (sampling seeded alike, so both produce the same tokens), as the reference for our overhead.
The comparison is fair: the prefix cache is reset before every replay, and the replays alternate
(raw, ours, raw, ours) so that neither side always runs on a warmer machine. Reports env steps/s,
tokens/s and seconds per rollout, and the ratios the rollout-engine issues ask for:

    python benchmarks/rollout.py                      # SmolLM2, 16 envs x 4 steps (a few minutes on 2 cores)
    python benchmarks/rollout.py --model tiny --groups 2 --group_size 2 --steps 2   # smoke run

The JSON report is printed and merged into --out (default benchmarks/results.json).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import torch

from paw_lightning.models import SMOLLM2, load_model, serving_folder
from paw_lightning.rollout.actors import make_actor
from paw_lightning.rollout.collector import Collector
from paw_lightning.rollout.datamodule import make_text_env
from paw_lightning.rollout.engines import HFEngine, RolloutEngine, Sampling, draw_seed
from paw_lightning.rollout.prompts import PromptBuilder

sys.path.insert(0, str(Path(__file__).resolve().parent))
from update_step import append_report  # noqa: E402 - a sibling script


class Recorder(RolloutEngine):
    """Wraps an engine: times its calls and keeps every request, so that they can be replayed."""

    def __init__(self, engine: RolloutEngine) -> None:
        self.engine, self.name, self.exact = engine, engine.name, engine.exact
        self.calls: list[tuple] = []  # (kind, prompts, candidates or (sampling, generator state))
        self.seconds = 0.0
        self.tokens = 0  # generated tokens (generate) or scored candidate tokens (score)

    def rollout_mode(self):
        return self.engine.rollout_mode()

    def generate(self, prompts, sampling, generator):
        self.calls.append(("generate", prompts, (sampling, generator.get_state())))
        start = time.perf_counter()
        out = self.engine.generate(prompts, sampling, generator)
        self.seconds += time.perf_counter() - start
        self.tokens += sum(len(g.token_ids) for g in out)
        return out

    def score(self, prompts, candidates):
        start = time.perf_counter()
        out = self.engine.score(prompts, candidates)
        self.seconds += time.perf_counter() - start
        self.tokens += sum(len(c) for cands in candidates for c in cands)
        self.calls.append(("score", prompts, candidates))
        return out


def raw_call(llm, kind: str, prompts, extra) -> int:
    """One recorded request sent straight to ``vllm.LLM`` (the floor our engine is measured against),
    seeded as our engine seeds it; returns the tokens it produced."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    if kind == "generate":
        sampling, state = extra
        params = SamplingParams(temperature=sampling.temperature, top_p=1.0, top_k=0, max_tokens=sampling.max_new_tokens,
                                stop=sampling.stop or None, include_stop_str_in_output=True, logprobs=0)
        torch.manual_seed(draw_seed(torch.Generator().set_state(state)))
        outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outputs)
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False, skip_reading_prefix_cache=False)
    llm.generate([TokensPrompt(prompt_token_ids=p + c) for p, cands in zip(prompts, extra) for c in cands], params, use_tqdm=False)
    return 0


def engine_call(engine, kind: str, prompts, extra) -> int:
    """The same recorded request through our engine; returns the tokens it produced."""
    if kind == "generate":
        sampling, state = extra
        return sum(len(g.token_ids) for g in engine.generate(prompts, sampling, torch.Generator().set_state(state)))
    engine.score(prompts, extra)
    return 0


def replay(llm, calls, send) -> tuple[float, int]:
    """Seconds and tokens of ``send(kind, prompts, extra)`` over the recorded calls, from an empty prefix cache."""
    llm.reset_prefix_cache()
    seconds, tokens = 0.0, 0
    for call in calls:
        start = time.perf_counter()
        tokens += send(*call)
        seconds += time.perf_counter() - start
    return seconds, tokens


def compare_with_raw(engine, calls, rounds: int = 2) -> dict:
    """Our engine vs raw vLLM on the same requests, alternating (raw, ours) ``rounds`` times. The load of
    a shared machine moves both by more than our overhead, so our replays also time the ``vllm.LLM.generate``
    calls inside them: ``engine_over_inside`` is our engine's time over vLLM's own, in the same calls."""
    raw, ours, inside = [], [], [0.0]
    llm_generate = engine.llm.generate

    def timed_generate(*args, **kwargs):
        start = time.perf_counter()
        try:
            return llm_generate(*args, **kwargs)
        finally:
            inside[0] += time.perf_counter() - start

    for _ in range(rounds):
        raw.append(replay(engine.llm, calls, functools.partial(raw_call, engine.llm)))
        engine.llm.generate = timed_generate
        try:
            ours.append(replay(engine.llm, calls, functools.partial(engine_call, engine)))
        finally:
            del engine.llm.generate  # the class's method again
    raw_s, ours_s = sum(s for s, _ in raw), sum(s for s, _ in ours)
    return {"raw_vllm_s": [round(s, 2) for s, _ in raw], "engine_replay_s": [round(s, 2) for s, _ in ours],
            "engine_over_raw": round(ours_s / max(raw_s, 1e-9), 3), "engine_over_inside": round(ours_s / max(inside[0], 1e-9), 4),
            "same_tokens": len({t for _, t in raw + ours}) == 1, "load_avg": load_average()}


def load_average() -> str:
    """The machine's 1/5/15-minute load, written beside every figure (the timings depend on it)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_rollout(args, actor_kind: str, engine: RolloutEngine, tokenizer) -> tuple[dict, Recorder]:
    env_kwargs = {"challenge": args.challenge, "settings": {"level": args.level}, "num_train": args.games, "num_eval": 1, "progress": False}
    prompts = PromptBuilder(2, actor_kind == "generate", args.max_prompt_tokens, format_example=actor_kind == "generate",
                            response_prefix="<action>" if actor_kind == "generate" else "")
    actor = make_actor(actor_kind, args.temperature, args.max_new_tokens, prompts.response_prefix)
    collector = Collector(functools.partial(make_text_env, "paw/TextWorld-v0", env_kwargs), args.groups, args.group_size,
                          args.steps, prompts, actor)
    recorder = Recorder(engine)
    start = time.perf_counter()
    rollout = collector.collect(recorder, tokenizer, list(range(args.groups)), torch.Generator().manual_seed(0), progress=False)
    seconds = time.perf_counter() - start
    collector.close()
    row = {
        "actor": actor_kind,
        "engine": engine.name,
        "s_per_rollout": round(seconds, 2),
        "engine_s": round(recorder.seconds, 2),
        "env_steps": rollout.env_steps,
        "env_steps_per_s": round(rollout.env_steps / seconds, 3),
        "tokens": recorder.tokens,
        "tokens_per_s": round(recorder.tokens / max(recorder.seconds, 1e-9), 1),
        "success_rate": sum(e.won for e in rollout.episodes) / len(rollout.episodes),
        "valid_action_ratio": sum(t.valid for t in rollout.transitions) / max(len(rollout), 1),
        "load_avg": load_average(),
    }
    return row, recorder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=SMOLLM2)
    parser.add_argument("--dtype", default="bfloat16", help="trainer (HF engine) and vLLM dtype")
    parser.add_argument("--challenge", default="tw-coin_collector")
    parser.add_argument("--level", type=int, default=3)
    parser.add_argument("--games", type=int, default=4)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--group_size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--max_prompt_tokens", type=int, default=768)
    parser.add_argument("--actors", default="generate,score")
    parser.add_argument("--kv_cache_gib", type=float, default=2.0)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = parser.parse_args()

    from paw_lightning.rollout.vllm_engine import VLLMEngine, VLLMSettings

    model, tokenizer = load_model(args.model, dtype=args.dtype)
    model.eval()
    settings = VLLMSettings(folder=serving_folder(args.model, 0, tokenizer), dtype=args.dtype, max_model_len=args.max_prompt_tokens + 256,
                            kv_cache_gib=args.kv_cache_gib)
    start = time.perf_counter()
    vllm = VLLMEngine(settings, tokenizer)
    startup = time.perf_counter() - start
    start = time.perf_counter()
    vllm.sync(model)
    sync_s = time.perf_counter() - start
    report = {"benchmark": "rollout", "device": "cuda" if torch.cuda.is_available() else "cpu", "date": time.strftime("%Y-%m-%d"),
              "settings": {k: v for k, v in vars(args).items() if k != "out"}, "threads": torch.get_num_threads(),
              "vllm_startup_s": round(startup, 1), "vllm_sync_s": round(sync_s, 3), "rows": []}
    # Warm both engines up (first calls build kernels and caches), so the rows compare steady states.
    warm = [tokenizer("You are in a room. Take the coin.", add_special_tokens=False)["input_ids"]]
    for engine in (HFEngine(model, tokenizer), vllm):
        engine.generate(warm, Sampling(1.0, 4), torch.Generator().manual_seed(0))
        engine.score(warm, [[tokenizer(" take coin", add_special_tokens=False)["input_ids"]]])
    for actor_kind in args.actors.split(","):
        rows = {}
        for engine in (HFEngine(model, tokenizer), vllm):
            rows[engine.name], recorder = run_rollout(args, actor_kind, engine, tokenizer)
            print(json.dumps(rows[engine.name]), flush=True)
        rows["vllm"] |= compare_with_raw(vllm, recorder.calls)  # the vLLM recorder's requests, replayed
        rows["vllm"]["speedup_engine_s"] = round(rows["hf"]["engine_s"] / max(rows["vllm"]["engine_s"], 1e-9), 2)
        rows["vllm"]["speedup_rollout"] = round(rows["hf"]["s_per_rollout"] / max(rows["vllm"]["s_per_rollout"], 1e-9), 2)
        report["rows"] += [rows["hf"], rows["vllm"]]
    print(json.dumps(report, indent=2))
    out = Path(args.out)
    merged = json.loads(out.read_text()) if out.exists() else {}
    merged.setdefault("runs", []).append(report)
    out.write_text(json.dumps(merged, indent=2) + "\n")


if __name__ == "__main__":
    main()
