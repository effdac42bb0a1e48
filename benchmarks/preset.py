"""The paper's ALFWorld preset end to end on one GPU, under a card-size cap: does it fit, and where does
an iteration's time go?

``configs/alfworld_qwen2.5-1.5b_grpo_paw.yaml`` as it stands (QLoRA nf4 rank 64 on all linear layers,
generate actor, prompts up to 2048 tokens, 512 new tokens, observations up to 256 tokens, group size 8,
8-row mini-batches cut by its ``max_tokens_per_micro_batch``, KL, PaW's selection and balancing
callbacks), in this process, with these changes only:

- the model is a random-init Qwen2.5-1.5B shape (no weights can be fetched on the GPU machine), with the
  tiny byte-level tokenizer padded to the shape's 151,936 ids so that every sampled id decodes;
- the games are ALFWorld games from our offline generator (``generate``: ``--games``), or, where
  ALFWorld's engine (``alfworld`` + ``fast-downward-textworld``) cannot be imported, TextWorld
  coin-collector games with the same model and row settings (``env_fallback`` in the report says why);
- the HF engine (vLLM is not in the GPU image);
- one iteration of ``--num_groups`` groups (default 2, i.e. 16 episodes, against the preset's 16 groups)
  and ``--max_steps`` steps (default 4, against 50), no validation: a random-init model
  never emits EOS, so every env step is a full 512-token generate, and the preset's 128 episodes x 50
  steps would take hours; 16 x 4 keeps the step within about two minutes on an H200 while every row
  still has the preset's lengths.

    python benchmarks/preset.py --memory_cap_gb 24                       # GPU: the suite's settings
    python benchmarks/preset.py --shape tiny --device cpu -- --data.max_new_tokens=8   # a smoke run
(anything after ``--`` is passed on to ``paw fit``). The report gives seconds per phase (rollout, the
old/reference scoring passes, the update), env steps/s, generated tokens/s, peak GPU memory, whether
the step ran out of memory under the cap (a result, exit 0), and the memory planner's choice when the
run logged it (``perf/micro_batch_budget``, ``perf/gradient_checkpointing``, ``perf/oom_retries``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_cap import apply_memory_cap, is_oom, on_cuda, oom_result, peak_memory, settle  # noqa: E402
from update_step import SHAPES, append_report, save_random_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs/alfworld_qwen2.5-1.5b_grpo_paw.yaml"
GAMES = {"games_per_type": 1, "eval_games_per_type": 1, "seed": 0, "room_size": "full"}
TEXTWORLD = {"challenge": "tw-coin_collector", "settings": {"level": 3}, "num_train": 4, "num_eval": 1, "split": "train"}
PLANNER = ("perf/micro_batch_budget", "perf/gradient_checkpointing", "perf/oom_retries")
KEPT = ("rollout/wall_s", "rollout/env_steps", "rollout/env_steps_per_s", "perf/iteration_s", "perf/tokens_per_s",
        "perf/pad_frac", "episode/success_rate", "episode/valid_action_ratio", "episode/length", "loss/policy_epoch",
        "paw/wm_loss_epoch", "paw/selected_frac") + PLANNER


def padded_tokenizer(vocab_size: int):
    """The tiny byte-level tokenizer with ids up to ``vocab_size``: the extra ids are unique strings of the
    byte-level alphabet that no merge produces, so encoding is unchanged and every id a model of that
    vocabulary samples decodes to bytes (as a real tokenizer's would)."""
    from tokenizers import pre_tokenizers

    from paw_lightning.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    if vocab_size <= len(tokenizer):
        return tokenizer
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    strings = (a + b + c for a in alphabet for b in alphabet for c in ("", *alphabet))
    next_id = len(vocab)
    for s in strings:
        if next_id >= vocab_size:
            break
        if s not in vocab:
            vocab[s] = next_id
            next_id += 1
    return build_tiny_tokenizer(tokenizer_json=json.dumps(spec))


def alfworld_missing() -> str | None:
    """Why ALFWorld's engine cannot run here (``None`` when it can)."""
    try:
        import ctypes
        import importlib.resources

        import alfworld.gen.constants  # noqa: F401

        # the planner's library is loaded only when a game starts: load it now, so that a glibc or libstdc++
        # too old for it means the TextWorld fallback, not a failed step
        ctypes.CDLL(str(importlib.resources.files("fast_downward") / "libdownward.so"))
    except Exception as err:  # noqa: BLE001 - any import failure means: fall back to TextWorld
        return f"{type(err).__name__}: {err}"
    return None


def preset_command(folder: str, args, env_kwargs: dict, alfworld: bool, extra: list[str]) -> list[str]:
    """The ``paw fit`` arguments of the run (without the leading ``paw``)."""
    command = [
        "fit", "--config", str(PRESET), "--model.model_name", folder,
        "--trainer.accelerator", "gpu" if args.device.startswith("cuda") else "cpu",
        "--trainer.max_epochs", "1",
        "--trainer.enable_progress_bar", "false", "--data.progress", "false",
        "--data.engine", "hf", "--data.num_groups", str(args.num_groups), "--data.max_steps", str(args.max_steps),
        "--data.val_episodes", "0", "--data.env_kwargs", json.dumps(env_kwargs),
    ]
    if not alfworld:  # the same model and row settings on TextWorld
        command += ["--data.env_id", "paw/TextWorld-v0", "--data.prompt_template", "textworld"]
    return command + extra


class PhaseClock:
    """Times the scoring passes and the learner's steps of a ``PaWModule`` (class-level wrappers, removed by
    ``restore``) and counts the action tokens of every rollout; CUDA is synchronised at each reading."""

    def __init__(self, device: str):
        from paw_lightning.module import PaWModule

        self.cls, self.cuda = PaWModule, on_cuda(device)
        self.totals = {"scoring_s": 0.0, "update_s": 0.0, "action_tokens": 0, "transitions": 0, "train_steps": 0}
        self.saved = {name: getattr(PaWModule, name) for name in ("_score_pass", "on_train_batch_start",
                                                                   "on_train_batch_end", "on_rollout")}
        clock, original = self, self.saved

        def score_pass(module, *a, **k):
            start = clock.now()
            try:
                return original["_score_pass"](module, *a, **k)
            finally:
                clock.totals["scoring_s"] += clock.now() - start

        def batch_start(module, *a, **k):
            clock.step_started = clock.now()
            return original["on_train_batch_start"](module, *a, **k)

        def batch_end(module, *a, **k):
            clock.totals["update_s"] += clock.now() - clock.step_started
            clock.totals["train_steps"] += 1
            return original["on_train_batch_end"](module, *a, **k)

        def on_rollout(module, rollout):
            clock.totals["transitions"] += len(rollout.transitions)
            clock.totals["action_tokens"] += sum(len(t.action_ids) for t in rollout.transitions)
            return original["on_rollout"](module, rollout)

        for name, fn in (("_score_pass", score_pass), ("on_train_batch_start", batch_start),
                         ("on_train_batch_end", batch_end), ("on_rollout", on_rollout)):
            setattr(PaWModule, name, fn)

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def restore(self) -> None:
        for name, fn in self.saved.items():
            setattr(self.cls, name, fn)


def last_metrics(metrics_csv: Path) -> dict:
    """The last logged value of every metric of ``KEPT``, and of any column whose name starts with a planner
    metric's (Lightning adds ``_step``/``_epoch`` to metrics logged both ways)."""
    found = {}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            found |= {key: float(value) for key, value in row.items()
                      if value and (key in KEPT or key.startswith(PLANNER))}
    return found


def preset_benchmark(args, extra: list[str]) -> dict:
    from paw_lightning.cli import cli_main

    missing = None if args.env == "textworld" else alfworld_missing()
    if args.env == "alfworld" and missing:
        raise RuntimeError(f"--env alfworld, but ALFWorld's engine cannot be imported ({missing}): install the "
                           "alfworld and fast-downward-textworld wheels (benchmarks/gpu_wheels.sh) or use --env auto")
    alfworld = args.env != "textworld" and missing is None
    env_kwargs = {"split": "train", "win_reward": 10.0, "generate": json.loads(args.games)} if alfworld else TEXTWORLD
    report = {"env": "alfworld" if alfworld else "textworld",
              "env_fallback": None if alfworld else (missing or "--env textworld"),
              "num_groups": args.num_groups, "max_steps": args.max_steps}
    with tempfile.TemporaryDirectory() as folder, tempfile.TemporaryDirectory() as workdir:
        save_random_model(args.shape, folder, args.device, tokenizer=padded_tokenizer(SHAPES[args.shape]["vocab_size"]))
        command = preset_command(folder, args, env_kwargs, alfworld, extra)
        report["command"] = "paw " + " ".join(command).replace(folder, "<random-init folder>")
        cwd = os.getcwd()
        os.chdir(workdir)  # runs/ (logs) go to the scratch folder
        settle(args.device)
        clock = PhaseClock(args.device)
        start = time.perf_counter()
        try:
            cli = cli_main(command)
            metrics = last_metrics(Path(cli.trainer.logger.log_dir) / "metrics.csv")
        except Exception as err:  # noqa: BLE001 - an OOM under the cap is the answer; anything else fails
            if not is_oom(err):
                raise
            traceback.print_exc()
            return report | {"ok": False} | oom_result(err) | peak_memory(args.device) | clock.totals
        finally:
            clock.restore()
            os.chdir(cwd)
        wall = time.perf_counter() - start
    totals, rollout_s = clock.totals, metrics.get("rollout/wall_s", float("nan"))
    return report | {
        "ok": totals["train_steps"] > 0 and "rollout/env_steps" in metrics, "oom": False, "wall_s": wall,
        "phases_s": {"rollout": rollout_s, "scoring": totals["scoring_s"], "update": totals["update_s"],
                     "iteration": metrics.get("perf/iteration_s"),
                     "setup": wall - metrics.get("perf/iteration_s", 0.0)},
        "env_steps": metrics.get("rollout/env_steps"), "env_steps_per_s": metrics.get("rollout/env_steps_per_s"),
        "generated_tokens": totals["action_tokens"], "generated_tokens_per_s": totals["action_tokens"] / rollout_s,
        "train_steps": totals["train_steps"], "learner_tokens_per_s": metrics.get("perf/tokens_per_s"),
        "planner": {key: value for key, value in metrics.items() if key.startswith(PLANNER)} or None,
        "metrics": metrics,
    } | peak_memory(args.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-1.5b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--memory_cap_gb", type=float, default=24.0,
                        help="cap this process's CUDA allocator at this many GiB (0: no cap); an OOM is recorded")
    parser.add_argument("--num_groups", type=int, default=2, help="groups of the one iteration (the preset: 16)")
    parser.add_argument("--max_steps", type=int, default=4, help="steps per episode (the preset: 50)")
    parser.add_argument("--env", choices=("auto", "alfworld", "textworld"), default="auto",
                        help="auto: ALFWorld when its engine imports, else TextWorld (recorded in env_fallback)")
    parser.add_argument("--games", default=json.dumps(GAMES), help="the ALFWorld env's generate option (JSON)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    report = {"device": device_name, "date": time.strftime("%Y-%m-%d"), "shape": args.shape,
              "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"paw_overrides": extra},
              "memory": apply_memory_cap(args.memory_cap_gb, args.device)}
    try:
        report["preset"] = preset_benchmark(args, extra)
    except (Exception, SystemExit) as err:  # noqa: BLE001 - the failure is the measurement: record it, exit 1
        traceback.print_exc()
        report["preset"] = {"ok": False, "oom": False, "error": f"{type(err).__name__}: {err}"}
    print(json.dumps(report, indent=2))
    append_report(report, args.out)
    sys.exit(0 if report["preset"]["ok"] or report["preset"]["oom"] else 1)


if __name__ == "__main__":
    main()
