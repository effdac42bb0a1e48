import copy
import functools
import math

import lightning as L
import numpy as np
import pytest
import torch

from paw_lightning.module import PaWModule
from paw_lightning.rollout.actors import GenerateActor, ScoreActor
from paw_lightning.rollout.batch import minibatches
from paw_lightning.rollout.collector import Collector
from paw_lightning.rollout.datamodule import make_text_env
from paw_lightning.rollout.prompts import PromptBuilder
import tests.envs.fakes  # noqa: F401 - registers paw-test/Corridor-v0


def rollout_for(module, actor, num_groups=2, group_size=2, max_steps=3, prepare=True, iteration=0):
    make = functools.partial(make_text_env, "paw-test/Corridor-v0", {})
    collector = Collector(make, num_groups, group_size, max_steps, PromptBuilder(generate=actor.mode == "generate"), actor)
    rollout = collector.collect(module.model, module.tokenizer, list(range(num_groups)), torch.Generator().manual_seed(0),
                                iteration=iteration, progress=False)
    if prepare:
        module.prepare_rollout(rollout)
    return rollout


def one_batch(module, rollout):
    return next(minibatches(rollout, 1, len(rollout), module.tokenizer.pad_token_id, np.random.default_rng(0)))


def quiet(module):
    module.log = module.log_dict = lambda *a, **k: None
    return module


@pytest.mark.parametrize("actor", [ScoreActor(), GenerateActor(max_new_tokens=5)], ids=["score", "generate"])
def test_training_step_gives_finite_loss_and_gradients(actor):
    module = quiet(PaWModule(lr=1e-3))
    rollout = rollout_for(module, actor)
    assert rollout.advantages.shape == (len(rollout),) and rollout.action_entropy.shape == (len(rollout),)
    loss = module.training_step(one_batch(module, rollout), 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.model.parameters())


def test_scoring_pass_reproduces_the_actor_log_probs():
    """The generate path recomputes old log-probs; for the score actor they come from sampling time."""
    module = PaWModule(lr=1e-3, kl_coef=0.0)
    rollout = rollout_for(module, ScoreActor())
    scored = module._score_pass(rollout, policy=True, reference=False, values=False)
    assert torch.allclose(torch.cat(scored["old"]), torch.tensor([t.actor_logprob for t in rollout.transitions]), atol=1e-5)
    assert torch.allclose(torch.stack(scored["entropy"]), rollout.action_entropy, atol=1e-5)


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_kl_is_zero_before_the_first_update(lora_rank):
    module = PaWModule(lr=1e-3, kl_coef=0.1, lora_rank=lora_rank)
    rollout = rollout_for(module, GenerateActor(max_new_tokens=4))
    # the reference runs another code path (adapter off, or a copy): equal up to float rounding, not bit for bit
    assert all(torch.allclose(o, r, rtol=0, atol=1e-5) for o, r in zip(rollout.old_logprobs, rollout.ref_logprobs))


def test_lora_reference_is_the_base_model_with_the_adapter_disabled():
    module = PaWModule(lr=1e-2, kl_coef=0.1, lora_rank=4)
    assert module.ref_model is None  # no second copy in memory
    for p in module.model.parameters():  # move the adapter away from its zero init
        if p.requires_grad:
            p.data.add_(0.05)
    rollout = rollout_for(module, GenerateActor(max_new_tokens=4))
    differs = [not torch.allclose(o, r) for o, r in zip(rollout.old_logprobs, rollout.ref_logprobs)]
    assert any(differs)


def test_plain_rl_baseline_skips_the_world_model():
    module = quiet(PaWModule(lr=1e-3, wm_coef=0.0))
    calls = []
    module._world_model_loss = lambda *a: calls.append(a)
    rollout = rollout_for(module, ScoreActor())
    module.training_step(one_batch(module, rollout), 0)
    assert calls == []


def test_world_model_loss_follows_weights_and_selection():
    module = quiet(PaWModule(lr=1e-3, kl_coef=0.0, entropy_coef=0.0))
    rollout = rollout_for(module, ScoreActor())
    rollout.advantages.zero_()  # policy loss is 0: the loss is the WM term alone
    batch = one_batch(module, rollout)
    full = module.training_step(batch, 0).item()
    batch["wm_weight"] = batch["wm_weight"] * 0.5
    half = module.training_step(batch, 0).item()
    assert full > 0 and half == pytest.approx(full / 2, rel=1e-4)
    batch["wm_selected"][:] = False
    assert module.training_step(batch, 0).item() == pytest.approx(0.0, abs=1e-7)


