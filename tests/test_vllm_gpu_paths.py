"""The vLLM engine's GPU-only paths, on this CPU: a fake ``vllm.LLM`` that behaves as vLLM's sleep mode
and Model Runner V2 do (read from vLLM 0.32's source), with vLLM's platform patched to a GPU.

The fake raises where real vLLM would go wrong silently or crash: a request after a level-2 sleep
before the weights are reloaded (garbage outputs), a request while asleep (vLLM's scheduler is paused
until the engine is fully awake), a shutdown while asleep (CUDA driver errors). Like Model Runner V2,
it samples an unseeded request from NumPy's global RNG and ignores torch's.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import tests.envs.fakes  # noqa: F401 - registers paw-test/Corridor-v0
from paw_lightning.rollout.engines import Sampling, vllm_available

pytestmark = pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed")


class FakeLLM:
    """Records every call; keeps vLLM's sleep-mode state and refuses what vLLM would get wrong."""

    built: list["FakeLLM"] = []

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs
        self.calls: list[tuple] = []
        self.params: list = []  # the SamplingParams of every generate call
        self.level, self.woken, self.weights_ok = 0, set(), True
        self.llm_engine = SimpleNamespace(engine_core=SimpleNamespace(shutdown=self._shutdown))
        FakeLLM.built.append(self)

    def sleep(self, level: int = 1) -> None:
        self.calls.append(("sleep", level))
        self.level, self.woken = max(level, self.level), set()
        if level >= 2:
            self.weights_ok = False  # level 2 discards the weights; waking maps back unfilled memory

    def wake_up(self, tags=None) -> bool:
        self.calls.append(("wake_up", tuple(tags) if tags else None))
        self.woken |= set(tags or ("weights", "kv_cache"))
        if {"weights", "kv_cache"} <= self.woken:
            self.level, self.woken = 0, set()
        return self.level == 0

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        self.calls.append(("rpc", method))
        if method == "reload_weights":
            assert self.level == 0 or "weights" in self.woken, "reload into weights that are not mapped"
            assert self.level == 0 or "kv_cache" not in self.woken, "KV cache woken before the reload (vLLM's order: weights, reload, kv_cache)"
            self.weights_ok = True
        return [None]

    def reset_prefix_cache(self) -> bool:
        self.calls.append(("reset_prefix_cache",))
        return True

    def generate(self, requests, params, use_tqdm=False, lora_request=None):
        assert self.level == 0, "request to a sleeping engine (vLLM's scheduler is paused)"
        assert self.weights_ok, "request after a level-2 sleep without a reload: garbage outputs"
        self.calls.append(("generate", len(requests)))
        params = params if isinstance(params, list) else [params] * len(requests)
        self.params.append(params)
        outputs = []
        for p in params:  # Model Runner V2: an unseeded request draws its seed from NumPy's global RNG
            rng = np.random.default_rng(p.seed if p.seed is not None else np.random.randint(0, 2**31))
            ids = [int(t) for t in rng.integers(3, 50, size=3)]
            out = SimpleNamespace(token_ids=ids, logprobs=[{t: SimpleNamespace(logprob=-1.0)} for t in ids])
            outputs.append(SimpleNamespace(outputs=[out]))
        return outputs

    def _shutdown(self) -> None:
        assert self.level == 0, "shutdown of a sleeping engine (CUDA driver errors, vLLM issue #36651)"
        self.calls.append(("shutdown",))


class Tokenizer:
    eos_token_id, pad_token_id = 2, 0

    def decode(self, ids, skip_special_tokens=True) -> str:
        return " ".join(map(str, ids))


