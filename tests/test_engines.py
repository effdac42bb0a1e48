"""The rollout engines: HF and vLLM answer alike, and vLLM follows the trainer's weights after a sync.

One vLLM engine lives per process (``vllm_engine.shared_llm``); tests that build it with the same
settings share it, so the suite pays its start-up (a few seconds) only a few times.
"""

from __future__ import annotations

import copy

import pytest
import torch

from paw_lightning.models import SMOLLM2, load_model, merged_state_dict, serving_folder
from paw_lightning.rollout.engines import HFEngine, Sampling, resolve_engine, vllm_available
import tests.envs.fakes  # noqa: F401 - registers paw-test/Corridor-v0

pytestmark = pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed")

WORDS = "you are in a kitchen there is a closed door to the north take the coin go east open box look".split()
COMMANDS = ["go north", "take coin", "open door", "look", "examine the closed box"]


def prompts_for(tokenizer, count=4, words=40, seed=0):
    rng = torch.Generator().manual_seed(seed)
    texts = [" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (words,), generator=rng)) for _ in range(count)]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def candidates_for(tokenizer, count):
    return [[tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in COMMANDS[: 2 + i % 4]] for i in range(count)]


def vllm_engine(folder, tokenizer, lora_sync="merged", lora_rank=0):
    from paw_lightning.rollout.vllm_engine import VLLMEngine, VLLMSettings

    settings = VLLMSettings(folder=folder, dtype="float32", max_model_len=2048, kv_cache_gib=1.0, lora_sync=lora_sync, lora_rank=lora_rank)
    return VLLMEngine(settings, tokenizer)


def max_gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.fixture(scope="module")
def tiny_model():
    return load_model("tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_engine(tiny_model):
    model, tokenizer = tiny_model
    engine = vllm_engine(serving_folder("tiny", 0, tokenizer), tokenizer)
    engine.sync(model)
    return engine


def test_auto_engine_is_vllm_for_generate_and_hf_for_score():
    assert resolve_engine("auto", "generate") == "vllm" and resolve_engine("auto", "score") == "hf"
    assert resolve_engine("hf", "generate") == "hf"


def test_both_engines_score_candidates_alike_on_the_tiny_model(tiny_model, tiny_engine):
    model, tokenizer = tiny_model
    prompts = prompts_for(tokenizer, count=6)
    candidates = candidates_for(tokenizer, 6)
    hf = HFEngine(model, tokenizer).score(prompts, candidates)
    vllm = tiny_engine.score(prompts, candidates)
    assert [len(s) for s in vllm] == [len(c) for c in candidates]
    assert max_gap(hf, vllm) < 1e-4
    # the same request again reads the prefix cache and must still give the same numbers
    assert max_gap(vllm, tiny_engine.score(prompts, candidates)) < 1e-5


def test_both_engines_agree_on_greedy_responses_of_the_tiny_model(tiny_model, tiny_engine):
    model, tokenizer = tiny_model
    prompts = prompts_for(tokenizer, count=4, seed=1)
    greedy = Sampling(temperature=0.0, max_new_tokens=12)
    hf = HFEngine(model, tokenizer).generate(prompts, greedy, torch.Generator())
    vllm = tiny_engine.generate(prompts, greedy, torch.Generator())
    assert [g.token_ids for g in hf] == [g.token_ids for g in vllm]
    assert [g.text for g in hf] == [g.text for g in vllm]


def test_sampled_token_logprobs_are_the_trainers(tiny_model, tiny_engine):
    """vLLM's log-prob of each sampled token (after temperature) is what the trainer computes for it."""
    model, tokenizer = tiny_model
    prompts = prompts_for(tokenizer, count=3, seed=2)
    gens = tiny_engine.generate(prompts, Sampling(temperature=0.7, max_new_tokens=6), torch.Generator().manual_seed(0))
    for prompt, gen in zip(prompts, gens):
        ids = torch.tensor([prompt + gen.token_ids])
        with torch.no_grad():
            logp = (model(ids).logits[0, len(prompt) - 1 : -1] / 0.7).log_softmax(-1)
        trainer = logp[torch.arange(len(gen.token_ids)), torch.tensor(gen.token_ids)]
        assert torch.allclose(torch.tensor(gen.logprobs), trainer, atol=1e-4)


def test_same_generator_seed_gives_the_same_samples(tiny_model, tiny_engine):
    _, tokenizer = tiny_model
    prompts = prompts_for(tokenizer, count=4, seed=3)
    sampling = Sampling(temperature=1.0, max_new_tokens=8)
    first = tiny_engine.generate(prompts, sampling, torch.Generator().manual_seed(7))
    again = tiny_engine.generate(prompts, sampling, torch.Generator().manual_seed(7))
    assert [g.token_ids for g in first] == [g.token_ids for g in again]


def test_after_an_update_and_a_sync_vllm_follows_the_new_weights(tiny_model, tiny_engine):
    """Without the sync vLLM serves the old policy; without the prefix-cache reset, stale KV blocks
    of long prompts give wrong log-probs even after the new weights are in."""
    model, tokenizer = tiny_model
    trained = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-2)
    prompts = prompts_for(tokenizer, count=4, words=200, seed=4)  # longer than a KV block: cached
    candidates = candidates_for(tokenizer, 4)
    ids = torch.tensor([prompts[0] + candidates[0][0]])
    trained(ids, labels=ids).loss.backward()
    optimizer.step()
    old = HFEngine(model, tokenizer).score(prompts, candidates)
    new = HFEngine(trained, tokenizer).score(prompts, candidates)
    assert max_gap(old, new) > 1e-2
    tiny_engine.sync(model)
    assert max_gap(tiny_engine.score(prompts, candidates), old) < 1e-4  # fills the prefix cache
    try:
        # push the new weights but keep the cache: the cached prompt blocks are the old model's
        tiny_engine.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": list(merged_state_dict(trained).items()), "is_checkpoint_format": True}
        )
        assert max_gap(tiny_engine.score(prompts, candidates), new) > 1e-3
        tiny_engine.sync(trained)  # weights and a cache reset
        assert max_gap(tiny_engine.score(prompts, candidates), new) < 1e-4
    finally:
        tiny_engine.sync(model)