def test_separate_world_model_head_keeps_wm_gradients_off_the_policy_path():
    module = quiet(PaWModule(lr=1e-3, kl_coef=0.0, entropy_coef=0.0, world_model="head"))
    rollout = rollout_for(module, ScoreActor())
    rollout.advantages.zero_()
    module.training_step(one_batch(module, rollout), 0).backward()
    assert module.wm_head.weight.grad.abs().sum() > 0
    layer = module.model.model.layers[0].mlp.down_proj.weight
    assert layer.grad.abs().sum() > 0  # the trunk learns from the world model
    module.zero_grad()
    baseline = quiet(PaWModule(lr=1e-3, wm_coef=0.0, world_model="head"))
    rollout = rollout_for(baseline, ScoreActor())
    baseline.training_step(one_batch(baseline, rollout), 0).backward()
    assert baseline.wm_head.weight.grad is None  # the policy loss never touches the WM head


@pytest.mark.parametrize(
    "kwargs, message",
    [({"wm_loss": "mse"}, "wm_loss"), ({"world_model": "twin"}, "world_model"), ({"wm_target": "prev_obs"}, "wm_target"), ({"cmae_rho": 0.0}, "cmae_rho"), ({"kl_coef": -1}, "kl_coef"),
     ({"clip_eps": 0.0}, "clip_eps"), ({"head_chunk_size": 0}, "head_chunk_size"), ({"lr": float("nan")}, "lr"),
     ({"value_lr": 0.0}, "value_lr"), ({"grad_clip": -0.1}, "grad_clip")],
)
def test_bad_module_config_fails_before_loading_anything(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PaWModule(**kwargs)


def test_accumulating_eight_micro_batches_of_one_equals_one_batch_of_eight():
    """Gradient accumulation over 8 x 1 gives the update of 1 x 8 (score actor: one unit per transition)."""
    torch.manual_seed(0)
    module = quiet(PaWModule(lr=1e-3, kl_coef=0.01, entropy_coef=0.001))
    rollout = rollout_for(module, ScoreActor(), num_groups=4, group_size=2, max_steps=2)
    rollout.advantages = torch.randn(len(rollout))  # make every term of the loss matter
    indices = list(range(8))
    from paw_lightning.rollout.batch import training_batch

    pad = module.tokenizer.pad_token_id
    module.zero_grad()
    module.training_step(training_batch(rollout, indices, pad), 0).backward()
    full = [p.grad.clone() for p in module.model.parameters()]
    module.zero_grad()
    for i in indices:
        (module.training_step(training_batch(rollout, [i], pad), 0) / len(indices)).backward()
    for a, p in zip(full, module.model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6, rtol=1e-4)


def test_ppo_value_head_learns_from_its_own_loss():
    module = quiet(PaWModule(lr=1e-3, advantage="ppo", value_lr=1e-2, wm_coef=0.0))
    rollout = rollout_for(module, ScoreActor())
    assert rollout.old_values.shape == (len(rollout),) and torch.all(rollout.old_values == 0)  # zero-initialised head
    assert rollout.value_targets is not None and "ppo/explained_variance" in rollout.metrics
    optimizer = module.configure_optimizers()
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-2]
    module.training_step(one_batch(module, rollout), 0).backward()
    assert module.value_head.weight.grad.abs().sum() > 0


def test_qlora_module_trains_with_the_packed_score_actor():
    pytest.importorskip("bitsandbytes")
    module = quiet(PaWModule(lr=1e-3, lora_rank=4, quantize="bnb.nf4", kl_coef=0.01))
    rollout = rollout_for(module, ScoreActor(), num_groups=1, group_size=2, max_steps=2)
    # old log-probs come from the packed candidate rows, ref ones from the scoring pass: other batch shapes,
    # so the sums round differently, and QLoRA computes in bf16 (no fp32 upcast; 1.1e-3 seen on a log-prob of
    # -0.8, within bf16's 2^-8 relative step); a wrong candidate or mask is off by far more
    assert all(torch.allclose(o, r, rtol=0, atol=5e-3) for o, r in zip(rollout.old_logprobs, rollout.ref_logprobs))
    loss = module.training_step(one_batch(module, rollout), 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in module.model.named_parameters() if "lora_" in n)


# ----- the shuffled-observation placebo (wm_target: shuffled) -------------------------------------------
def tagged(rollout):
    """Give every transition a distinct next observation of its own length (1-3 tokens), so targets can be traced."""
    for i, t in enumerate(rollout.transitions):
        t.obs_ids, t.next_obs = [20 + i] * (1 + i % 3), f"obs {i}"
    return rollout