@pytest.fixture
def gpu(monkeypatch):
    """vLLM's platform a GPU of compute capability ``gpu.capability``, its LLM the fake; the process's
    real engine (if an earlier test built one) is set aside and put back afterwards."""
    import vllm

    from paw_lightning.rollout import vllm_compat, vllm_shared

    saved = dict(vllm_shared._LIVE)
    vllm_shared._LIVE.clear()
    state = SimpleNamespace(capability=(9, 0))
    monkeypatch.setattr(vllm_compat, "gpu_platform", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: state.capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    monkeypatch.setattr(vllm, "LLM", FakeLLM)
    for name in ("VLLM_ENABLE_V1_MULTIPROCESSING", "RANK", "LOCAL_RANK", "WORLD_SIZE", "PYTORCH_CUDA_ALLOC_CONF", "OMP_NUM_THREADS", "VLLM_LOGGING_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    FakeLLM.built.clear()
    yield state
    vllm_shared._LIVE.clear()  # a fake left there (shutdown's gc.collect would cost a second per test)
    vllm_shared._LIVE.update(saved)


def settings(**overrides):
    from paw_lightning.rollout.vllm_engine import VLLMSettings

    return VLLMSettings(**{"folder": "fake", "device": "cuda:0", "sleep": True} | overrides)


def engine(**overrides):
    from paw_lightning.rollout.vllm_engine import VLLMEngine

    return VLLMEngine(settings(**overrides), Tokenizer())


def rollout(eng, generator=None):
    with eng.rollout_mode():
        return eng.generate([[5, 6, 7], [5, 6, 8]], Sampling(temperature=1.0, max_new_tokens=3), generator or torch.Generator().manual_seed(0))


def test_validation_between_a_step_and_a_rollout_never_generates_on_dropped_weights(gpu):
    from paw_lightning.rollout.datamodule import RolloutDataModule

    dm = RolloutDataModule(env_id="paw-test/Corridor-v0", engine="vllm", vllm_lora_sync="merged", env_workers=0)
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0, local_rank=0, strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    dm._serving_folder = lambda module: "fake"
    module = SimpleNamespace(model=nn.Linear(3, 2), tokenizer=Tokenizer(), global_step=0,
                             hparams=SimpleNamespace(lora_rank=0, trust_remote_code=False, quantize=None))
    rollout(dm.engine_for(module))  # iteration 0: synced, then level-2 sleep
    module.global_step = 1  # the update
    rollout(dm.engine_for(module))  # validation: the step is new, so a sync, then level-2 sleep again
    rollout(dm.engine_for(module))  # next rollout: no step since, so no sync from the DataModule
    llm = FakeLLM.built[-1]
    assert llm.kwargs["enable_sleep_mode"] is True and llm.calls.count(("sleep", 2)) == 3
    assert llm.calls.count(("rpc", "reload_weights")) == 3  # the third one pushed by the engine itself
    # vLLM's RL order after a level-2 sleep: the weights' memory, the reload, then the KV cache
    third = llm.calls[[i for i, c in enumerate(llm.calls) if c == ("sleep", 2)][1] + 1 :]
    assert third[:4] == [("wake_up", ("weights",)), ("rpc", "reload_weights"), ("wake_up", ("kv_cache",)), ("reset_prefix_cache",)]


def test_adapter_sync_sleeps_at_level_1_and_keeps_its_weights(gpu, tmp_path):
    eng = engine(lora_sync="adapter", lora_rank=8)
    model = SimpleNamespace(save_pretrained=lambda path: None)
    eng.sync(model)
    rollout(eng)
    rollout(eng)  # woken, not reloaded: level 1 kept the base
    llm = FakeLLM.built[-1]
    assert llm.calls.count(("sleep", 1)) == 2 and ("rpc", "reload_weights") not in llm.calls
    assert eng.lora_request is not None


def test_a_reused_or_closing_engine_is_woken_first(gpu, monkeypatch):
    from paw_lightning.rollout import vllm_shared

    first = engine()
    first.sync(nn.Linear(3, 2))
    rollout(first)  # asleep at level 2 when the fit ends
    second = engine()  # a second fit in the same process: the same LLM, handed on awake
    llm = FakeLLM.built[-1]
    assert len(FakeLLM.built) == 1 and second.llm is llm and llm.level == 0 and llm.calls[-1] == ("wake_up", None)
    with pytest.raises(RuntimeError, match="call sync"):  # still no weights: a rollout needs a sync first
        rollout(second)
    second.sync(nn.Linear(3, 2))
    rollout(second)
    # a DDP fit's engine is shut down when the fit ends: woken before, never shut down asleep
    monkeypatch.setattr(vllm_shared, "check_process_group", lambda s: None)
    ddp = engine(world_size=2, rank=1, local_rank=1, device="cuda:1")
    ddp.sync(nn.Linear(3, 2))
    rollout(ddp)
    ddp.close()
    assert FakeLLM.built[-1].calls[-2:] == [("wake_up", None), ("shutdown",)] and not vllm_shared._LIVE


def test_gpu_requests_carry_distinct_seeds_drawn_from_the_generator(gpu):
    eng = engine(sleep=False)
    eng.sync(nn.Linear(3, 2))
    prompts = [[5, 6, 7]] * 6
    runs = []
    for _ in range(2):
        np.random.seed(None)  # an unseeded request would sample differently each time
        runs.append(eng.generate(prompts, Sampling(temperature=1.0, max_new_tokens=3), torch.Generator().manual_seed(7)))
    first, second = FakeLLM.built[-1].params[-2:]
    seeds = [p.seed for p in first]
    assert None not in seeds and len(set(seeds)) == len(prompts) and seeds == [p.seed for p in second]
    assert [g.token_ids for g in runs[0]] == [g.token_ids for g in runs[1]]
    other = eng.generate(prompts, Sampling(), torch.Generator().manual_seed(8))
    assert [p.seed for p in FakeLLM.built[-1].params[-1]] != seeds and len(other) == len(prompts)


@pytest.mark.parametrize("rank,served", [(4, 8), (8, 8), (12, 16), (24, 32), (64, 64), (100, 128)])
def test_lora_ranks_are_rounded_up_to_one_vllm_accepts(gpu, caplog, rank, served):
    from vllm.config import LoRAConfig

    with caplog.at_level(logging.INFO, logger="paw_lightning.rollout.vllm_shared"):
        engine(lora_sync="adapter", lora_rank=rank)
    kwargs = FakeLLM.built[-1].kwargs
    assert kwargs["max_lora_rank"] == served
    assert LoRAConfig(max_lora_rank=kwargs["max_lora_rank"], max_loras=1).max_lora_rank == served  # the installed vLLM accepts it
    [record] = [r for r in caplog.records if "LoRA adapter with max_lora_rank" in r.message]
    assert f"rank-{rank} LoRA adapter with max_lora_rank {served}" in record.message
    assert record.levelno == (logging.INFO if rank == served else logging.WARNING)


def test_a_rank_over_vllms_largest_says_what_to_do(gpu):
    with pytest.raises(ValueError, match="up to rank 512.*vllm_lora_sync: merged"):
        engine(lora_sync="adapter", lora_rank=600)


def test_bf16_on_a_pre_ampere_gpu_suggests_float16(gpu):
    gpu.capability = (7, 5)  # T4
    with pytest.raises(ValueError, match=r"compute capability 7\.5.*vllm_dtype: float16"):
        engine()
    assert not FakeLLM.built
    engine(dtype="float16")
    assert FakeLLM.built[-1].kwargs["dtype"] == "float16"


@pytest.fixture
def fresh_api_check():
    from paw_lightning.rollout import vllm_compat

    vllm_compat.check_vllm_api.cache_clear()
    yield vllm_compat
    vllm_compat.check_vllm_api.cache_clear()


def test_an_old_reload_weights_signature_fails_at_build_with_one_line(gpu, monkeypatch, fresh_api_check):
    for runner in fresh_api_check._runner_classes():
        monkeypatch.setattr(runner, "reload_weights", lambda self: None)  # vLLM 0.11-0.15
    with pytest.raises(RuntimeError, match=r"lacks .*reload_weights\(weights_iterator.*needs vLLM >= 0\.16") as err:
        engine()
    assert "\n" not in str(err.value) and not FakeLLM.built  # before the engine is built


def test_a_vllm_older_than_the_range_fails_with_one_line(monkeypatch, fresh_api_check):
    import vllm

    monkeypatch.setattr(vllm, "__version__", "0.15.1")
    with pytest.raises(RuntimeError, match=r"vLLM 0\.15\.1 lacks .*version >= 0\.16\.0.*vllm>=0\.16,<0\.35"):
        fresh_api_check.check_vllm_api()


def test_device_rule_multiprocessing_and_allocator_guards(gpu, monkeypatch, caplog):
    import os

    with pytest.raises(ValueError, match="trainer runs on cuda:2 but vLLM would run on cuda:0.*CUDA_VISIBLE_DEVICES"):
        engine(device="cuda:2")  # devices: [2] with one process
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    from paw_lightning.rollout import vllm_compat

    with pytest.raises(ValueError, match="expandable_segments.*vllm_sleep: false"):
        vllm_compat.check_sleep_allocator(True, (0, 17, 0))
    vllm_compat.check_sleep_allocator(True, (0, 32, 0))  # 0.32 handles it
    vllm_compat.check_sleep_allocator(False, (0, 17, 0))
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    with caplog.at_level(logging.WARNING, logger="paw_lightning.rollout.vllm_compat"):
        engine()
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and "VLLM_ENABLE_V1_MULTIPROCESSING=1 ignored" in caplog.text
    # a CPU trainer next to a GPU vLLM: nothing to free for it, so no sleep
    assert engine(device="cpu", seed=1).llm.kwargs["enable_sleep_mode"] is False


def test_versions_parse():
    from paw_lightning.rollout.vllm_compat import parse_version

    assert parse_version("0.16.1rc1") == (0, 16, 1) and parse_version("0.32.0+cpu") == (0, 32, 0) and parse_version("1.0") == (1, 0, 0)


def test_a_vllm_newer_than_the_range_read_builds_with_a_warning(monkeypatch, fresh_api_check, caplog):
    import vllm

    monkeypatch.setattr(vllm, "__version__", "0.40.0")
    with caplog.at_level(logging.WARNING, logger="paw_lightning.rollout.vllm_compat"):
        fresh_api_check.check_vllm_api()
    assert "vLLM 0.40.0 is newer than the newest version this engine was checked against (0.34)" in caplog.text


def test_a_failed_wake_still_shuts_the_engine_down(gpu, caplog):
    from paw_lightning.rollout import vllm_shared

    eng = engine()
    eng.sync(nn.Linear(3, 2))
    rollout(eng)
    llm = FakeLLM.built[-1]

    def out_of_memory(tags=None):
        raise RuntimeError("CUDA out of memory")

    llm.wake_up, llm.level = out_of_memory, 0  # the fake then lets the shutdown through
    with caplog.at_level(logging.WARNING, logger="paw_lightning.rollout.vllm_shared"):
        vllm_shared.shutdown()
    assert llm.calls[-1] == ("shutdown",) and "could not wake" in caplog.text and not vllm_shared._LIVE