def test_lora_sync_merged(tiny_model, tiny_engine):
    """A fresh adapter (B = 0) serves the base; a trained one moves vLLM as it moves HF + PEFT."""
    base, tokenizer = tiny_model
    model, _ = load_model("tiny", seed=0, lora_rank=4)
    prompts, candidates = prompts_for(tokenizer, count=4, seed=5), candidates_for(tokenizer, 4)
    tiny_engine.sync(model)
    assert max_gap(tiny_engine.score(prompts, candidates), HFEngine(base, tokenizer).score(prompts, candidates)) < 1e-4
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    peft = HFEngine(model, tokenizer).score(prompts, candidates)
    assert max_gap(peft, HFEngine(base, tokenizer).score(prompts, candidates)) > 1e-3
    tiny_engine.sync(model)
    assert max_gap(tiny_engine.score(prompts, candidates), peft) < 1e-4
    tiny_engine.sync(base)


def test_lora_sync_as_an_adapter_request(tiny_model):
    """Adapter mode: each sync is a new LoRA request; sampled tokens' log-probs follow HF + PEFT."""
    _, tokenizer = tiny_model
    model, _ = load_model("tiny", seed=0, lora_rank=4)
    engine = vllm_engine(serving_folder("tiny", 0, tokenizer), tokenizer, lora_sync="adapter", lora_rank=4)
    prompts = prompts_for(tokenizer, count=3, seed=6)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    engine.sync(model)
    first_id = engine.lora_request.lora_int_id
    gens = engine.generate(prompts, Sampling(temperature=1.0, max_new_tokens=6), torch.Generator().manual_seed(0))
    for prompt, gen in zip(prompts, gens):
        ids = torch.tensor([prompt + gen.token_ids])
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].log_softmax(-1)
        assert torch.allclose(torch.tensor(gen.logprobs), logp[torch.arange(len(gen.token_ids)), torch.tensor(gen.token_ids)], atol=1e-4)
    engine.sync(model)
    assert engine.lora_request.lora_int_id != first_id  # a reused id would serve the stale adapter
    engine.close()


@pytest.mark.slow
def test_both_engines_agree_on_smollm2():
    model, tokenizer = load_model(SMOLLM2)
    engine = vllm_engine(serving_folder(SMOLLM2, 0, tokenizer), tokenizer)
    engine.sync(model)
    turns = [[{"role": "user", "content": f"You are in a kitchen. Task: {t}. Your next action:"}] for t in ("find the coin", "open the door", "eat the apple")]
    prompts = [list(tokenizer.apply_chat_template(t, add_generation_prompt=True, tokenize=True)["input_ids"]) for t in turns]
    candidates = candidates_for(tokenizer, len(prompts))
    hf_engine = HFEngine(model, tokenizer)
    assert max_gap(hf_engine.score(prompts, candidates), engine.score(prompts, candidates)) < 1e-3
    greedy = Sampling(temperature=0.0, max_new_tokens=10)
    hf = hf_engine.generate(prompts, greedy, torch.Generator())
    vllm = engine.generate(prompts, greedy, torch.Generator())
    assert [g.token_ids for g in hf] == [g.token_ids for g in vllm]


@pytest.mark.slow
@pytest.mark.parametrize("actor", ["score", "generate"])
def test_two_iterations_of_paw_fit_on_the_vllm_engine(actor, tmp_path, monkeypatch, coin_pool_kwargs, tiny_engine):
    """A short fit with rollouts on vLLM (the module-scoped engine is reused: same settings). The
    generate actor plays the fake corridor: the untrained tiny model writes arbitrary bytes, which
    TextWorld's interpreter must not receive (issue 11 sanitises them)."""
    import csv
    import json
    from pathlib import Path

    from paw_lightning.cli import cli_main

    monkeypatch.chdir(tmp_path)
    root = Path(__file__).resolve().parents[1]
    cli = cli_main([
        "fit", "--config", str(root / "configs/quickstart.yaml"), "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false",
        "--data.num_groups=2", "--data.group_size=2", "--data.max_steps=3", "--data.mini_batch_size=8", "--data.progress=false",
        "--data.val_episodes=2", "--trainer.check_val_every_n_epoch=2",
        *(["--data.env_kwargs=" + json.dumps(dict(coin_pool_kwargs, progress=False))] if actor == "score" else
          ["--data.env_id=paw-test/Corridor-v0", "--data.env_kwargs={}", "--data.val_env_kwargs={}"]),
        f"--data.actor={actor}", "--data.max_new_tokens=8",
        "--data.engine=vllm", "--data.vllm_dtype=float32", "--data.vllm_max_model_len=2048", "--data.vllm_kv_cache_gib=1",
    ])
    assert cli.datamodule.engine is None  # torn down after fit; the vLLM engine itself stays up for reuse
    rows = list(csv.DictReader(open(tmp_path / "runs/csv/version_0/metrics.csv")))
    gaps = [float(r["rollout/engine_logprob_gap"]) for r in rows if r.get("rollout/engine_logprob_gap")]
    assert len(gaps) == 2 and max(gaps) < 1e-3  # float32 engine: the trainer's log-probs to rounding
    assert any(r.get("val/success_rate") for r in rows)
    assert all(0.0 <= float(r["episode/success_rate"]) <= 1.0 for r in rows if r.get("episode/success_rate"))
