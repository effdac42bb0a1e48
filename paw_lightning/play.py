"""``paw play``: watch a policy play episodes, step by step, or play an environment by hand.

    paw play --config configs/quickstart.yaml --ckpt_path last --episodes 2          # the run's latest checkpoint
    paw play --config C --adapter runs/csv/version_0/adapters/final --split train   # a LoRA adapter (AdapterExport)
    paw play --config configs/quickstart.yaml --human                               # you type the actions

The config (and any ``--model.*`` / ``--data.*`` override, as for ``paw fit``) says which model, env,
actor and rollout engine; the episodes run through the same Collector as training (``--split eval``: the
validation tasks, seeds ``data.val_seed + i``, ``data.val_env_kwargs``, ``data.val_temperature``; ``train``:
seeds ``--seed + i`` at ``data.temperature``), and each is printed with ``episode_log.episode_text``: the
observation, the action with its probability and the likeliest alternatives (score actor) or the raw
response (generate actor), and the reward. ``--human`` loads no model: it shows each observation and the
numbered admissible commands and reads a number or free text from stdin (``quit`` or end of input stops).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import torch

from paw_lightning.cli_config import build_cli, last_checkpoint, setup_errors
from paw_lightning.episode_log import episode_records, episode_text
from paw_lightning.rollout.env_workers import make_text_env
from paw_lightning.rollout.prompts import sanitize_action


def play_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paw play", allow_abbrev=False,
        description="Play episodes with a trained policy (or by hand) and print every step.",
        epilog="Every other argument goes to the config parser as in `paw fit`: --config, --model.*, --data.*.",
    )
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--ckpt_path", help="a checkpoint of `paw fit` (or `last`: the run folder's newest)")
    weights.add_argument("--adapter", help="a LoRA adapter folder written by AdapterExport (needs model.lora_rank > 0)")
    parser.add_argument("--split", choices=("eval", "train"), default="eval",
                        help="eval: the validation tasks and settings (default); train: the training env_kwargs")
    parser.add_argument("--episodes", type=int, default=1, help="episodes to play (default 1)")
    parser.add_argument("--seed", type=int, default=None,
                        help="the first episode's seed (default: data.val_seed for eval, 0 for train)")
    parser.add_argument("--human", action="store_true", help="type the actions yourself (no model is loaded)")
    return parser


def split_settings(data: dict, split: str, episodes: int, seed: int | None) -> tuple[dict, float, list[int]]:
    """(env kwargs, temperature, one seed per episode) of ``split`` under the DataModule options ``data``."""
    if split == "eval":
        kwargs = dict(data.get("env_kwargs") or {}) | dict(data.get("val_env_kwargs") or {})
        first = data.get("val_seed", 1_000_000) if seed is None else seed
        return kwargs, data.get("val_temperature", 0.4), [first + i for i in range(episodes)]
    first = 0 if seed is None else seed
    return dict(data.get("env_kwargs") or {}), data.get("temperature", 1.0), [first + i for i in range(episodes)]


def pick_action(line: str, commands: list[str] | None) -> str:
    """The human's action: ``k`` picks the k-th admissible command (1-based), anything else is sent as typed."""
    text = line.strip()
    if commands and text.isdigit() and 1 <= int(text) <= len(commands):
        return commands[int(text) - 1]
    return text


def play_by_hand(env: gym.Env, seed: int, max_steps: int, read: Callable[[str], str] = input,
                 write: Callable[[str], None] = print) -> dict:
    """One episode with actions typed by a person; returns its summary (won, return, steps, the actions)."""
    obs, info = env.reset(seed=seed)
    write(f"task: {info.get('task', '')}")
    total, actions, won = 0.0, [], False
    for step in range(max_steps):
        write(f"--- step {step}")
        write("\n".join("  | " + line for line in (obs or "(empty)").strip().splitlines()))
        commands = info.get("admissible_commands")
        for k, command in enumerate(commands or [], start=1):
            write(f"  {k:>2}. {command}")
        try:
            line = read("action (number or text, 'quit' stops)> ")
        except EOFError:
            write("(end of input)")
            break
        if line.strip() == "quit":
            break
        action = sanitize_action(pick_action(line, commands))
        if commands and action not in commands:
            write(f"  ({action!r} is not an admissible command; the env gets it anyway)")
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        actions.append(action)
        won = won or bool(info.get("won", False))
        write(f"  > {action}    reward {float(reward):+.2f}")
        if terminated or truncated:
            write("\n".join("  | " + line for line in (obs or "(empty)").strip().splitlines()))
            break
    write(f"{'won' if won else 'not won'}: return {total:.2f} in {len(actions)} steps")
    return {"won": won, "return": total, "steps": len(actions), "actions": actions}


