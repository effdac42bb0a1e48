"""SmolLM2-135M-Instruct with a LoRA adapter (rank 8): training steps (forward, backward, AdamW; the mean of
``--steps``) and one forward pass on 8 x 400 random tokens, float32 vs bfloat16 weights, two back-to-back rounds (a shared
machine is noisy: compare within a round). Prints seconds per step.

    python benchmarks/smollm2_dtype.py [--rows 8] [--tokens 400] [--rounds 2] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from paw_lightning.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    ids = torch.randint(100, 40000, (args.rows, args.tokens))
    results: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for dtype in ("float32", "bfloat16"):
            model, _ = load_model("smollm2-135m-instruct", dtype=dtype, lora_rank=8, lora_alpha=16)
            model.train()
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            started = time.perf_counter()
            for _ in range(args.steps):
                loss = model(input_ids=ids).logits.float().log_softmax(-1)[..., 0].mean()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
            results.setdefault(f"{dtype} train step s", []).append(round((time.perf_counter() - started) / args.steps, 2))
            model.eval()
            with torch.no_grad():
                started = time.perf_counter()
                model(input_ids=ids)
                results.setdefault(f"{dtype} forward s", []).append(round(time.perf_counter() - started, 2))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
