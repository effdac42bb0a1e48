"""Memory on one device (paw_lightning/memory.py): QLoRA without the fp32 upcast, the planner's decision rule,
and updates and scoring passes that survive running out of memory."""

import copy
import csv
import warnings

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from paw_lightning.errors import RowTooLongError
from paw_lightning.memory import MemoryLine, choose_plan, fit_memory_line, halve_budget, is_oom, probe_batch
from paw_lightning.models import is_checkpointing, load_model, set_gradient_checkpointing
from paw_lightning.module import PaWModule
from paw_lightning.rollout.actors import GenerateActor, ScoreActor
from paw_lightning.rollout.batch import micro_batches, training_batch
from tests.envs.fake_oom import FakeOutOfMemory
from tests.test_cli import ROOT, SMALL, small_env
from tests.test_module import quiet, rollout_for

GB = 1024**3


# ----- QLoRA without the fp32 upcast ----------------------------------------------------------------------
def frozen_float_dtypes(model):
    return {p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point()}


def first_4bit_input_dtypes(model, run):
    """The dtypes of the inputs the first 4-bit layer sees while ``run()`` runs."""
    import bitsandbytes as bnb

    layer = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    seen = []
    handle = layer.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].dtype))
    try:
        run()
    finally:
        handle.remove()
    return set(seen)


@pytest.mark.parametrize("name", ["tiny", "smollm2-135m-instruct"])
def test_qlora_keeps_frozen_weights_and_the_4bit_inputs_in_bf16(name):
    pytest.importorskip("bitsandbytes")
    model, tokenizer = load_model(name, quantize="bnb.nf4", lora_rank=4, gradient_checkpointing=True)
    assert frozen_float_dtypes(model) == {torch.bfloat16}  # embeddings, norms, head: no fp32 copy
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}  # the adapter: lora_dtype
    assert is_checkpointing(model)
    model.train()
    ids = torch.tensor([tokenizer("go east then take the coin")["input_ids"]])

    def step():
        model(input_ids=ids, labels=ids).loss.backward()

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. torch's use_reentrant warning
        assert first_4bit_input_dtypes(model, step) == {torch.bfloat16}
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_lora_dtype_bfloat16_gives_a_bf16_adapter():
    pytest.importorskip("bitsandbytes")
    model, _ = load_model("tiny", quantize="bnb.nf4", lora_rank=4, lora_dtype="bfloat16")
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.bfloat16}
    with pytest.raises(ValueError, match="lora_dtype"):
        load_model("tiny", lora_rank=4, lora_dtype="float16")


def test_a_qlora_training_step_gives_the_bf16_lora_step_within_bf16_and_nf4_error():
    """The nf4 model is the bf16 model with its linear weights rounded to 4 bits: the same step's loss agrees
    within 2 % (nf4 rounding of 0.7 M random weights; a step in the wrong dtype or on the wrong rows is off by
    far more: the two models' losses differ by 0.1 % here, a policy/WM term dropped changes it by > 10 %)."""
    pytest.importorskip("bitsandbytes")
    losses = {}
    for quantize in (None, "bnb.nf4"):
        torch.manual_seed(0)
        module = quiet(PaWModule(lr=1e-3, lora_rank=4, dtype="bfloat16", quantize=quantize, kl_coef=0.01))
        rollout = rollout_for(module, GenerateActor(max_new_tokens=4), num_groups=1, group_size=2, max_steps=2)
        rollout.advantages = torch.linspace(-1, 1, len(rollout))
        batch = training_batch(rollout, list(range(len(rollout))), module.tokenizer.pad_token_id)
        if quantize is None:
            losses[quantize] = module.training_step(batch, 0)
            continue

        def step():
            losses[quantize] = module.training_step(batch, 0)
            losses[quantize].backward()

        assert first_4bit_input_dtypes(module.model, step) == {torch.bfloat16}  # inside PaW's training step
    assert losses["bnb.nf4"].item() == pytest.approx(losses[None].item(), rel=0.02)


def test_checkpointing_switches_on_and_off_on_a_built_lora_model():
    model, _ = load_model("tiny", lora_rank=2)
    assert not is_checkpointing(model)
    set_gradient_checkpointing(model, True)
    assert is_checkpointing(model) and not model.get_base_model().config.use_cache
    set_gradient_checkpointing(model, False)
    assert not is_checkpointing(model)


