"""Run ``num_groups x group_size`` text envs in lockstep and record one ``Rollout``.

The members of a group are reset with the same seed, so they start from the same state; each env
plays one episode per rollout, until terminated, truncated or ``max_steps``. An env that raises is
closed and rebuilt, and its episode ends there (truncated) instead of ending the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import torch
from tqdm.auto import tqdm

from paw_lightning.envs.base import check_info
from paw_lightning.rollout.engines import as_engine
from paw_lightning.rollout.prompts import PromptBuilder, sanitize_action
from paw_lightning.rollout.types import Episode, Rollout, Transition

log = logging.getLogger(__name__)


@dataclass
class _Slot:
    """The live state of one env during a rollout."""

    env: gym.Env
    episode: Episode
    observation: str = ""
    info: dict = field(default_factory=dict)
    history: list[tuple[str, str]] = field(default_factory=list)
    done: bool = False


class Collector:
    """Collects rollouts from a fixed set of envs.

    Args:
        make_env: builds one env (called once per slot, and again to replace a crashed env).
        num_groups, group_size: envs = num_groups * group_size; a group shares its reset seed.
        max_steps: episode step limit.
        prompts: renders and tokenises each step's prompt.
        actor: a ScoreActor or GenerateActor (it asks the engine given to ``collect``).
        invalid_action_penalty: subtracted from the reward of an invalid action (generate actor).
        max_obs_tokens: the world-model target o_{t+1} keeps at most this many tokens.
    """

    def __init__(
        self,
        make_env: Callable[[], gym.Env],
        num_groups: int,
        group_size: int,
        max_steps: int,
        prompts: PromptBuilder,
        actor,
        invalid_action_penalty: float = 0.1,
        max_obs_tokens: int = 256,
    ) -> None:
        self.make_env = make_env
        self.num_groups = num_groups
        self.group_size = group_size
        self.max_steps = max_steps
        self.prompts = prompts
        self.actor = actor
        self.invalid_action_penalty = invalid_action_penalty
        self.max_obs_tokens = max_obs_tokens
        self.envs = [make_env() for _ in range(num_groups * group_size)]
        self.env_restarts = 0

    def close(self) -> None:
        for env in self.envs:
            env.close()

    def _restart(self, index: int, err: Exception) -> gym.Env:
        log.warning("env %d raised %r; rebuilding it and ending its episode", index, err)
        try:
            self.envs[index].close()
        except Exception:  # noqa: BLE001 - a broken env may fail to close too; the new one replaces it
            pass
        self.envs[index] = self.make_env()
        self.env_restarts += 1
        return self.envs[index]

    def _reset(self, index: int, seed: int, group: int, episode_id: int) -> _Slot:
        for attempt in range(2):
            try:
                obs, info = self.envs[index].reset(seed=seed)
                check_info(info)
                break
            except Exception as err:  # noqa: BLE001 - one rebuild, then the error is the env's to report
                if attempt == 1:
                    raise
                self._restart(index, err)
        # Per-type metrics use the env's short label when it gives one (ALFWorld: Pick, Look, ...).
        task_type = info.get("task_label") or info.get("task_type", "default")
        return _Slot(self.envs[index], Episode(episode_id, group, seed, task_type), obs, info)

    def collect(self, engine, tokenizer, seeds: list[int], generator: torch.Generator, iteration: int = 0, progress: bool = True) -> Rollout:
        """Play one episode in every env; ``seeds`` has one seed per group. ``engine`` is a RolloutEngine,
        or a bare model, which then acts through the HF engine in eval mode (its mode restored afterwards)."""
        if len(seeds) != self.num_groups:
            raise ValueError(f"need {self.num_groups} seeds (one per group), got {len(seeds)}")
        engine = as_engine(engine, tokenizer)
        with engine.rollout_mode():
            rollout = self._play(engine, tokenizer, seeds, generator, iteration, progress)
        rollout.engine = engine.name
        rollout.exact_actor_logprobs = engine.exact
        return rollout

    def _play(self, engine, tokenizer, seeds, generator, iteration, progress) -> Rollout:
        start = time.perf_counter()
        slots = [
            self._reset(i, int(seeds[i // self.group_size]), i // self.group_size, i) for i in range(len(self.envs))
        ]
        transitions: list[Transition] = []
        bar = tqdm(total=self.max_steps, desc=f"rollout {iteration}", leave=False, disable=not progress, unit="step")
        for step in range(self.max_steps):
            active = [i for i, s in enumerate(slots) if not s.done]
            if not active:
                break
            prompts = [
                self.prompts.build(tokenizer, s.info["task"], s.observation, s.info["admissible_commands"], s.history)
                for s in (slots[i] for i in active)
            ]
            outputs = self.actor.act(engine, tokenizer, prompts, [slots[i].info["admissible_commands"] for i in active], generator)
            for i, prompt, out in zip(active, prompts, outputs):
                transitions.append(self._step(i, slots[i], prompt, out, step, tokenizer))
            finished = sum(s.done for s in slots)
            bar.set_postfix(episodes=f"{finished}/{len(slots)}", env_steps=len(transitions))
            bar.update(1)
        bar.close()
        return Rollout(
            transitions=transitions,
            episodes=[s.episode for s in slots],
            num_groups=self.num_groups,
            mode=self.actor.mode,
            temperature=self.actor.temperature,
            iteration=iteration,
            wall_s=time.perf_counter() - start,
        )

    def _step(self, index: int, slot: _Slot, prompt: list[int], out, step: int, tokenizer) -> Transition:
        try:
            obs, reward, terminated, truncated, info = slot.env.step(sanitize_action(out.action_text))
            check_info(info)
        except Exception as err:  # noqa: BLE001 - a crashed env ends its episode, not the run
            self._restart(index, err)
            slot.episode.env_restarts += 1
            obs, reward, terminated, truncated, info = "", 0.0, False, True, dict(slot.info, won=False)
        reward = float(reward) - (0.0 if out.valid else self.invalid_action_penalty)
        done = bool(terminated or truncated or step + 1 >= self.max_steps)
        episode = slot.episode
        episode.total_return += reward
        episode.length += 1
        episode.valid_actions += int(out.valid)
        episode.won = episode.won or bool(info.get("won", False))
        obs_ids = tokenizer(obs, add_special_tokens=False)["input_ids"][: self.max_obs_tokens] if obs else []
        transition = Transition(
            prompt_ids=prompt,
            action_ids=out.action_ids,
            action_text=out.action_text,
            obs_ids=obs_ids,
            next_obs=obs,
            reward=reward,
            done=done,
            valid=out.valid,
            group_id=episode.group_id,
            episode_id=episode.episode_id,
            step=step,
            task_type=episode.task_type,
            actor_logprob=out.logprob,
            actor_entropy=out.entropy,
            actor_token_logprobs=out.token_logprobs,
            candidate_ids=out.candidate_ids,
            chosen=out.chosen,
            observation=slot.observation,
        )
        slot.history.append((slot.observation, out.action_text))
        slot.observation, slot.info, slot.done = obs, info, done
        return transition