@pytest.mark.parametrize("actor", [ScoreActor(), GenerateActor(max_new_tokens=4)], ids=["score", "generate"])
def test_shuffled_targets_carry_their_masks_and_lengths_into_the_batch(actor):
    from paw_lightning.rollout.batch import collate
    from paw_lightning.selection import derangement

    module = PaWModule(lr=1e-3)
    rollout = tagged(rollout_for(module, actor, prepare=False))
    n, pad = len(rollout), module.tokenizer.pad_token_id
    before = collate(rollout.transitions, rollout.mode, pad)
    source = derangement(n, torch.Generator().manual_seed(1))
    originals = [list(t.obs_ids) for t in rollout.transitions]
    rollout.permute_wm_targets(source)
    after = collate(rollout.transitions, rollout.mode, pad)
    for i, j in enumerate(source.tolist()):
        assert after["obs_mask"][i].sum() == len(originals[j])  # the mask follows the new target's length
        assert after["input_ids"][i][after["obs_mask"][i]].tolist() == originals[j]
        assert torch.equal(after["input_ids"][i][after["action_mask"][i]], before["input_ids"][i][before["action_mask"][i]])
        assert after["attention_mask"][i].sum() - before["attention_mask"][i].sum() == len(originals[j]) - len(originals[i])
    with pytest.raises(ValueError, match="one source index per transition"):
        rollout.permute_wm_targets(source[:-1])


def test_prepare_rollout_swaps_only_the_world_model_targets():
    module = PaWModule(lr=1e-3, wm_target="shuffled", model_seed=3)
    baseline = PaWModule(lr=1e-3, model_seed=3)
    rollout = tagged(rollout_for(module, ScoreActor(), prepare=False, iteration=5))
    reference = copy.deepcopy(rollout)
    module.prepare_rollout(rollout)
    baseline.prepare_rollout(reference)
    n = len(rollout)
    source = [t.wm_target()[0][0] - 20 for t in rollout.transitions]  # tagged: transition i's target is [20 + i] * k
    assert sorted(source) == list(range(n)) and all(j != i for i, j in enumerate(source))  # a derangement
    for t, ref, j in zip(rollout.transitions, reference.transitions, source):
        assert t.wm_target()[0] == reference.transitions[j].obs_ids
        assert (t.prompt_ids, t.action_ids, t.reward, t.done, t.observation, t.obs_ids, t.next_obs) == (
            ref.prompt_ids, ref.action_ids, ref.reward, ref.done, ref.observation, ref.obs_ids, ref.next_obs)  # the real o_{t+1} stays
    assert torch.equal(rollout.advantages, reference.advantages)
    assert torch.allclose(rollout.action_entropy, reference.action_entropy)
    assert torch.equal(rollout.wm_selected, reference.wm_selected) and torch.equal(rollout.wm_weight, reference.wm_weight)

    def draw(iteration):
        other = tagged(copy.deepcopy(reference))
        other.iteration = iteration
        module._shuffle_wm_targets(other)
        return [tuple(t.wm_target()[0]) for t in other.transitions]

    assert draw(5) == [tuple(t.wm_target()[0]) for t in rollout.transitions]  # reproducible from (model_seed, iteration)
    assert len({tuple(draw(it)) for it in range(6)}) > 1  # a new draw every iteration


@pytest.mark.parametrize("actor", [ScoreActor(), GenerateActor(max_new_tokens=4)], ids=["score", "generate"])
def test_heldout_world_model_accuracy_counts_argmax_hits_on_the_real_next_observation(actor):
    """Checked against a plain forward of each transition's prompt + chosen action + o_{t+1}, unpacked."""
    module = PaWModule(lr=1e-3, wm_target="shuffled", score_batch_size=3)
    rollout = rollout_for(module, actor, prepare=False)
    expected_correct = expected_total = 0
    with torch.no_grad():
        for t in rollout.transitions:
            action = t.candidate_ids[t.chosen] if rollout.mode == "score" else t.action_ids
            ids = torch.tensor([t.prompt_ids + list(action) + list(t.obs_ids)])
            predicted = module.model(input_ids=ids).logits[0, :-1].argmax(-1)
            start = len(t.prompt_ids) + len(action)
            expected_correct += int((predicted[start - 1 :] == ids[0, start:]).sum())
            expected_total += len(t.obs_ids)
    assert expected_total > 0
    assert module._heldout_wm_correct(rollout) == (expected_correct, expected_total)
    assert module.model.training  # the model's mode is given back
    tagged(rollout)  # other targets, other counts: it reads the rollout's own o_{t+1}, never a shuffled one
    assert module._heldout_wm_correct(rollout)[1] == sum(len(t.obs_ids) for t in rollout.transitions)


