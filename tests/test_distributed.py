"""Several processes: the work split and the loss shares in one process, PaW's global statistics on a
2-process gloo group, and 2-process ``paw fit`` runs (Lightning DDP on CPU) that must finish."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from paw_lightning.advantages import whiten
from paw_lightning.distributed import (
    Ranks,
    balanced_minibatches,
    gather_varlen,
    global_dedup_mask,
    global_top_fraction_mask,
    global_whiten,
    loss_scales,
    step_counts,
    sum_over_ranks,
)
from paw_lightning.selection import top_fraction_mask

ROOT = Path(__file__).resolve().parents[1]


def fake_trainer(rank: int, world_size: int) -> SimpleNamespace:
    return SimpleNamespace(world_size=world_size, global_rank=rank, strategy=SimpleNamespace(root_device=torch.device("cpu")))


# ----- one process ------------------------------------------------------------------------------
def test_loss_shares_make_the_ddp_mean_of_rank_means_the_global_token_mean():
    # step 0: rank 0 has 3 units of mean 2, rank 1 one unit of 10 -> global token-mean 16 / 4 = 4
    # step 1: rank 1 has no selected WM row (its share is 0), and nobody has any in column 2
    local = {0: torch.tensor([[3.0, 1.0, 0.0], [2.0, 2.0, 0.0]]), 1: torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])}
    world = local[0] + local[1]
    share = {r: loss_scales(local[r], world, 2) for r in (0, 1)}
    assert share[0][0, 0].item() == pytest.approx(1.5) and share[1][0, 0].item() == pytest.approx(0.5)
    assert (2.0 * share[0][0, 0] + 10.0 * share[1][0, 0]).item() / 2 == pytest.approx(4.0)
    assert share[0][1, 0].item() == pytest.approx(2.0) and share[1][1, 0].item() == 0.0
    assert share[0][:, 2].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("budget", [None, 40], ids=["whole", "micro-batches"])
def test_two_ranks_gradient_with_shares_equals_one_process_gradient_of_their_rows(budget):
    """DDP averages the ranks' gradients; with the loss shares that average is the one-process gradient
    of the union of the rows (generate actor: token-level policy units of different lengths, WM on a
    subset, KL and entropy on), also when each rank cuts its mini-batch into micro-batches."""
    from paw_lightning.module import PaWModule
    from paw_lightning.rollout.actors import GenerateActor
    from paw_lightning.rollout.batch import training_batch
    from tests.test_module import quiet, rollout_for

    torch.manual_seed(0)
    module = quiet(PaWModule(lr=1e-3, kl_coef=0.01, entropy_coef=0.01))
    rollout = rollout_for(module, GenerateActor(max_new_tokens=6), num_groups=2, group_size=2, max_steps=2)
    n = len(rollout)
    rollout.advantages = torch.randn(n)
    rollout.wm_selected = torch.arange(n) % 3 != 0
    rollout.wm_weight = torch.rand(n)
    rows = {0: list(range(0, n, 3)), 1: [i for i in range(n) if i % 3]}  # the ranks hold unequal token counts
    assert sum(len(rollout.transitions[i].action_ids) for i in rows[0]) != sum(len(rollout.transitions[i].action_ids) for i in rows[1])
    pad = module.tokenizer.pad_token_id

    module.zero_grad()
    module.training_step(training_batch(rollout, sorted(rows[0] + rows[1]), pad), 0).backward()
    union = [p.grad.clone() for p in module.model.parameters()]

    local = {r: torch.tensor([step_counts(rollout, rows[r])]) for r in rows}
    world = local[0] + local[1]
    module.zero_grad()
    module.micro_budget = budget  # the budget in force
    for r in rows:
        batch = training_batch(rollout, rows[r], pad)
        batch["loss_scale"] = dict(zip(("rl", "value", "wm"), loss_scales(local[r], world, 2)[0].tolist()))
        module.training_step(batch, 0).backward()  # (micro-batches before the last are back-propagated inside)
    for a, p in zip(union, module.model.parameters()):
        assert torch.allclose(a, p.grad / 2, atol=1e-6, rtol=1e-4)  # DDP: the mean over the 2 ranks


def test_one_process_statistics_are_the_plain_ones_bit_for_bit():
    scores, ranks = torch.rand(11), Ranks()
    assert torch.equal(global_top_fraction_mask(scores, 0.75, ranks), top_fraction_mask(scores, 0.75))
    assert torch.equal(global_whiten(scores, ranks), whiten(scores))
    assert gather_varlen(scores, ranks)[0] is scores and sum_over_ranks([3, 4.5], ranks) == [3, 4.5]
    assert Ranks.of(None) == Ranks() and Ranks.of(fake_trainer(0, 1)) == Ranks()


def test_combined_metrics_cover_every_rank_episode():
    from paw_lightning.metrics import combine_rank_metrics
    from paw_lightning.rollout.types import Episode

    rank0 = [Episode(i, i, 0, "a", total_return=10.0, length=1, won=True, valid_actions=1) for i in range(2)]
    rank1 = [Episode(i, i, 0, "b", total_return=0.0, length=5, won=False, valid_actions=4) for i in range(4)]
    per_rank = [
        {"episode/success_rate": 1.0, "rollout/env_steps": 2.0, "rollout/wall_s": 1.0, "paw/selected_frac": 1.0, "paw/lambda_mean": 0.0},
        {"episode/success_rate": 0.0, "rollout/env_steps": 20.0, "rollout/wall_s": 4.0, "paw/selected_frac": 0.5, "paw/lambda_mean": 1.0},
    ]
    metrics = combine_rank_metrics(per_rank, rank0 + rank1)
    assert metrics["episode/success_rate"] == pytest.approx(2 / 6)  # not the mean of the rank means (0.5)
    assert metrics["episode/success_rate/a"] == 1.0 and metrics["episode/count/b"] == 4.0
    assert metrics["episode/length"] == pytest.approx(22 / 6) and metrics["episode/valid_action_ratio"] == pytest.approx(18 / 22)
    assert metrics["rollout/env_steps"] == 22.0 and metrics["rollout/wall_s"] == 4.0
    assert metrics["rollout/env_steps_per_s"] == pytest.approx(22 / 4)
    assert metrics["paw/selected_frac"] == pytest.approx((2 * 1.0 + 20 * 0.5) / 22)
    assert metrics["paw/lambda_mean"] == pytest.approx(0.5)


def test_ranks_play_consecutive_slices_of_one_seed_draw_and_keep_their_rng_in_step():
    from paw_lightning.rollout.datamodule import RolloutDataModule

    import tests.envs.fakes  # noqa: F401 - registers paw-test/Corridor-v0

    one = RolloutDataModule(env_id="paw-test/Corridor-v0", num_groups=6, seed=5)
    ranks = [RolloutDataModule(env_id="paw-test/Corridor-v0", num_groups=3, seed=5) for _ in range(2)]
    for _ in range(2):  # two iterations
        union, one_sampling = one.draw_seeds(0, 1)
        drawn = [dm.draw_seeds(r, 2) for r, dm in enumerate(ranks)]
        assert drawn[0][0] + drawn[1][0] == union  # the tasks of one process with 2 x num_groups groups
        assert drawn[0][1] == one_sampling and drawn[1][1] != drawn[0][1]  # rank 0 samples as one process would
        assert ranks[0].rng.bit_generator.state == ranks[1].rng.bit_generator.state  # one checkpoint resumes both


def test_validation_episodes_split_over_processes_and_auto_picks_vllm_for_generate():
    from paw_lightning.rollout.datamodule import RolloutDataModule
    from paw_lightning.rollout.engines import resolve_engine, vllm_available

    import tests.envs.fakes  # noqa: F401

    dm = RolloutDataModule(env_id="paw-test/Corridor-v0", val_episodes=8)
    shares = []
    for rank in range(3):
        dm.trainer = fake_trainer(rank, 3)
        shares.append(dm.val_indices())
    assert shares == [[0, 1, 2], [3, 4, 5], [6, 7]]
    dm = RolloutDataModule(env_id="paw-test/Corridor-v0", val_episodes=1)
    dm.trainer = fake_trainer(0, 2)
    with pytest.raises(ValueError, match="val_episodes"):
        dm.setup("fit")
    # one engine per process: with several processes auto is what it is with one
    assert resolve_engine("auto", "generate") == ("vllm" if vllm_available() else "hf") and resolve_engine("auto", "score") == "hf"


def test_a_vllm_engine_for_several_processes_joins_the_trainers_group_or_says_how():
    from paw_lightning.rollout.vllm_engine import VLLMSettings, engine_kwargs

    # no group, or the one-process group an earlier test's vLLM engine made: neither is 2 processes
    with pytest.raises(RuntimeError, match="after the trainer's process group .* let RolloutDataModule build it"):
        engine_kwargs(VLLMSettings(folder="tiny", rank=1, world_size=2))
    assert "distributed_executor_backend" not in engine_kwargs(VLLMSettings(folder="tiny"))  # one process: vLLM's default


# ----- two processes, gloo ----------------------------------------------------------------------
SCORES = {0: torch.tensor([0.5, 0.9, 0.1, 0.9, 0.3]), 1: torch.tensor([0.9, 0.9, 0.7])}
ACTION_LENGTHS = {0: [1, 2, 3, 4, 5, 6, 7], 1: [3, 4]}  # rank 1 has fewer transitions than steps


class _TinyRollout:
    """What balanced_minibatches reads from a rollout."""

    def __init__(self, lengths):
        self.mode = "generate"
        self.transitions = [SimpleNamespace(action_ids=[0] * k) for k in lengths]
        self.wm_selected = torch.tensor([i % 2 == 0 for i in range(len(lengths))])

    def __len__(self):
        return len(self.transitions)


def _build(rollout, indices, pad_id):
    return {"indices": list(indices), "unit_mask": torch.ones(len(indices), 1, dtype=torch.bool),
            "wm_selected": rollout.wm_selected[list(indices)], "wm_weight": torch.ones(len(indices))}


def _gloo_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from paw_lightning.callbacks import ActionEntropySelection, RewardAdaptiveBalancing
    from tests.test_callbacks import make_rollout

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        trainer = fake_trainer(rank, 2)
        ranks = Ranks.of(trainer)
        scores = SCORES[rank]
        out = {"masks": {ratio: global_top_fraction_mask(scores, ratio, ranks) for ratio in (0.25, 0.375, 0.5, 0.75, 1.0)}}
        out["whiten"] = global_whiten(scores, ranks)
        out["gathered"] = gather_varlen(scores, ranks)
        out["sums"] = sum_over_ranks([len(scores), 0.5], ranks)
        keys = [("a",), ("b",), ("a",)] if rank == 0 else [("b",), ("c",), ("a",)]
        out["dedup"] = global_dedup_mask(keys, torch.tensor([False, True, True] if rank == 0 else [True, True, True]), ranks)
        rollout = SimpleNamespace(action_entropy=scores, wm_selected=torch.ones(len(scores), dtype=torch.bool))
        ActionEntropySelection(ratio=0.5).on_rollout_end(trainer, None, rollout)
        out["callback_mask"] = rollout.wm_selected
        single = make_rollout([10.0, 0.0] if rank == 0 else [0.0, 0.0, 0.0, 10.0], list(range(2 if rank == 0 else 4)), 1)
        RewardAdaptiveBalancing(r_max=10.0).on_rollout_end(trainer, None, single)  # group_size 1: one global group
        out["lambda"] = single.wm_weight / 0.5
        batches = balanced_minibatches(_TinyRollout(ACTION_LENGTHS[rank]), 2, 3, 0, np.random.default_rng(rank), ranks, _build)
        out["batches"] = [(b["indices"], b["loss_scale"], bool(b["unit_mask"].any())) for b in batches]
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_global_statistics_on_two_gloo_ranks_equal_one_process_on_the_union(tmp_path):
    torch.multiprocessing.start_processes(_gloo_worker, args=(free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    out = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    union = torch.cat([SCORES[0], SCORES[1]])
    for ratio in (0.25, 0.375, 0.5, 0.75, 1.0):
        assert torch.equal(torch.cat([out[0]["masks"][ratio], out[1]["masks"][ratio]]), top_fraction_mask(union, ratio))
    # the callback selects globally: the four 0.9s, not each rank's own top half
    assert out[0]["callback_mask"].tolist() == [False, True, False, True, False] and out[1]["callback_mask"].tolist() == [True, True, False]
    assert top_fraction_mask(SCORES[0], 0.5).tolist() != out[0]["callback_mask"].tolist()
    assert torch.allclose(torch.cat([out[0]["whiten"], out[1]["whiten"]]), whiten(union), atol=1e-6)
    assert all(torch.equal(o["gathered"][r], SCORES[r]) for o in out for r in (0, 1))
    assert out[0]["sums"] == out[1]["sums"] == [8.0, 1.0]
    # the first selected copy over both ranks keeps its WM loss: rank 0 has a (2nd) and b, so rank 1 keeps only c
    assert out[0]["dedup"].tolist() == [False, True, True] and out[1]["dedup"].tolist() == [False, True, False]
    assert torch.allclose(out[0]["lambda"], torch.full((2,), 1 - 20 / 6 / 10)) and torch.allclose(out[1]["lambda"], torch.full((4,), 1 - 20 / 6 / 10))

    # equal steps: ceil(7 / 3) = 3 per epoch on both ranks; rank 1 (2 transitions) fills one step per epoch
    batches = [o["batches"] for o in out]
    assert len(batches[0]) == len(batches[1]) == 6
    for rank in (0, 1):
        for epoch in (0, 1):
            seen = [i for idx, _, real in batches[rank][3 * epoch : 3 * epoch + 3] if real for i in idx]
            assert sorted(seen) == list(range(len(ACTION_LENGTHS[rank])))  # every transition once per epoch
    assert [real for _, _, real in batches[1]].count(False) == 2
    for step in range(6):  # each step's shares turn the mean of the ranks' token-means into the global one
        values = {r: [float(10 * r + i) for i in batches[r][step][0]] for r in (0, 1)}
        units = {r: [ACTION_LENGTHS[r][i] for i in batches[r][step][0]] for r in (0, 1)}
        real = {r: batches[r][step][2] for r in (0, 1)}
        total = sum(v * u for r in (0, 1) if real[r] for v, u in zip(values[r], units[r]))
        count = sum(u for r in (0, 1) if real[r] for u in units[r])
        ddp = sum(batches[r][step][1]["rl"] * sum(v * u for v, u in zip(values[r], units[r])) / max(sum(units[r]), 1)
                  for r in (0, 1) if real[r]) / 2
        assert ddp == pytest.approx(total / count)
        assert all(batches[r][step][1]["rl"] == 0.0 for r in (0, 1) if not real[r])


# ----- two processes through the CLI --------------------------------------------------------------
def start_paw(args: list[str], cwd: Path, script: tuple[str, ...] = ("tests/paw_with_fakes.py",)) -> subprocess.Popen:
    """``paw fit`` through ``script`` (tests/paw_with_fakes.py, or tests/vllm_ddp_fit.py with its folder) in its
    own process group (every rank: Lightning starts rank 1 from rank 0)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.Popen([sys.executable, str(ROOT / script[0]), *script[1:], *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def run_paw(args: list[str], cwd: Path, timeout: int = 420, script: tuple[str, ...] = ("tests/paw_with_fakes.py",)) -> str:
    """``start_paw`` until it ends; a hang is killed and fails."""
    proc = start_paw(args, cwd, script)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # every rank: Lightning starts rank 1 from rank 0
        out, _ = proc.communicate()
        pytest.fail(f"paw fit did not finish in {timeout} s (a hang between ranks?):\n{out[-4000:]}")
    assert proc.returncode == 0, out[-4000:]
    return out


def two_rank_args(dump: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(ROOT / "configs/quickstart.yaml"), "--config", str(ROOT / "configs/strategies/ddp.yaml"),
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.max_epochs=3", "--trainer.check_val_every_n_epoch=1",
        "--trainer.enable_progress_bar=false", "--checkpoint.save_top_k=-1",
        "--data.env_id=paw-test/RankCorridor-v0", "--data.env_kwargs={}", "--data.val_env_kwargs={}", "--data.val_episodes=2",
        "--data.engine=hf", "--data.num_groups=2", "--data.group_size=2", "--data.max_steps=4", "--data.mini_batch_size=3",
        "--data.progress=false", "--trainer.callbacks+=tests.envs.fakes.EpisodeDump", f"--trainer.callbacks.dirpath={dump}",
        # a separate WM head: rank 0's groups all win (lambda 0, no WM row), and DDP still needs its gradient
        "--model.world_model=head",
        # the WM options and the per-term gradient norms (a collective on each measured step) across ranks
        "--model.wm_context=turn", "--model.wm_horizon=2", "--model.wm_normalize=update", "--model.log_grad_terms_every_n_steps=2",
        *extra,
    ]


def logged(log_dir: Path) -> dict[int, dict[str, float]]:
    by_epoch: dict[int, dict[str, float]] = {}
    for row in csv.DictReader(open(log_dir / "metrics.csv")):
        by_epoch.setdefault(int(row["epoch"]), {}).update({k: float(v) for k, v in row.items() if v and k not in ("epoch", "step")})
    return by_epoch


@pytest.mark.slow
def test_two_process_ddp_fit_with_uneven_rollouts_logs_global_metrics_and_resumes_exactly(tmp_path):
    """Rank 0's episodes win at their first step, rank 1's never (4 steps): the ranks' rollouts differ in
    size (4 vs 16 transitions) and both must still run the same number of steps; a hang fails the test."""
    dump = tmp_path / "dump"
    dump.mkdir()
    out = run_paw(two_rank_args(dump), tmp_path)
    assert out.count("PaW run summary") == 1
    log_dir = tmp_path / "runs/csv/version_0"
    metrics = logged(log_dir)
    for epoch in range(3):
        episodes = [json.loads((dump / f"rank{r}-iteration{epoch}.json").read_text()) for r in (0, 1)]
        won = [w for e in episodes for w in e["won"]]
        assert episodes[0]["transitions"] != episodes[1]["transitions"]
        assert metrics[epoch]["episode/success_rate"] == pytest.approx(sum(won) / len(won)) == pytest.approx(0.5)
        assert metrics[epoch]["episode/count"] == len(won) == 8
        assert metrics[epoch]["rollout/env_steps"] == sum(e["transitions"] for e in episodes)
        assert metrics[epoch]["val/success_rate"] == pytest.approx(0.5) and metrics[epoch]["val/count"] == 2
        assert metrics[epoch]["paw/selected_frac"] == pytest.approx(0.75)
        assert metrics[epoch]["grad/wm_norm"] > 0 and metrics[epoch]["grad/rl_norm"] > 0  # rank 1's WM rows reach rank 0's log
    checkpoints = log_dir / "checkpoints"
    uninterrupted = torch.load(checkpoints / "last.ckpt", weights_only=False)
    assert uninterrupted["RolloutDataModule"]["total_episodes"] == 24

    # resume after iteration 2 in a fresh folder: iteration 3 must retrace the uninterrupted run, here with
    # rank 1 running out of memory (a fake) for any micro-batch of more than one row: rank 1 redoes its
    # updates in one-row micro-batches, both ranks then adopt that budget, and the ranks take different
    # numbers of micro-batches on the way without a hang (DDP syncs the accumulated gradient once): the
    # rollout exactly, the weights up to float rounding
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "dump").mkdir(parents=True)
    after_two = next(checkpoints.glob("epoch=1-*.ckpt"))
    run_paw(two_rank_args(resumed_dir / "dump", f"--ckpt_path={after_two}", "--trainer.callbacks+=tests.envs.fakes.FakeOutOfMemory",
                          "--trainer.callbacks.max_rows=1", "--trainer.callbacks.rank=1"), resumed_dir)
    resumed = torch.load(resumed_dir / "runs/csv/version_0/checkpoints/last.ckpt", weights_only=False)
    assert resumed["RolloutDataModule"] == uninterrupted["RolloutDataModule"]
    for name, weight in uninterrupted["state_dict"].items():
        assert torch.allclose(resumed["state_dict"][name], weight, rtol=1e-4, atol=1e-6), name
    resumed_metrics = logged(resumed_dir / "runs/csv/version_0")[2]
    assert resumed_metrics["perf/pad_frac"] <= metrics[2]["perf/pad_frac"]  # rows grouped by length pad no more
    assert resumed_metrics["perf/tokens_per_s"] > 0
    retried = [float(r["perf/oom_retries"]) for r in csv.DictReader(open(resumed_dir / "runs/csv/version_0/metrics.csv"))
               if r.get("perf/oom_retries")]
    assert retried[-1] >= 1 and metrics[2].get("perf/oom_retries", 0.0) == 0.0  # rank 0 logs every rank's retries
    for r in (0, 1):
        assert (resumed_dir / f"dump/rank{r}-iteration2.json").read_text() == (dump / f"rank{r}-iteration2.json").read_text()


@pytest.mark.slow
def test_fsdp_in_one_cpu_process_trains_full_and_lora_models_and_syncs_vllm(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tests/fsdp_on_cpu.py"), str(tmp_path)], capture_output=True, text=True,
                          timeout=420, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]  # vLLM prints too
    runs = {r["lora_rank"]: r for r in lines if "engine" not in r}
    for run in (r for r in lines if r.get("engine") == "vllm"):  # the sync under FSDP: merged full weights, to rounding
        assert run["changed"] == run["trainable"] > 0 and run["engine_logprob_gap"] < 1e-3, run
    for lora_rank, run in runs.items():
        assert run["wrapped"] and run["changed"] == run["trainable"] > 0, run
        assert run["iterations"] == run["checkpoint_iteration"] == 2 and run["checkpoint_keys_match"], run
    assert runs[0]["fsdp_units"] == 1 + runs[0]["decoder_layers"]  # one unit per decoder layer (model and reference)
    assert runs[4]["fsdp_units"] == 1  # LoRA: the whole model is one unit


# ----- two processes, one vLLM engine each ----------------------------------------------------------
def vllm_rank_args(dump: Path, actor: str, epochs: int, *extra: str) -> list[str]:
    """``two_rank_args`` with every rank's rollouts on its own float32 vLLM engine (1 GiB KV cache)."""
    return two_rank_args(
        dump, f"--data.actor={actor}", f"--trainer.max_epochs={epochs}", f"--trainer.check_val_every_n_epoch={epochs}",
        "--data.engine=vllm", "--data.vllm_dtype=float32", "--data.vllm_kv_cache_gib=1", "--data.max_new_tokens=8", *extra,
    )


def check_after_vllm_fit(out_dir: Path) -> None:
    """What tests/vllm_ddp_fit.py saw on each rank after the fit: the trainer's group still works, the
    engine is gone with its memory, and each rank's engine log-probs are the trainer's (float32)."""
    for rank in (0, 1):
        after = json.loads((out_dir / f"after-fit-rank{rank}.json").read_text())
        assert after["all_reduce"] == 3.0, after  # 1 + 2 over the trainer's gloo group
        assert after["engines_created"] == 1 and after["engines_alive"] == 0, after
        assert after["rss_gib"] - after["rss_before_engine_gib"] < 0.5, after  # the KV cache alone is 1 GiB
        assert after["gaps"] and max(after["gaps"]) < 1e-3, after


@pytest.mark.slow
def test_two_process_vllm_fit_with_the_score_actor_and_merged_lora_leaves_the_trainers_group_usable(tmp_path):
    dump = tmp_path / "dump"
    dump.mkdir()
    lora = ("--model.lora_rank=4", "--data.vllm_lora_sync=merged")  # W + BA pushed by every rank to its engine
    run_paw(vllm_rank_args(dump, "score", 1, *lora), tmp_path, script=("tests/vllm_ddp_fit.py", str(tmp_path)))
    check_after_vllm_fit(tmp_path)
    metrics = logged(tmp_path / "runs/csv/version_0")[0]
    assert metrics["episode/success_rate"] == pytest.approx(0.5) and metrics["val/count"] == 2
    assert metrics["rollout/engine_logprob_gap"] < 1e-3


@pytest.mark.slow
def test_two_process_vllm_fit_with_the_generate_actor_and_a_lora_adapter_then_kill_9_and_resume(tmp_path):
    """The generate actor on one vLLM engine per rank, serving the LoRA adapter as a LoRA request. Beside the uninterrupted run, a second one is killed
    (every rank, -9) during its second iteration and resumed from its last checkpoint: it must log the
    uninterrupted run's episode metrics and play the same episodes."""
    from tests.test_stopping import episode_rows

    full, killed = tmp_path / "full", tmp_path / "killed"
    for run in (full, killed):
        (run / "dump").mkdir(parents=True)
    def args(dump: Path, *extra: str) -> list[str]:
        return vllm_rank_args(dump, "generate", 2, "--model.lora_rank=4", "--data.vllm_lora_sync=adapter", *extra)

    uninterrupted = start_paw(args(full / "dump"), full, ("tests/vllm_ddp_fit.py", str(full)))
    try:
        proc = start_paw(args(killed / "dump"), killed)
        try:
            wait_for_file(killed / "dump/rank0-iteration1.json", proc)  # iteration 0's checkpoint is written by then
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        last = killed / "runs/csv/version_0/checkpoints/last.ckpt"
        assert torch.load(last, weights_only=False)["epoch"] == 0
        run_paw(args(killed / "dump", f"--ckpt_path={last}"), killed)
        output, _ = uninterrupted.communicate(timeout=420)
    finally:
        if uninterrupted.poll() is None:  # a failure above: no rank of it may outlive the test
            os.killpg(uninterrupted.pid, signal.SIGKILL)
            uninterrupted.communicate()
    assert uninterrupted.returncode == 0, output[-4000:]
    check_after_vllm_fit(full)
    expected, got = episode_rows(full / "runs/csv/version_0"), episode_rows(killed / "runs/csv/version_1")
    assert sorted(expected) == [0, 1] and sorted(got) == [1] and got[1] == expected[1]
    for r in (0, 1):
        assert (killed / f"dump/rank{r}-iteration1.json").read_text() == (full / f"dump/rank{r}-iteration1.json").read_text()


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"paw fit exited ({proc.returncode}) before writing {path.name}:\n{proc.communicate()[0][-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"paw fit did not write {path.name} in {timeout} s")
        time.sleep(0.2)