# ----- the planner's decision rule (pure) -----------------------------------------------------------------
PLAIN = MemoryLine(fixed=4 * GB, per_token=1e6)  # 1 MB of activations per token without checkpointing
CKPT = MemoryLine(fixed=4 * GB, per_token=1e5)  # a tenth with it


def test_a_memory_line_through_two_probes():
    line = fit_memory_line([(1000, 5e9), (2000, 6e9)])
    assert line.fixed == pytest.approx(4e9) and line.per_token == pytest.approx(1e6)
    assert line.tokens_within(6.5e9) == 2500


@pytest.mark.parametrize("usable, expected", [
    (40 * GB, (False, None)),  # 16 x 2048 tokens at 1 MB each (33.6 GB) + 4 GB fit without checkpointing
    (20 * GB, (True, None)),  # only with checkpointing: 3.4 + 4 GB
    (6 * GB, (True, int((6 * GB - 4 * GB) / 1e5))),  # not even with it: the largest budget with it
])
def test_the_plan_is_the_fastest_setting_that_fits(usable, expected):
    plan = choose_plan(usable, 16 * 2048, 2048, {False: PLAIN, True: CKPT})
    assert (plan.gradient_checkpointing, plan.max_tokens_per_micro_batch) == expected


def test_a_users_setting_is_kept_and_the_other_is_planned_around_it():
    assert choose_plan(6 * GB, 16 * 2048, 2048, {False: PLAIN}, checkpointing=False).max_tokens_per_micro_batch == \
        int((6 * GB - 4 * GB) / 1e6)  # no checkpointing, as asked: a budget without it
    kept = choose_plan(20 * GB, 16 * 2048, 2048, {False: PLAIN, True: CKPT}, budget=4096)
    assert (kept.gradient_checkpointing, kept.max_tokens_per_micro_batch) == (False, 4096)  # 4096 tokens fit plainly
    kept = choose_plan(6 * GB, 16 * 2048, 2048, {False: PLAIN, True: CKPT}, budget=4096)
    assert (kept.gradient_checkpointing, kept.max_tokens_per_micro_batch) == (True, 4096)


def test_a_row_that_cannot_fit_is_refused_before_compute():
    with pytest.raises(RowTooLongError, match="row of 2048 tokens"):
        choose_plan(4.1 * GB, 16 * 2048, 2048, {False: PLAIN, True: CKPT})


def test_the_probe_batch_has_the_asked_shape_and_every_unit_in_the_loss():
    batch = probe_batch(rows=2, prompt=10, action=5, obs=7, pad_id=0, vocab=50, reference=True, values=False)
    assert batch["input_ids"].shape == (2, 22) and batch["attention_mask"].all()
    assert int(batch["unit_mask"].sum()) == 10 and int(batch["obs_mask"].sum()) == 14 and "ref_logprobs" in batch


# ----- out-of-memory retry --------------------------------------------------------------------------------
def test_oom_errors_of_cuda_the_cpu_allocator_and_python_are_recognised():
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory")) and is_oom(MemoryError())
    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"))
    assert not is_oom(RuntimeError("shape mismatch")) and not is_oom(ValueError("out of memory"))


def test_the_budget_halves_until_every_row_runs_alone():
    assert halve_budget(None, [30, 20, 10, 10]) == 60  # the whole mini-batch allowed 4 x 30
    assert halve_budget(60, [30, 20, 10, 10]) == 30
    with pytest.raises(RowTooLongError, match="row of 30 tokens"):
        halve_budget(19, [30, 20, 10, 10])  # under 2 x 10: every row already ran alone


def fit_steps(module, batch, callbacks, tmp_path, steps=2):
    """Gradients at every optimiser step of ``steps`` steps on ``batch`` through Lightning's loop."""
    class KeepGradients(L.Callback):
        grads = []

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.grads.append([p.grad.clone() for p in pl_module.parameters() if p.requires_grad])

    kept = KeepGradients()
    kept.grads = []
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[kept, *callbacks], default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=DataLoader([batch] * steps, batch_size=None))
    return kept.grads, torch.get_rng_state()


