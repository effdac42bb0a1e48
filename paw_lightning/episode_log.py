"""Episode transcripts: what the agent saw and did, from what the rollout already holds (no forward pass).

``episode_records`` turns a few episodes of a ``Rollout`` into JSON-ready dicts (the schema is in
docs/metrics.md, "Episode logs"); ``PaWModule`` appends them to ``episodes.jsonl`` in the run's log folder
every iteration and validation (``model.log_episodes``), and ``paw play`` prints them with
``episode_text``. Pure functions: a rollout in, dicts and text out.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from paw_lightning.rollout.types import Rollout

EPISODES_FILE = "episodes.jsonl"
TOP_ALTERNATIVES = 3  # score actor: the most likely commands besides the chosen one, per step


def sample_episodes(num_episodes: int, count: int, key: str) -> list[int]:
    """``count`` episode indices out of ``num_episodes`` (all of them when fewer), sorted; the same ``key``
    draws the same ones. Its own RNG: logging never moves the training's random streams."""
    if count <= 0 or num_episodes <= 0:
        return []
    return sorted(random.Random(key).sample(range(num_episodes), min(count, num_episodes)))


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def step_record(rollout: Rollout, index: int, tokenizer=None, top: int = TOP_ALTERNATIVES, wm_coef: float | None = None) -> dict:
    """One transition as a dict: observation, action, reward, valid, done; the generate actor's raw response;
    the score actor's probability of the chosen command and the ``top`` likeliest others; and, once the
    rollout was scored and the PaW callbacks ran, the action entropy, whether the world-model loss selected
    it, its weight and its lambda (weight / ``wm_coef``)."""
    t = rollout.transitions[index]
    record = {"step": t.step, "observation": t.observation, "action": t.action_text, "reward": t.reward,
              "valid": t.valid, "done": t.done, "next_observation": t.next_obs}
    if t.candidate_logprobs is not None:
        record["prob"] = _finite(math.exp(t.candidate_logprobs[t.chosen])) if 0 <= t.chosen < len(t.candidate_logprobs) else None
        ranked = sorted((i for i in range(len(t.candidate_logprobs)) if i != t.chosen), key=lambda i: -t.candidate_logprobs[i])
        names = t.candidates or [f"#{i}" for i in range(len(t.candidate_logprobs))]
        record["alternatives"] = [{"action": names[i], "prob": _finite(math.exp(t.candidate_logprobs[i]))} for i in ranked[:top]]
    elif tokenizer is not None:
        record["response"] = tokenizer.decode(t.action_ids, skip_special_tokens=True)
    if rollout.action_entropy is not None and index < len(rollout.action_entropy):
        record["entropy"] = _finite(float(rollout.action_entropy[index]))
    if rollout.wm_selected is not None and wm_coef is not None and wm_coef > 0:
        weight = float(rollout.wm_weight[index]) if rollout.wm_weight is not None else None
        record["wm_selected"] = bool(rollout.wm_selected[index])
        record["wm_weight"] = weight
        record["lambda"] = None if weight is None else weight / wm_coef
    return record


def episode_records(rollout: Rollout, split: str, iteration: int, count: int, tokenizer=None,
                    wm_coef: float | None = None, episodes: list[int] | None = None) -> list[dict]:
    """``count`` sampled episodes of ``rollout`` (or the given episode indices), each with its steps in order."""
    chosen = sample_episodes(len(rollout.episodes), count, f"{split}-{iteration}") if episodes is None else episodes
    steps: dict[int, list[int]] = {}
    for i, t in enumerate(rollout.transitions):
        steps.setdefault(t.episode_id, []).append(i)
    records = []
    for e in (rollout.episodes[i] for i in chosen):
        records.append({
            "split": split, "iteration": iteration, "episode_id": e.episode_id, "group_id": e.group_id,
            "seed": e.seed, "task": e.task, "task_type": e.task_type, "actor": rollout.mode,
            "won": e.won, "return": e.total_return, "length": e.length,
            "steps": [step_record(rollout, i, tokenizer, wm_coef=wm_coef) for i in steps.get(e.episode_id, [])],
        })
    return records


def append_jsonl(path: str | Path, records: list[dict]) -> None:
    """Append one JSON line per record (the folder is created when missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def _percent(p: float | None) -> str:
    return "?" if p is None else f"{100 * p:.0f}%"


def episode_text(record: dict) -> str:
    """An episode record as a readable transcript: the task, then per step the observation, the action
    (with its probability and the alternatives, or the raw response) and the reward."""
    head = (f"[{record['split']} iteration {record['iteration']}] episode {record['episode_id']} "
            f"(seed {record['seed']}, {record['task_type']}): {'won' if record['won'] else 'lost'}, "
            f"return {record['return']:.2f}, {record['length']} steps")
    lines = [head, f"task: {record['task']}"]
    for s in record["steps"]:
        lines.append(f"--- step {s['step']}")
        lines.extend("  | " + line for line in (s["observation"] or "(empty)").strip().splitlines())
        action = f"  > {s['action']}"
        if "prob" in s:
            action += f"  ({_percent(s['prob'])})"
        if not s["valid"]:
            action += "  [invalid]"
        lines.append(action)
        if s.get("alternatives"):
            lines.append("    others: " + ", ".join(f"{a['action']} ({_percent(a['prob'])})" for a in s["alternatives"]))
        if "response" in s:
            lines.append(f"    response: {s['response']!r}")
        extra = f"    reward {s['reward']:+.2f}"
        if "wm_selected" in s:
            extra += f", world model: {'selected' if s['wm_selected'] else 'not selected'}, lambda {s['lambda']:.2f}"
        lines.append(extra)
    if record["steps"]:
        lines.append("--- end")
        lines.extend("  | " + line for line in (record["steps"][-1]["next_observation"] or "(empty)").strip().splitlines())
    return "\n".join(lines)


def episode_markdown(record: dict) -> str:
    """``episode_text`` as a Markdown code block (TensorBoard's text tab renders Markdown)."""
    return "\n".join("    " + line for line in episode_text(record).splitlines())
