"""Model and hardware FLOPs utilisation of a LoRA update, over the bf16 matmul peak measured in-process.

Accounting (NeMo AutoModel's for LoRA, so our figure sits beside its published one): every token costs
``2 x P`` FLOPs forward and ``2 x P`` for the input gradients, where ``P`` is the matmul parameters
(every linear layer of the decoder plus the LM head; the embedding lookup is not a matmul). The frozen
base weights get no weight gradient and LoRA's own adapters are too small to count; attention's score
matmuls are not counted either. So

    MFU = 4 x P x tokens/s / peak          (the model's work)
    HFU = 6 x P x tokens/s / peak          (the hardware's: gradient checkpointing recomputes the forward)

(HFU = MFU without gradient checkpointing). ``peak`` is measured here, not taken from a datasheet:
the best of a few ``size^3`` bf16 matmuls (8192^3 on a GPU; an H200 measured 769-798 TFLOP/s).
"""

from __future__ import annotations

import time

import torch


def matmul_params(shape: dict) -> int:
    """Weights of every matmul a token goes through: q, k, v, o, gate, up, down per layer, and the LM head."""
    hidden, layers = shape["hidden_size"], shape["num_hidden_layers"]
    head_dim = hidden // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * head_dim
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * shape["intermediate_size"]
    return layers * per_layer + hidden * shape["vocab_size"]


def bf16_peak_tflops(device: str, size: int = 8192, repeats: int = 10) -> float:
    """The best TFLOP/s of ``repeats`` bf16 ``size x size @ size x size`` matmuls on ``device`` (3 warm-ups)."""
    cuda = str(device).startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=g, dtype=torch.bfloat16).to(device)
    b = torch.randn(size, size, generator=g, dtype=torch.bfloat16).to(device)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    del a, b
    return 2 * size**3 / best / 1e12


def utilisation(tokens_per_s: float, params: int, peak_tflops: float, recompute: bool) -> dict:
    """MFU (4 x P per token) and HFU (6 x P with recompute, else 4 x P) over the measured peak."""
    model = 4 * params * tokens_per_s / 1e12
    hardware = (6 if recompute else 4) * params * tokens_per_s / 1e12
    return {"model_tflops": model, "mfu": model / peak_tflops, "hardware_tflops": hardware, "hfu": hardware / peak_tflops}