def test_an_update_that_runs_out_of_memory_takes_the_unsplit_step(tmp_path):
    """The fake runs out of memory for any micro-batch of more than 2 rows, after earlier micro-batches of the
    same attempt were back-propagated: the retried step's gradient is the unsplit step's (the invariance of
    micro-batches is the oracle), and with LoRA dropout the RNG is rolled back too: the same gradient and RNG
    as a run that used the final budget from the start."""
    torch.manual_seed(0)
    module = quiet(PaWModule(lr=1e-3, kl_coef=0.01, entropy_coef=0.01, lora_rank=4, lora_dropout=0.1))
    rollout = rollout_for(module, GenerateActor(max_new_tokens=5), num_groups=2, group_size=2, max_steps=3)
    rollout.advantages = torch.randn(len(rollout))
    batch = training_batch(rollout, list(range(len(rollout))), module.tokenizer.pad_token_id)
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1 and len(rollout) > 4
    start = copy.deepcopy(module.state_dict())

    fake = FakeOutOfMemory(max_rows=2)
    torch.manual_seed(1)
    retried, retried_rng = fit_steps(module, batch, [fake], tmp_path)
    final = module.micro_budget
    assert fake.raised >= 2 and module.oom_retries >= 2 and final is not None
    assert max(len(m["chosen"]) for m in micro_batches(batch, final)) <= 2

    module.load_state_dict(start)
    module.micro_budget, module.oom_retries = final, 0
    torch.manual_seed(1)
    direct, direct_rng = fit_steps(module, batch, [], tmp_path)
    assert module.oom_retries == 0 and torch.equal(retried_rng, direct_rng)
    for step in range(2):
        assert all(torch.equal(a, b) for a, b in zip(retried[step], direct[step]))

    plain = quiet(PaWModule(lr=1e-3, kl_coef=0.01, entropy_coef=0.01, lora_rank=4))  # no dropout: split == unsplit
    start = copy.deepcopy(plain.state_dict())
    unsplit, _ = fit_steps(plain, batch, [], tmp_path, steps=1)
    plain.load_state_dict(start)
    split, _ = fit_steps(plain, batch, [FakeOutOfMemory(max_rows=2)], tmp_path, steps=1)
    assert plain.oom_retries >= 2
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(unsplit[0], split[0]))


def test_a_scoring_pass_that_runs_out_of_memory_gives_the_same_numbers():
    module = quiet(PaWModule(lr=1e-3, kl_coef=0.01))
    rollout = rollout_for(module, GenerateActor(max_new_tokens=4), prepare=False)
    whole = module._score_pass(rollout, policy=True, reference=True, values=False)
    original = module._policy_units

    def policy_units(model, hidden, batch):
        if hidden.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        return original(model, hidden, batch)

    module._policy_units = policy_units
    retried = module._score_pass(rollout, policy=True, reference=True, values=False)
    assert module._new_retries >= 1  # counted into oom_retries at the next step
    for key in ("old", "ref", "entropy"):
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(whole[key], retried[key])), key


def metrics_rows(log_dir):
    return list(csv.DictReader(open(log_dir / "metrics.csv")))


@pytest.mark.slow
def test_paw_fit_survives_out_of_memory_and_stops_with_one_line_when_a_row_cannot_fit(tmp_path, monkeypatch, capsys, coin_pool_kwargs):
    """Iteration 0: any micro-batch of more than 2 rows runs out of memory, and the update goes on at a smaller
    budget; iteration 1: every micro-batch does, so the run stops with one line, exit 1, and keeps the first
    iteration's checkpoint."""
    from paw_lightning.cli import main as paw

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        paw(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), *SMALL, small_env(coin_pool_kwargs),
             "--model.max_tokens_per_micro_batch=auto", "--model.gradient_checkpointing=auto",
             "--trainer.callbacks+=tests.envs.fakes.FakeOutOfMemory", "--trainer.callbacks.max_rows=2",
             "--trainer.callbacks.all_from_epoch=1"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("paw: error: a training row of") and "data.max_prompt_tokens" in err
    run = tmp_path / "runs/csv/version_0"
    assert list((run / "checkpoints").glob("epoch=0-*.ckpt"))
    rows = [r for r in metrics_rows(run) if r.get("perf/oom_retries") and int(r["epoch"]) == 0]
    assert rows and float(rows[-1]["perf/oom_retries"]) >= 1
    assert float(rows[-1]["perf/micro_batch_budget"]) > 0  # a budget now, where auto on a CPU started with none
    assert {r["perf/gradient_checkpointing"] for r in rows} == {"0.0"}  # auto on a CPU: off
