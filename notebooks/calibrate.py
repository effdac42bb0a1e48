"""Measure a model's untrained success on candidate games, to pick a benchmark with room to learn.

For each candidate env, plays ``--episodes`` episodes on the train split at the rollout temperature and
as many on the held-out split at the validation temperature, with the score actor and the model as it
is loaded (a fresh LoRA adapter changes nothing: its B matrix starts at zero). Writes one CSV row per
(candidate, split) and prints a Markdown table::

    python notebooks/calibrate.py --model smollm2-135m-instruct --output notebooks/calibration_smollm2.csv

Pick a candidate whose success lies between about 10 % and 40 % on both splits: room to learn, and
reward sparse enough for PaW's reward-adaptive weight to stay on.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch

from paw_lightning.metrics import episode_metrics
from paw_lightning.models import load_model
from paw_lightning.rollout.datamodule import RolloutDataModule

# name -> (env_id, env_kwargs, held-out split kwargs, max_steps)
TWX = {"split": "train", "reward": "win", "win_reward": 10.0, "jvm_heap_mb": 256}
SCIENCEWORLD_FIND = {
    "tasks": ["find-living-thing", "find-non-living-thing", "find-plant", "find-animal"], "split": "train",
    "simplifications": "easy", "reward": "win", "win_reward": 10.0,
    "keep_commands": ["teleport to", "focus on", "pick up", "move", "look around"], "max_commands": 48,
    "jvm_heap_mb": 256,
}
CANDIDATES: dict[str, tuple[str, dict, dict, int]] = {
    "tw-coin_collector level 2": (
        "paw/TextWorld-v0", {"challenge": "tw-coin_collector", "settings": {"level": 2}}, {"split": "eval"}, 6),
    "tw-coin_collector level 3": (
        "paw/TextWorld-v0", {"challenge": "tw-coin_collector", "settings": {"level": 3}}, {"split": "eval"}, 6),
    "tw-coin_collector level 5": (
        "paw/TextWorld-v0", {"challenge": "tw-coin_collector", "settings": {"level": 5}}, {"split": "eval"}, 8),
    "tw-coin_collector level 8": (
        "paw/TextWorld-v0", {"challenge": "tw-coin_collector", "settings": {"level": 8}}, {"split": "eval"}, 10),
    "tw-treasure_hunter level 1": (
        "paw/TextWorld-v0", {"challenge": "tw-treasure_hunter", "settings": {"level": 1}}, {"split": "eval"}, 6),
    "tw-treasure_hunter level 5": (
        "paw/TextWorld-v0", {"challenge": "tw-treasure_hunter", "settings": {"level": 5}}, {"split": "eval"}, 8),
    "tw-treasure_hunter level 10": (
        "paw/TextWorld-v0", {"challenge": "tw-treasure_hunter", "settings": {"level": 10}}, {"split": "eval"}, 10),
    "tw-cooking recipe 1 take 1": (
        "paw/TextWorld-v0", {"challenge": "tw-cooking", "settings": {"recipe": 1, "take": 1, "go": 1}}, {"split": "eval"}, 8),
    "twx coin 5 rooms no doors": (
        "paw/TextWorldExpress-v0", TWX | {"game": "coin", "game_params": "numLocations=5,includeDoors=0"},
        {"split": "dev"}, 10),
    "twx coin 5 rooms doors": (
        "paw/TextWorldExpress-v0", TWX | {"game": "coin", "game_params": "numLocations=5,includeDoors=1"},
        {"split": "dev"}, 10),
    "twx cookingworld 1 room 1 ingredient": (
        "paw/TextWorldExpress-v0",
        TWX | {"game": "cookingworld",
               "game_params": "numLocations=1,numIngredients=1,numDistractorItems=0,includeDoors=0,limitInventorySize=0"},
        {"split": "dev"}, 10),
    "twx mapreader 4 rooms": (
        "paw/TextWorldExpress-v0", TWX | {"game": "mapreader", "game_params": "numLocations=4,maxDistanceApart=2"},
        {"split": "dev"}, 10),
    "scienceworld find-* easy": ("paw/ScienceWorld-v0", SCIENCEWORLD_FIND, {"split": "dev"}, 8),
    "alfworld small rooms": (
        "paw/ALFWorld-v0",
        {"split": "train", "win_reward": 10.0,
         "generate": {"games_per_type": 2, "eval_games_per_type": 1, "seed": 0, "room_size": "small"}},
        {"split": "eval_out_of_distribution"}, 10),
}
COLUMNS = ("candidate", "split", "temperature", "episodes", "success", "return", "length", "env_steps", "seconds")


def pool_kwargs(env_id: str, env_kwargs: dict, episodes: int) -> dict:
    """TextWorld pools as large as the episode count (one game per episode); ALFWorld as generated."""
    if env_id == "paw/TextWorld-v0":
        return env_kwargs | {"num_train": episodes, "num_eval": episodes}
    return env_kwargs


def measure(model, tokenizer, name: str, split: str, temperature: float, args) -> dict:
    env_id, env_kwargs, heldout, max_steps = CANDIDATES[name]
    kwargs = pool_kwargs(env_id, env_kwargs, args.episodes)
    data = RolloutDataModule(
        env_id=env_id, env_kwargs=kwargs, actor="score", max_steps=max_steps, history_length=args.history_length,
        prompt_template="alfworld" if "ALFWorld" in env_id else "textworld",
        max_prompt_tokens=1536 if "ScienceWorld" in env_id else args.max_prompt_tokens,
        val_episodes=args.episodes, val_env_kwargs=heldout if split == "held-out" else {},
        val_temperature=temperature, env_workers=0, progress=not args.quiet,
    )
    started = time.perf_counter()
    with torch.no_grad():
        rollout = data.validate(model, tokenizer)
    data.teardown("validate")
    metrics = episode_metrics(rollout.episodes)
    return {
        "candidate": name, "split": split, "temperature": temperature, "episodes": len(rollout.episodes),
        "success": metrics["episode/success_rate"], "return": metrics["episode/return"],
        "length": metrics["episode/length"], "env_steps": rollout.env_steps,
        "seconds": round(time.perf_counter() - started, 1),
    }


def markdown(rows: list[dict]) -> str:
    lines = ["| candidate | split | temperature | episodes | success | mean length | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['candidate']} | {r['split']} | {r['temperature']} | {r['episodes']} | "
                     f"{float(r['success']):.2f} | {float(r['length']):.1f} | {r['seconds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES), metavar="NAME")
    parser.add_argument("--episodes", type=int, default=16, help="episodes per split (one game each on TextWorld)")
    parser.add_argument("--temperature", type=float, default=1.0, help="train split: the rollout temperature")
    parser.add_argument("--val-temperature", type=float, default=0.4, help="held-out split: the validation temperature")
    parser.add_argument("--history-length", type=int, default=2)
    parser.add_argument("--max-prompt-tokens", type=int, default=768)
    parser.add_argument("--output", default="notebooks/calibration_smollm2.csv")
    parser.add_argument("--splits", nargs="+", default=["train", "held-out"], choices=["train", "held-out"],
                        help="which splits to measure (train at --temperature, held-out at --val-temperature)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model, tokenizer = load_model(args.model, dtype=args.dtype)
    model.eval()
    output = Path(args.output)
    done = list(csv.DictReader(open(output))) if output.exists() else []  # a re-run measures only what is missing
    rows = list(done)
    for name in args.candidates:
        for split, temperature in (("train", args.temperature), ("held-out", args.val_temperature)):
            if split not in args.splits or any(r["candidate"] == name and r["split"] == split for r in done):
                continue
            rows.append(measure(model, tokenizer, name, split, temperature, args))
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
            output.parent.mkdir(parents=True, exist_ok=True)
            with open(output, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