def corridor_fit(tmp_path, module, max_epochs=2, callbacks=(), checkpoint=False):
    """A direct Trainer run on the fake corridor: 4 envs x 2 steps, mini-batches of 2 (up to 4 steps an epoch)."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from paw_lightning.rollout.datamodule import RolloutDataModule

    data = RolloutDataModule(env_id="paw-test/Corridor-v0", num_groups=2, group_size=2, max_steps=2, mini_batch_size=2,
                             progress=False)
    callbacks = list(callbacks)
    if checkpoint:
        callbacks.append(ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_epochs=1, save_on_train_epoch_end=True))
    trainer = L.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=CSVLogger(tmp_path), callbacks=callbacks,
                        enable_checkpointing=checkpoint, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, log_every_n_steps=1)
    trainer.fit(module, data)
    return trainer


class Snapshots(L.Callback):
    """Weights and optimiser state before and after every optimiser step."""

    def __init__(self):
        self.before, self.after = [], []

    @staticmethod
    def _state(module, trainer):
        optimizer = trainer.optimizers[0]
        params = [p.detach().clone() for p in module.model.parameters()]
        state = {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                 for i, s in enumerate(optimizer.state.values())}
        return params, state

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.before.append(self._state(module, trainer))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.after.append(self._state(module, trainer))


def nan_loss_on(module, steps):
    """Make the loss of the given training steps (counted from 0) NaN: a NaN forward, hence NaN gradients."""
    original_step, original_terms = module.training_step, module.loss_terms
    calls = []

    def training_step(batch, batch_idx):
        calls.append(len(calls))
        return original_step(batch, batch_idx)

    def loss_terms(batch, totals=None):
        rl_loss, wm_loss, logs = original_terms(batch, totals)
        return (rl_loss * float("nan") if calls[-1] in steps else rl_loss), wm_loss, logs

    module.training_step, module.loss_terms = training_step, loss_terms


def metric_column(log_dir, name):
    import csv

    return [float(r[name]) for r in csv.DictReader(open(next(log_dir.rglob("metrics.csv")))) if r.get(name)]


def test_a_nan_loss_skips_its_optimiser_step_and_is_counted(tmp_path):
    module = PaWModule(lr=1e-2)
    nan_loss_on(module, steps={1})
    snapshots = Snapshots()
    trainer = corridor_fit(tmp_path, module, callbacks=[snapshots])
    assert module.skipped_steps == 1 and trainer.global_step >= 3
    (before_params, before_state), (after_params, after_state) = snapshots.before[1], snapshots.after[1]
    assert all(torch.equal(a, b) for a, b in zip(before_params, after_params))  # the NaN step changed no weight
    assert before_state.keys() == after_state.keys() and all(
        torch.equal(before_state[i]["step"], after_state[i]["step"])
        and torch.equal(before_state[i]["exp_avg_sq"], after_state[i]["exp_avg_sq"]) for i in before_state)
    assert not all(torch.equal(a, b) for a, b in zip(*[s[0] for s in (snapshots.before[2], snapshots.after[2])]))  # the next one did
    assert all(torch.isfinite(p).all() for p in module.model.parameters())
    skipped = metric_column(tmp_path, "train/skipped_steps")
    assert skipped[0] == 0.0 and skipped[1:] == [1.0] * (len(skipped) - 1)  # cumulative
    norms = metric_column(tmp_path, "train/grad_norm")
    assert len(norms) == trainer.global_step and math.isnan(norms[1]) and all(n > 0 for i, n in enumerate(norms) if i != 1)


def test_a_non_finite_gradient_with_a_finite_loss_is_skipped_too(tmp_path):
    class InfGradient(L.Callback):
        def on_after_backward(self, trainer, module):
            if trainer.global_step == 0:
                next(module.model.parameters()).grad[0, 0] = float("inf")

    module = PaWModule(lr=1e-2)
    corridor_fit(tmp_path, module, max_epochs=1, callbacks=[InfGradient()])
    assert module.skipped_steps == 1 and all(torch.isfinite(p).all() for p in module.model.parameters())


def test_gradients_are_clipped_to_grad_clip_and_the_pre_clip_norm_is_logged(tmp_path):
    seen = []

    class ClippedNorm(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            if grads:  # the step's gradients as the optimiser used them (zeroed when the next step starts)
                seen.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

    module = PaWModule(lr=1e-3, grad_clip=1e-3)
    corridor_fit(tmp_path, module, max_epochs=1, callbacks=[ClippedNorm()])
    norms = metric_column(tmp_path, "train/grad_norm")
    assert seen and all(n > 1e-3 for n in norms)  # the logged norm is the one before clipping
    assert all(s == pytest.approx(1e-3, rel=1e-3) for s in seen)  # what the optimiser got


def test_trainer_gradient_clip_val_is_refused_in_favour_of_grad_clip(tmp_path):
    from paw_lightning.rollout.datamodule import RolloutDataModule

    trainer = L.Trainer(max_epochs=1, gradient_clip_val=0.5, logger=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match="model.grad_clip"):
        trainer.fit(PaWModule(), RolloutDataModule(env_id="paw-test/Corridor-v0", progress=False))


def test_a_run_that_keeps_diverging_stops_without_overwriting_its_checkpoint(tmp_path):
    from paw_lightning.errors import NonFiniteTrainingError

    module = PaWModule(lr=1e-2, max_skipped_steps=2)
    first_epoch_steps = []

    class CountFirstEpoch(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            first_epoch_steps.append(trainer.global_step)

    nan_loss_on(module, steps=set(range(4, 100)))  # epoch 0 (at most 4 steps) trains; then every loss is NaN
    with pytest.raises(NonFiniteTrainingError, match="lower model.lr|Lower model.lr"):
        corridor_fit(tmp_path, module, max_epochs=3, callbacks=[CountFirstEpoch()], checkpoint=True)
    assert module.skipped_steps == 2
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert saved["epoch"] == 0 and saved["paw_skipped_steps"] == 0
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if torch.is_floating_point(v))


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    from paw_lightning.errors import NonFiniteTrainingError

    module = PaWModule(lr=1e-2)
    trainer = corridor_fit(tmp_path, module, max_epochs=1)
    trainer.save_checkpoint(tmp_path / "good.ckpt")
    with torch.no_grad():
        next(module.model.parameters())[0, 0] = float("nan")
    with pytest.raises(NonFiniteTrainingError, match="non-finite weights"):
        trainer.save_checkpoint(tmp_path / "bad.ckpt")
    assert (tmp_path / "good.ckpt").exists() and not (tmp_path / "bad.ckpt").exists()


# ----- the world-model signal: metrics on one row set, per-term gradient norms, the WM options ----------
def values(logs):
    """The logged numbers (a torchmetric's value so far)."""
    return {k: float(v.compute() if hasattr(v, "compute") else v) for k, v in logs.items()}


def test_wm_metrics_describe_the_selected_weighted_rows_and_combine_into_the_term():
    module = PaWModule(lr=1e-3, kl_coef=0.0, entropy_coef=0.0)
    rollout = rollout_for(module, ScoreActor(), num_groups=2, group_size=2, max_steps=2)
    batch = one_batch(module, rollout)
    n = len(batch["chosen"])
    batch["wm_selected"] = torch.arange(n) % 2 == 0
    batch["wm_weight"] = torch.linspace(0.2, 1.0, n)
    _, wm_loss, _ = module.loss_terms(batch)
    _, logged = step_result(module, batch)
    # the same rows by hand: every token of the WM rows, each row weighted by its w_i
    from paw_lightning.logprobs import head_stats, trunk_hidden
    from paw_lightning.losses import cmae_loss
    from paw_lightning.models import trunk_and_head

    trunk, head = trunk_and_head(module.model)
    with torch.no_grad():
        stats = head_stats(head, trunk_hidden(trunk, batch), batch["input_ids"], batch["obs_mask"], 1.0, 1024, batch["source"])
        per_row, clipped = cmae_loss(stats.logp, batch["obs_mask"], 0.2)
    w = batch["wm_weight"] * batch["wm_selected"]
    tokens = w[:, None] * batch["obs_mask"]
    assert float(logged["paw/wm_loss"]) == pytest.approx(float((w * per_row).sum() / w.sum()), rel=1e-5)
    assert float(logged["paw/wm_term"]) == pytest.approx(float((w * per_row).sum() / batch["wm_selected"].sum()), rel=1e-5)
    assert float(wm_loss) == pytest.approx(float(logged["paw/wm_term"]), rel=1e-6)  # one process: added as logged
    assert float(logged["paw/wm_term"]) == pytest.approx(float(logged["paw/wm_loss"]) * float(logged["paw/wm_weight_mean"]), rel=1e-5)
    assert float(logged["paw/clipped_token_frac"]) == pytest.approx(float((tokens * clipped).sum() / tokens.sum()), rel=1e-5)
    assert float(logged["wm/token_acc"]) == pytest.approx(float((tokens * stats.correct).sum() / tokens.sum()), rel=1e-5)
    all_rows = batch["obs_mask"]
    assert float(logged["wm/token_acc_all_rows"]) == pytest.approx(float((stats.correct & all_rows).sum() / all_rows.sum()), rel=1e-5)


def test_update_normalisation_weighs_a_row_the_same_in_every_mini_batch():
    module = PaWModule(lr=1e-3, kl_coef=0.0, entropy_coef=0.0, wm_normalize="update")
    rollout = rollout_for(module, ScoreActor(), num_groups=2, group_size=2, max_steps=2)
    batch = one_batch(module, rollout)
    n = len(batch["chosen"])
    batch["wm_selected"] = torch.arange(n) < 2
    batch["wm_selected_frac"] = 0.25  # the update selected a quarter of its transitions
    per_update = values(module.loss_terms(batch)[2])["paw/wm_term"]
    module.hparams.wm_normalize = "minibatch"
    per_minibatch = values(module.loss_terms(batch)[2])["paw/wm_term"]
    # minibatch: sum / 2 selected rows; update: sum / (0.25 x n rows)
    assert per_update == pytest.approx(per_minibatch * 2 / (0.25 * n), rel=1e-5)


@pytest.mark.parametrize("actor", [ScoreActor(), GenerateActor(max_new_tokens=4)], ids=["score", "generate"])
def test_default_targets_leave_the_batch_bit_for_bit_as_before(actor):
    module = PaWModule(lr=1e-3, wm_horizon=1, wm_context="raw")
    rollout = rollout_for(module, actor)
    assert all(t.wm_ids is None for t in rollout.transitions)  # nothing written at the paper's settings
    from paw_lightning.rollout.batch import collate
    from paw_lightning.world_model import build_targets

    plain = collate(rollout.transitions, rollout.mode, 0)
    for t, target in zip(rollout.transitions, build_targets(rollout.transitions, horizon=1)):
        t.wm_ids, t.wm_loss_mask = target.ids, target.loss_mask
    built = collate(rollout.transitions, rollout.mode, 0)
    assert plain.keys() == built.keys()
    assert all(torch.equal(plain[k], built[k]) for k in plain if torch.is_tensor(plain[k]))


def test_turn_context_and_horizon_reach_the_training_rows_and_validation_reads_one_framed_step():
    module = PaWModule(lr=1e-3, wm_context="turn", wm_horizon=2)
    rollout = rollout_for(module, ScoreActor(), num_groups=1, group_size=2, max_steps=3)
    batch = collate_of(module, rollout)
    frame = module._frame.after_action
    t0 = rollout.transitions[0]
    assert t0.wm_ids[: len(frame)] == list(frame) and t0.wm_loss_mask[: len(frame)] == [False] * len(frame)
    nxt = rollout.transitions[1]
    assert batch["input_ids"][0][batch["obs_mask"][0]].tolist() == t0.obs_ids + nxt.obs_ids  # both observations, nothing else
    correct, total = module._heldout_wm_correct(rollout)
    assert total == sum(len(t.obs_ids) for t in rollout.transitions)  # one step, the real o_{t+1}


def collate_of(module, rollout):
    from paw_lightning.rollout.batch import collate

    return collate(rollout.transitions, rollout.mode, module.tokenizer.pad_token_id)


def test_dedup_drops_repeats_of_a_waiting_agent_and_records_the_update_s_selected_share():
    module = PaWModule(lr=1e-3, wm_dedup=True)
    rollout = rollout_for(module, ScoreActor(), num_groups=2, group_size=2, max_steps=3)
    from paw_lightning.world_model import transition_key

    keys = [transition_key(t) for t in rollout.transitions]
    assert len(set(keys)) < len(keys)  # the corridor repeats itself ("wait" at the same position)
    module.finish_wm_rows(rollout)
    kept = [k for k, s in zip(keys, rollout.wm_selected.tolist()) if s]
    assert sorted(kept) == sorted(set(keys))  # one of each
    assert rollout.metrics["paw/dedup_dropped_frac"] == pytest.approx(1 - len(set(keys)) / len(keys))
    assert rollout.wm_selected_frac == pytest.approx(len(set(keys)) / len(keys))


def test_normalized_selection_ranks_uncertainty_not_the_number_of_commands():
    from paw_lightning.callbacks import ActionEntropySelection

    module = PaWModule(lr=1e-3)
    rollout = rollout_for(module, ScoreActor(), num_groups=1, group_size=2, max_steps=2)
    rollout.transitions[0].candidate_ids = rollout.transitions[0].candidate_ids * 4  # 8 commands
    rollout.action_entropy = torch.tensor([math.log(2)] + [math.log(2) * 0.9] * (len(rollout) - 1))
    rollout.wm_selected = torch.ones(len(rollout), dtype=torch.bool)
    ActionEntropySelection(ratio=0.25, entropy="raw").on_rollout_end(None, module, rollout)
    assert rollout.wm_selected.tolist()[0]  # raw: the long list's step wins
    rollout.wm_selected = torch.ones(len(rollout), dtype=torch.bool)
    ActionEntropySelection(ratio=0.25, entropy="normalized").on_rollout_end(None, module, rollout)
    assert not rollout.wm_selected.tolist()[0]  # log 2 of log 8 is less certain than 0.9 log 2 of log 2
    with pytest.raises(ValueError, match="entropy"):
        ActionEntropySelection(entropy="vocab")


class GradTermCheck(L.Callback):
    """At every step, the logged per-term gradient norms against two separate backward passes of a copy
    of the module as it was when the step began."""

    def __init__(self):
        self.checked = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.state = copy.deepcopy(module.state_dict())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if (trainer.global_step - 1) % module.hparams.log_grad_terms_every_n_steps:
            assert module._wm_grads is None  # measured on no other step
            return
        measured = {k: float(v) for k, v in module.grad_terms.items()}
        twin = quiet(PaWModule(**module.hparams))
        twin.load_state_dict(self.state)
        rl, wm, _ = twin.loss_terms(batch)
        params = [p for p in twin.parameters() if p.requires_grad]
        norm = lambda loss: torch.sqrt(sum((g ** 2).sum() for g in torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True) if g is not None))
        expected_rl, expected_wm = norm(rl), (norm(wm) if wm is not None else torch.zeros(()))
        self.checked.append((measured["grad/rl_norm"], float(expected_rl), measured["grad/wm_norm"], float(expected_wm)))