def echoed_input(prompt: str) -> str:
    """``input``, with the line echoed when stdin is not a terminal (a script's answers show in the transcript)."""
    line = input(prompt)
    if not sys.stdin.isatty():
        print(line)
    return line


def load_weights(module, ckpt_path: str | None, adapter: str | None) -> int:
    """Put a checkpoint's weights (and the tiny tokenizer it saved), or a LoRA adapter, into ``module``;
    returns the checkpoint's iteration (0 for an adapter or no weights)."""
    if ckpt_path:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # a checkpoint is data: pickled code in one is refused
        module.on_load_checkpoint(checkpoint)
        module.load_state_dict(checkpoint["state_dict"])
        return int(checkpoint.get("epoch", 0))
    if adapter:
        if not hasattr(module.model, "peft_config"):
            raise ValueError(f"--adapter {adapter}: the config's model has no LoRA adapter (model.lora_rank is 0); "
                             "set --model.lora_rank to the adapter's rank, or give --ckpt_path instead")
        if not Path(adapter).is_dir():
            raise ValueError(f"--adapter {adapter} is not a folder; give one that AdapterExport wrote "
                             "(<log dir>/adapters/final or .../iteration-<k>)")
        from peft import load_peft_weights, set_peft_model_state_dict

        set_peft_model_state_dict(module.model, load_peft_weights(adapter, device="cpu"))
        saved = Path(adapter) / "tokenizer.json"
        if module.hparams.model_name == "tiny" and saved.is_file():
            from paw_lightning.models import build_tiny_tokenizer

            module.tokenizer = build_tiny_tokenizer(tokenizer_json=saved.read_text())
    return 0


def play_policy(cli, split: str, episodes: int, seed: int | None, iteration: int = 0,
                write: Callable[[str], None] = print) -> list[dict]:
    """Play ``episodes`` episodes with the CLI's module through its DataModule's actor and engine; print
    each one and return their records (episode_log's schema, ``iteration``: the weights' iteration)."""
    module, datamodule = cli.model, cli.datamodule
    datamodule.trainer = cli.trainer  # the engine's settings read the (single) process's rank from it
    kwargs, temperature, seeds = split_settings(dict(datamodule.hparams), split, episodes, seed)
    collector = datamodule.build_collector(kwargs, len(seeds), 1, temperature)
    try:
        engine = datamodule.engine_for(module)
        rollout = collector.collect(engine, module.tokenizer, seeds, torch.Generator().manual_seed(seeds[0]), progress=False)
    finally:
        collector.close()
        datamodule.teardown("play")
    records = episode_records(rollout, split, iteration, 0, module.tokenizer, episodes=list(range(len(rollout.episodes))))
    for record in records:
        write(episode_text(record))
        write("")
    won = sum(r["won"] for r in records)
    write(f"{won}/{len(records)} episodes won ({split} split, actor {rollout.mode}, engine {rollout.engine}, "
          f"temperature {temperature:g})")
    return records


def main(args: list[str] | None = None) -> list[dict]:
    """``paw play``: parse its own options, hand the rest to the config parser, play; returns the episodes'
    records (by hand: their summaries)."""
    options, rest = play_parser().parse_known_args(sys.argv[1:] if args is None else args)
    with setup_errors():
        if options.episodes < 1:
            raise ValueError(f"--episodes must be >= 1, got {options.episodes}")
        cli = build_cli(rest, instantiate_model=not options.human)
        data = dict(cli.datamodule.hparams)
        if options.human:
            kwargs, _, seeds = split_settings(data, options.split, options.episodes, options.seed)
            env = make_text_env(data["env_id"], kwargs)
            try:
                return [play_by_hand(env, s, data["max_steps"], read=echoed_input) for s in seeds]
            finally:
                env.close()
        ckpt_path = str(last_checkpoint(cli.config)) if options.ckpt_path == "last" else options.ckpt_path
        if ckpt_path is None and options.adapter is None:
            print("paw play: no --ckpt_path or --adapter: the policy is the config's untrained model", file=sys.stderr)
        iteration = load_weights(cli.model, ckpt_path, options.adapter)
    return play_policy(cli, options.split, options.episodes, options.seed, iteration)
