"""Rollout env steps per second with 0, 1, 2... env workers, and the collector's overhead over raw env steps.

The rollout of a config (by default the ALFWorld tiny config: 16 envs, 15 steps, the tiny model with the
score actor) is collected ``--rollouts`` times with each worker count, on the same task seeds and
sampling seeds, so every setting plays exactly the same steps (the script checks that); the settings
take turns rollout by rollout, so that a shared machine's changing load hits them alike. After each
in-process rollout its resets and actions are replayed on raw envs, without prompts or a model: the
env's own cost, against which the collector's overhead is measured.

    python benchmarks/env_workers.py                                   # configs/alfworld_tiny.yaml, 0,1,2 workers
    python benchmarks/env_workers.py --workers 0,2 --rollouts 5
Results are printed as JSON (plus the README table row) and merged into --out (default benchmarks/results.json).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from update_step import append_report  # noqa: E402 - a sibling script

ROOT = Path(__file__).resolve().parents[1]


class TimedActor:
    """Wraps an actor and adds up the seconds spent choosing actions."""

    def __init__(self, actor) -> None:
        self.actor, self.seconds = actor, 0.0
        self.mode, self.temperature = actor.mode, actor.temperature

    def act(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.actor.act(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def rollout_record(rollout) -> list[tuple]:
    """What must be equal across worker counts: every step's action, reward and next observation."""
    return [(t.episode_id, t.step, t.action_text, t.reward, t.next_obs, t.done) for t in rollout.transitions]