def test_logged_gradient_norms_per_term_equal_separate_backward_passes(tmp_path):
    module = PaWModule(lr=1e-2, log_grad_terms_every_n_steps=2, world_model="head")
    check = GradTermCheck()
    trainer = corridor_fit(tmp_path, module, max_epochs=2, callbacks=[check])
    assert check.checked and trainer.global_step >= 4
    assert len(check.checked) == len(range(0, trainer.global_step, 2))  # every second optimiser step
    for rl, expected_rl, wm, expected_wm in check.checked:
        assert rl == pytest.approx(expected_rl, rel=1e-4, abs=1e-7) and wm == pytest.approx(expected_wm, rel=1e-4, abs=1e-7)
    assert any(wm > 0 for _, _, wm, _ in check.checked)
    ratio = metric_column(tmp_path, "grad/wm_over_rl")  # per iteration: the mean over its measured steps
    assert len(ratio) == 2 and all(r >= 0 for r in ratio)


@pytest.mark.parametrize("options", [
    {"wm_context": "turn", "wm_horizon": 2, "wm_dedup": True, "wm_normalize": "update", "wm_target": "shuffled"},
    {"wm_context": "turn", "wm_horizon": 3, "world_model": "head", "wm_dedup": True},
    {"wm_coef": 0.0},
], ids=["options-shared-placebo", "options-head", "no-wm"])
def test_two_iterations_fit_with_the_world_model_options(tmp_path, options):
    module = PaWModule(lr=1e-2, log_grad_terms_every_n_steps=1, **options)
    corridor_fit(tmp_path, module, max_epochs=2)
    assert len(metric_column(tmp_path, "rollout/zero_adv_group_frac")) == 2
    selected = metric_column(tmp_path, "paw/selected_frac")
    assert (selected == []) == (options.get("wm_coef", 1.0) == 0)  # absent when no WM loss runs
    if options.get("wm_coef", 1.0) > 0:
        assert metric_column(tmp_path, "paw/wm_term_step") and metric_column(tmp_path, "grad/wm_norm")
        assert metric_column(tmp_path, "paw/dedup_dropped_frac")
    else:
        assert set(metric_column(tmp_path, "grad/wm_norm")) == {0.0}


