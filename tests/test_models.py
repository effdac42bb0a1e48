import pytest
import torch

from paw_lightning.models import build_tiny_tokenizer, load_model, trunk_and_head


def test_tiny_tokenizer_is_deterministic_and_lossless():
    a, b = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    text = "-= Kitchen =-\nYou see a ✨ coin.\n<action>take coin</action>"
    assert a.decode(a(text, add_special_tokens=False)["input_ids"]) == text
    restored = build_tiny_tokenizer(tokenizer_json=a.backend_tokenizer.to_str())
    assert restored("take coin")["input_ids"] == a("take coin")["input_ids"]


def test_tiny_model_is_seeded():
    m1, _ = load_model("tiny", seed=3)
    m2, _ = load_model("tiny", seed=3)
    m3, _ = load_model("tiny", seed=4)
    w = lambda m: m.model.layers[0].self_attn.q_proj.weight  # noqa: E731
    assert torch.equal(w(m1), w(m2)) and not torch.equal(w(m1), w(m3))


def test_lora_trains_only_the_adapter():
    model, _ = load_model("tiny", lora_rank=4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    trunk, head = trunk_and_head(model)
    assert head.out_features == trunk.embed_tokens.num_embeddings


def test_unloadable_model_is_a_clear_error(tmp_path):
    with pytest.raises(OSError, match="could not load model"):
        load_model(str(tmp_path / "no-such-model"))


def test_unknown_dtype_is_rejected():
    with pytest.raises(ValueError, match="dtype"):
        load_model("tiny", dtype="float8")


def test_a_local_hugging_face_folder_loads_offline_with_lora(tmp_path):
    model, tokenizer = load_model("tiny", seed=5)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = load_model(str(tmp_path), lora_rank=2)
    ids = torch.tensor([tokenizer("go east")["input_ids"]])
    with torch.no_grad(), loaded.disable_adapter():
        assert torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
    assert loaded_tokenizer("go east")["input_ids"] == tokenizer("go east")["input_ids"]


def test_qlora_nf4_path_trains_on_cpu():
    """bitsandbytes nf4 base weights + LoRA: load, forward, backward, one optimiser step."""
    bnb = pytest.importorskip("bitsandbytes")
    model, tokenizer = load_model("tiny", quantize="bnb.nf4", lora_rank=4, gradient_checkpointing=True)
    assert isinstance(model.base_model.model.model.layers[0].mlp.down_proj.base_layer, bnb.nn.Linear4bit)
    model.train()
    ids = torch.tensor([tokenizer("go east then take the coin")["input_ids"]])
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    before = [p.detach().clone() for p in trainable]
    torch.optim.AdamW(trainable, lr=1e-2).step()
    assert any(not torch.equal(a, p) for a, p in zip(before, trainable))


def test_quantize_without_lora_is_rejected_before_loading():
    with pytest.raises(ValueError, match="lora_rank"):
        load_model("tiny", quantize="bnb.nf4")
    with pytest.raises(ValueError, match="quantize"):
        load_model("tiny", quantize="int3")


def test_a_qlora_models_merged_weights_carry_the_base_checkpoints_names():
    """What a vLLM engine loads after each update: de-quantised, LoRA merged, under the plain model's names
    (a 4-bit base_layer inside a LoRA layer once leaked out as ``...q_proj.base_layer.weight``)."""
    pytest.importorskip("bitsandbytes")
    from paw_lightning.models import merged_state_dict

    model, _ = load_model("tiny", quantize="bnb.nf4", lora_rank=4)
    plain, _ = load_model("tiny")
    merged = merged_state_dict(model)
    assert set(merged) == set(plain.state_dict())
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert merged[q_proj].shape == plain.state_dict()[q_proj].shape and merged[q_proj].is_floating_point()