def replay_raw(envs, rollout) -> tuple[float, int]:
    """Seconds and env steps to replay one rollout's resets and actions on raw envs in this process."""
    actions: dict[int, list[str]] = {}
    for t in sorted(rollout.transitions, key=lambda t: (t.episode_id, t.step)):
        actions.setdefault(t.episode_id, []).append(t.action_text)
    steps = 0
    start = time.perf_counter()
    for episode in rollout.episodes:  # as the collector: every reset first, then the steps (env by env here)
        envs[episode.episode_id].reset(seed=episode.seed)
    for episode in rollout.episodes:
        for action in actions.get(episode.episode_id, []):
            envs[episode.episode_id].step(action)
            steps += 1
    return time.perf_counter() - start, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs/alfworld_tiny.yaml"))
    parser.add_argument("--workers", default="0,1,2", help="comma list of env_workers settings to measure")
    parser.add_argument("--rollouts", type=int, default=3, help="rollouts per setting")
    parser.add_argument("--seed", type=int, default=0, help="seeds the task and sampling seeds of the rollouts")
    parser.add_argument("--num_groups", type=int, help="override the config's data.num_groups")
    parser.add_argument("--group_size", type=int, help="override the config's data.group_size")
    parser.add_argument("--max_steps", type=int, help="override the config's data.max_steps")
    parser.add_argument("--env_kwargs", type=json.loads, default={}, help="JSON dict merged into data.env_kwargs")
    parser.add_argument("--timeout_s", type=float, default=60.0, help="env_timeout_s of the workers")
    parser.add_argument("--torch_threads", type=int, default=0, help="torch threads of the actor (0 = torch's default)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = parser.parse_args()

    import paw_lightning.envs  # noqa: F401 - registers the env ids
    from paw_lightning.models import load_model
    from paw_lightning.rollout.actors import make_actor
    from paw_lightning.rollout.collector import Collector
    from paw_lightning.rollout.env_workers import make_text_env
    from paw_lightning.rollout.prompts import PromptBuilder, resolve_template

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    data = yaml.safe_load(open(args.config))["data"]
    for name in ("num_groups", "group_size", "max_steps"):
        if getattr(args, name) is not None:
            data[name] = getattr(args, name)
    env_kwargs = dict(data.get("env_kwargs") or {}) | args.env_kwargs
    make_env = functools.partial(make_text_env, gym.spec(data["env_id"]), env_kwargs)
    make_env().close()  # games are generated (first use) before anything is timed
    model, tokenizer = load_model("tiny")
    model.eval()
    prompts = PromptBuilder(data.get("history_length", 2), False, data.get("max_prompt_tokens", 1024),
                            resolve_template(data.get("prompt_template", "textworld")))
    rng = np.random.default_rng(args.seed)
    plan = [([int(s) for s in rng.integers(0, 2**31 - 1, size=data["num_groups"])], int(rng.integers(0, 2**31 - 1)))
            for _ in range(args.rollouts)]
    # warm torch up (not timed) on a one-env rollout of its own, so that every setting starts from fresh envs
    warm = Collector(make_env, 1, 1, 2, prompts, make_actor("score", 1.0, 0))
    warm.collect(model, tokenizer, [plan[0][0][0] + 1], torch.Generator().manual_seed(1), progress=False)
    warm.close()
    load_before = os.getloadavg()

    # Every setting plays rollout k before any plays rollout k + 1 (and the raw replay follows the in-process
    # rollout), so that the shared machine's load drifts over all of them alike.
    counts = [int(w) for w in args.workers.split(",")]
    actors = {w: TimedActor(make_actor("score", data.get("temperature", 1.0), 0)) for w in counts}
    collectors, startup = {}, {}
    raw_envs = [make_env() for _ in range(data["num_groups"] * data["group_size"])]
    rollouts = {w: [] for w in counts}
    raw_s, raw_steps = [], []
    try:
        for w in counts:
            start = time.perf_counter()
            collectors[w] = Collector(make_env, data["num_groups"], data["group_size"], data["max_steps"], prompts, actors[w],
                                      data.get("invalid_action_penalty", 0.1), env_workers=w, env_timeout_s=args.timeout_s)
            startup[w] = time.perf_counter() - start
        for k, (seeds, sampling) in enumerate(plan):
            for w in counts:
                rollout = collectors[w].collect(model, tokenizer, seeds, torch.Generator().manual_seed(sampling), k, progress=False)
                rollouts[w].append(rollout)
                if w == counts[0]:
                    seconds, steps = replay_raw(raw_envs, rollout)
                    raw_s.append(seconds)
                    raw_steps.append(steps)
    finally:
        for collector in collectors.values():
            collector.close()
        for env in raw_envs:
            env.close()

    reference = [rollout_record(r) for r in rollouts[counts[0]]]
    settings = []
    for w in counts:
        wall = sum(r.wall_s for r in rollouts[w])
        steps = sum(r.env_steps for r in rollouts[w])
        settings.append({
            "env_workers": w, "startup_s": round(startup[w], 2), "env_steps": steps, "rollout_s": round(wall, 2),
            "env_steps_per_s": round(steps / wall, 2), "actor_s": round(actors[w].seconds, 2),
            "env_phase_s": round(wall - actors[w].seconds, 2),  # the rollout without the actor: env calls, prompts, bookkeeping
            "rollout_s_each": [round(r.wall_s, 2) for r in rollouts[w]],
            "env_restarts": collectors[w].env_restarts, "env_timeouts": collectors[w].env_timeouts,
            "same_rollouts_as_first_setting": [rollout_record(r) for r in rollouts[w]] == reference,
        })
    base = next((s for s in settings if s["env_workers"] == 0), settings[0])
    for s in settings:
        s["speedup_vs_first"] = round(s["env_steps_per_s"] / settings[0]["env_steps_per_s"], 2)
        s["speedup_vs_in_process"] = round(s["env_steps_per_s"] / base["env_steps_per_s"], 2)
        s["env_phase_speedup_vs_in_process"] = round(base["env_phase_s"] / s["env_phase_s"], 2)

    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.machine(),
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "config": os.path.relpath(args.config, ROOT),
        "num_envs": data["num_groups"] * data["group_size"], "max_steps": data["max_steps"], "rollouts": args.rollouts,
        "load_avg_1min_before": round(load_before[0], 2), "load_avg_1min_after": round(os.getloadavg()[0], 2),
        "settings": settings,
    }
    if base["env_workers"] == 0:
        report["raw_env"] = {
            "seconds": round(sum(raw_s), 2), "env_steps": sum(raw_steps), "env_steps_per_s": round(sum(raw_steps) / sum(raw_s), 2),
            "in_process_collector_over_raw_env": round(base["rollout_s"] / sum(raw_s), 2),
            "actor_share_of_in_process_rollout": round(base["actor_s"] / base["rollout_s"], 3),
            # Amdahl: the actor stays in the trainer, only the rest splits over the workers
            "best_2_worker_speedup_given_the_actor_share": round(base["rollout_s"] / (base["actor_s"] + base["env_phase_s"] / 2), 2),
        }
    print(json.dumps(report, indent=2))
    by_workers = {s["env_workers"]: s for s in settings}
    cells = [f"{by_workers[w]['env_steps_per_s']:.1f}" if w in by_workers else "" for w in (0, 1, 2)]
    two = by_workers.get(2, {})
    speedup = f"{two['speedup_vs_in_process']:.2f}x ({two['env_phase_speedup_vs_in_process']:.2f}x)" if two and 0 in by_workers else ""
    raw = report.get("raw_env", {})
    share = f"{raw['actor_share_of_in_process_rollout']:.2f}" if raw else ""
    print(f"| {report['date'][:10]} | {report['config']} | {report['cpus']} | {report['torch_threads']} | " + " | ".join(cells)
          + f" | {speedup} | {raw.get('env_steps_per_s', '')} | {raw.get('in_process_collector_over_raw_env', '')} | {share} |"
          + f" {report['load_avg_1min_before']} / {report['load_avg_1min_after']} |")
    append_report({"env_workers": report}, args.out)


if __name__ == "__main__":
    main()