# ----- token-budget micro-batches: the same step in less memory ----------------------------------------
def step_result(module, batch):
    """(gradients, logged numbers) of one training step on ``batch``."""
    logged = {}
    module.log_dict = lambda values, **k: logged.update({key: float(v.compute() if hasattr(v, "compute") else v) for key, v in values.items()})
    module.log = lambda *a, **k: None
    for metric in (module.wm_token_acc, module.clipped_token_frac, module.wm_token_acc_all_rows):
        metric.reset()
    module.zero_grad()
    module.training_step(batch, 0).backward()
    return [p.grad.clone() for p in module.parameters() if p.grad is not None], logged


@pytest.mark.parametrize("actor, options", [
    (ScoreActor(), {}),
    (GenerateActor(max_new_tokens=5), {}),
    (ScoreActor(), {"world_model": "head"}),
    (GenerateActor(max_new_tokens=5), {"advantage": "ppo", "value_lr": 1e-2}),
], ids=["score", "generate", "wm-head", "ppo-critic"])
def test_one_mini_batch_gives_the_same_step_whole_row_by_row_and_under_a_token_budget(actor, options):
    torch.manual_seed(0)
    module = PaWModule(lr=1e-3, kl_coef=0.01, entropy_coef=0.01, **options)
    rollout = rollout_for(module, actor, num_groups=2, group_size=2, max_steps=3)
    n = len(rollout)
    rollout.advantages = torch.randn(n)  # every term of the loss matters
    rollout.wm_selected = torch.arange(n) % 3 != 0
    rollout.wm_weight = torch.rand(n) + 0.1
    from paw_lightning.rollout.batch import micro_batches, training_batch

    batch = training_batch(rollout, list(range(n)), module.tokenizer.pad_token_id)
    whole_grads, whole_logs = step_result(module, batch)
    assert "paw/wm_term" in whole_logs and whole_logs["loss/total"] != 0
    widths = batch["attention_mask"].sum(1)
    for budget in (1, int(widths.max()) * 2):
        assert len(micro_batches(batch, budget)) > 1
        module.micro_budget = budget
        grads, logs = step_result(module, batch)
        assert logs.keys() == whole_logs.keys()
        logs = dict(logs)
        assert logs.pop("perf/micro_batch_budget") == budget and whole_logs["perf/micro_batch_budget"] == 0  # 0: whole
        for key in logs:
            assert logs[key] == pytest.approx(whole_logs[key], rel=1e-4, abs=1e-6), key
        for a, b in zip(whole_grads, grads):
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    module.micro_budget = None


