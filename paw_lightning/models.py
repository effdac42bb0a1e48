"""Build the causal LM and its tokenizer from one spec: ``tiny`` or a Hugging Face id / local path.

``tiny`` is a small Qwen2-shaped model (random init from a fixed seed) with a byte-level BPE tokenizer
trained on the fixed text grammars that ship in the textworld wheel, so it needs no download and is the
same on every machine. It is for CPU tests and the quickstart. Any other name goes to
``AutoModelForCausalLM.from_pretrained``; ``lora_rank > 0`` wraps the model with a peft LoRA adapter.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import torch
from torch import nn

TINY = "tiny"
PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class TinySize:
    """Shape of the ``tiny`` model: about 0.7 M parameters at the defaults."""

    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 4096


def tiny_tokenizer_corpus() -> list[str]:
    """The files the tiny tokenizer is trained on: TextWorld's text grammars (fixed per textworld version)."""
    import textworld

    root = os.path.dirname(textworld.__file__)
    files = sorted(glob.glob(os.path.join(root, "**", "*.twg"), recursive=True))
    if not files:
        raise FileNotFoundError(f"no TextWorld text grammars (*.twg) under {root}; reinstall textworld")
    return files


def build_tiny_tokenizer(vocab_size: int = TinySize.vocab_size, tokenizer_json: str | None = None):
    """The tiny model's tokenizer: byte-level BPE (never an unknown token), rebuilt from JSON when given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if tokenizer_json is not None:
        backend = Tokenizer.from_str(tokenizer_json)
    else:
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[PAD_TOKEN, EOS_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        backend.train(tiny_tokenizer_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN)


def build_tiny_model(tokenizer, size: TinySize = TinySize(), seed: int = 0) -> nn.Module:
    """A Qwen2-shaped causal LM with random weights drawn from ``seed``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers,
        num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_key_value_heads,
        max_position_embeddings=size.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(config)


def load_model(
    name: str = TINY,
    dtype: str = "float32",
    lora_rank: int = 0,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    lora_target_modules: str | list[str] = "all-linear",
    trust_remote_code: bool = False,
    seed: int = 0,
    tokenizer_json: str | None = None,
):
    """Return ``(model, tokenizer)`` for a spec; see ``PaWModule`` for what each argument means."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {list(DTYPES)}")
    if name == TINY:
        tokenizer = build_tiny_tokenizer(tokenizer_json=tokenizer_json)
        model = build_tiny_model(tokenizer, seed=seed).to(DTYPES[dtype])
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(
                name, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
            )
        except OSError as err:
            raise OSError(
                f"could not load model {name!r}: {err}. Give a local folder with config.json and weights, "
                "a Hugging Face id reachable from this machine, or model_name: tiny for a CPU run."
            ) from err
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    if lora_rank > 0:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=lora_rank,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=lora_target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    return model, tokenizer


def trunk_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The transformer trunk (input ids -> hidden states) and the LM output head of a causal LM.

    Calling the trunk and the head separately lets the loss apply the head only at loss positions.
    LoRA layers live inside the trunk, so the adapter is active through this path too.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()