def test_through_lightnings_loop_every_micro_batch_reaches_the_optimiser_step(tmp_path):
    """Lightning zeroes gradients between ``training_step`` and its backward: the micro-batches that
    ``training_step`` back-propagates itself must survive that, so a budget gives the unsplit gradient
    at the optimiser step (and again on the next step, from zero: nothing leaks across steps)."""
    from torch.utils.data import DataLoader

    from paw_lightning.rollout.batch import micro_batches, training_batch

    torch.manual_seed(0)
    module = quiet(PaWModule(lr=1e-3, kl_coef=0.0, entropy_coef=0.01))
    rollout = rollout_for(module, ScoreActor(), num_groups=2, group_size=2, max_steps=3)
    n = len(rollout)
    rollout.advantages = torch.randn(n)
    rollout.wm_selected = torch.arange(n) % 3 != 0
    rollout.wm_weight = torch.rand(n) + 0.1
    batch = training_batch(rollout, list(range(n)), module.tokenizer.pad_token_id)
    assert len(micro_batches(batch, 1)) == n

    class KeepGradients(L.Callback):
        def __init__(self):
            self.grads = []

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.grads.append([p.grad.clone() for p in pl_module.parameters() if p.requires_grad])

    start = copy.deepcopy(module.state_dict())
    kept = {}
    for budget in (None, 1):
        module.load_state_dict(start)
        module.micro_budget = budget
        kept[budget] = KeepGradients()
        trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=[kept[budget]], default_root_dir=tmp_path)
        trainer.fit(module, train_dataloaders=DataLoader([batch, batch], batch_size=None))
    module.micro_budget = None
    for step in range(2):
        for a, b in zip(kept[None].grads[step], kept[1].grads[step]):
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    assert any(not torch.equal(a, b) for a, b in zip(kept[None].grads[0], kept[None].grads[1]))  # the weights moved


def test_micro_batches_group_rows_by_length_within_the_budget():
    from paw_lightning.rollout.batch import token_budget_groups

    lengths = [5, 30, 6, 28, 7, 100]
    groups = token_budget_groups(lengths, budget=60)
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert groups == [[5], [1, 3], [4, 2, 0]]  # 100 > budget runs alone; 2 x 30 and 3 x 7 fit in 60
    assert all(len(g) * max(lengths[i] for i in g) <= 60 for g in groups if len(g) > 1)
    assert token_budget_groups(lengths, None) == [list(range(6))]
    assert token_budget_groups(lengths, None, max_rows=4) == [[5, 1, 3, 4], [2, 0]]
    assert token_budget_groups([], 10) == []


def test_scoring_passes_keep_to_the_budget_and_give_the_same_numbers():
    module = PaWModule(lr=1e-3, kl_coef=0.01, score_batch_size=32)
    rollout = rollout_for(module, GenerateActor(max_new_tokens=4), prepare=False)
    whole = module._score_pass(rollout, policy=True, reference=True, values=False)
    seen = []
    original = module._policy_units
    module._policy_units = lambda model, hidden, batch: seen.append(batch["input_ids"].numel()) or original(model, hidden, batch)
    module.micro_budget = 120  # the budget in force (the constructor's, the planner's or a retry's)
    split = module._score_pass(rollout, policy=True, reference=True, values=False)
    longest = max(int(collate_of(module, rollout)["attention_mask"].sum(1).max()), 1)
    assert len(seen) > 2 and max(seen) <= max(120, longest)
    for key in ("old", "ref", "entropy"):
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(whole[key], split[key])), key


def test_a_budget_is_checked_before_the_model_loads():
    with pytest.raises(ValueError, match="max_tokens_per_micro_batch must be >= 1"):
        PaWModule(max_tokens_per_micro_batch=0)
