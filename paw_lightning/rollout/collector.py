"""Run ``num_groups x group_size`` text envs in lockstep and record one ``Rollout``.

The members of a group are reset with the same seed, so they start from the same state; each env
plays one episode per rollout, until terminated, truncated or ``max_steps``. The envs live in worker
processes (``env_workers > 0``, see env_workers.py: every reset and step has a deadline) or in this
process (``env_workers = 0``); either way the rollout is the same for the same seeds.

Faults end episodes, not the run: an env that raises, hangs past the deadline or takes its worker down
is rebuilt and its episode ends there (truncated; counted in ``Episode.env_restarts`` and
``env_timeouts``). A failed reset moves the whole group to the next seed (seed + 1, for every member, so
the group still plays one task), up to ``RESET_SEEDS`` seeds; only an env that cannot be built stops
the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import gymnasium as gym
import torch
from tqdm.auto import tqdm

from paw_lightning.rollout.engines import as_engine
from paw_lightning.rollout.env_workers import EnvBuildError, EnvResult, EnvWorkers, InProcessEnvs
from paw_lightning.rollout.prompts import PromptBuilder, sanitize_action
from paw_lightning.rollout.types import Episode, Rollout, Transition

log = logging.getLogger(__name__)

RESET_SEEDS = 5  # seeds a group tries (s, s + 1, ...) when resets fail, before the run stops


@dataclass
class _Slot:
    """The live state of one env's episode during a rollout."""

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
        env_workers: worker processes that run the envs (0 = in this process, no deadlines); at most the
            number of envs. ``make_env`` must pickle for workers (pass ``gymnasium.spec(id)``, not the id).
        env_timeout_s: deadline of every reset and step (and env build) in a worker.
        stop: a ``GracefulStop`` whose signals interrupt a rollout at once (None: signals keep their handlers).
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
        env_workers: int = 0,
        env_timeout_s: float = 60.0,
        stop=None,
    ) -> None:
        self.make_env = make_env
        self.num_groups = num_groups
        self.group_size = group_size
        self.max_steps = max_steps
        self.prompts = prompts
        self.actor = actor
        self.invalid_action_penalty = invalid_action_penalty
        self.max_obs_tokens = max_obs_tokens
        self.env_workers = min(env_workers, num_groups * group_size)
        self.env_timeout_s = env_timeout_s
        self.stop = stop
        self.env_restarts = 0  # envs rebuilt after raising, timing out or losing their worker (resets included)
        self.env_timeouts = 0  # env calls that missed env_timeout_s
        self.envs: InProcessEnvs | EnvWorkers | None = self._start_envs()

    def _start_envs(self) -> InProcessEnvs | EnvWorkers:
        num_envs = self.num_groups * self.group_size
        if self.env_workers <= 0:
            return InProcessEnvs(self.make_env, num_envs)
        return EnvWorkers(self.make_env, num_envs, self.env_workers, self.env_timeout_s)

    def close(self) -> None:
        if self.envs is not None:
            self.envs.close()
        self.envs = None

    def _members(self, group: int) -> range:
        return range(group * self.group_size, (group + 1) * self.group_size)

    def _reset_all(self, seeds: list[int]) -> list[_Slot]:
        """Reset every env with its group's seed. A group with a failed reset moves to seed + 1 (all its
        members, so that it still plays one task), up to ``RESET_SEEDS`` seeds."""
        num_envs = self.num_groups * self.group_size
        restarts, timeouts = [0] * num_envs, [0] * num_envs
        group_seeds = [int(s) for s in seeds]
        answers: dict[int, EnvResult] = {}
        todo = list(range(self.num_groups))
        for attempt in range(RESET_SEEDS):
            batch = self.envs.reset({i: group_seeds[g] for g in todo for i in self._members(g)})
            retry = []
            for g in todo:
                failed = [i for i in self._members(g) if not batch[i].ok]
                for i in failed:
                    restarts[i] += 1
                    timeouts[i] += batch[i].timed_out
                if not failed:
                    answers.update((i, batch[i]) for i in self._members(g))
                    continue
                if attempt + 1 == RESET_SEEDS:
                    raise RuntimeError(
                        f"resets of group {g} failed for {RESET_SEEDS} seeds in a row ({int(seeds[g])} to "
                        f"{group_seeds[g]}), last: {batch[failed[0]].error}; the env fails every reset, fix it or its data"
                    )
                log.warning("group %d: reset with seed %d failed for env(s) %s (%s); the group moves to seed %d",
                            g, group_seeds[g], failed, batch[failed[0]].error, group_seeds[g] + 1)
                group_seeds[g] += 1
                retry.append(g)
            todo = retry
            if not todo:
                break
        self.env_restarts += sum(restarts)
        self.env_timeouts += sum(timeouts)
        slots = []
        for i in range(num_envs):
            group = i // self.group_size
            obs, info = answers[i].value
            # Per-type metrics use the env's short label when it gives one (ALFWorld: Pick, Look, ...).
            task_type = info.get("task_label") or info.get("task_type", "default")
            episode = Episode(i, group, group_seeds[group], task_type, task=str(info.get("task", "")),
                              winnable=bool(info.get("winnable", True)), env_restarts=restarts[i], env_timeouts=timeouts[i])
            slots.append(_Slot(episode, obs, info))
        return slots

    def collect(self, engine, tokenizer, seeds: list[int], generator: torch.Generator, iteration: int = 0, progress: bool = True) -> Rollout:
        """Play one episode in every env; ``seeds`` has one seed per group. ``engine`` is a RolloutEngine,
        or a bare model, which then acts through the HF engine in eval mode (its mode restored afterwards)."""
        if len(seeds) != self.num_groups:
            raise ValueError(f"need {self.num_groups} seeds (one per group), got {len(seeds)}")
        engine = as_engine(engine, tokenizer)
        try:
            with engine.rollout_mode(), self.stop.interruptible() if self.stop is not None else nullcontext():
                if self.envs is None:
                    self.envs = self._start_envs()
                rollout = self._play(engine, tokenizer, seeds, generator, iteration, progress)
        except (KeyboardInterrupt, SystemExit, EnvBuildError):
            # a stop signal or a lost env: calls may be in flight, so close the envs (a later rollout starts new ones)
            self.close()
            raise
        rollout.engine = engine.name
        rollout.exact_actor_logprobs = engine.exact
        return rollout

    def _play(self, engine, tokenizer, seeds, generator, iteration, progress) -> Rollout:
        start = time.perf_counter()
        slots = self._reset_all(seeds)
        transitions: list[Transition] = []
        bar = tqdm(total=self.max_steps, desc=f"rollout {iteration}", leave=False, disable=not progress, unit="step")
        try:
            for step in range(self.max_steps):
                active = [i for i, s in enumerate(slots) if not s.done]
                if not active:
                    break
                prompts = [
                    self.prompts.build(tokenizer, s.info["task"], s.observation, s.info["admissible_commands"], s.history)
                    for s in (slots[i] for i in active)
                ]
                outputs = self.actor.act(engine, tokenizer, prompts, [slots[i].info["admissible_commands"] for i in active], generator)
                # The one place model text goes to an env: control bytes out, length capped (see prompts.py).
                results = self.envs.step({i: sanitize_action(out.action_text) for i, out in zip(active, outputs)})
                for i, prompt, out in zip(active, prompts, outputs):
                    transitions.append(self._step(slots[i], prompt, out, results[i], step, tokenizer))
                finished = sum(s.done for s in slots)
                bar.set_postfix(episodes=f"{finished}/{len(slots)}", env_steps=len(transitions))
                bar.update(1)
        finally:
            bar.close()
        return Rollout(
            transitions=transitions,
            episodes=[s.episode for s in slots],
            num_groups=self.num_groups,
            mode=self.actor.mode,
            temperature=self.actor.temperature,
            iteration=iteration,
            wall_s=time.perf_counter() - start,
            max_obs_tokens=self.max_obs_tokens,
        )

    def _step(self, slot: _Slot, prompt: list[int], out, result: EnvResult, step: int, tokenizer) -> Transition:
        if result.ok:
            obs, reward, terminated, truncated, info = result.value
        else:  # the env raised, hung or lost its worker, and has been rebuilt: the episode ends here
            self.env_restarts += 1
            slot.episode.env_restarts += 1
            self.env_timeouts += result.timed_out
            slot.episode.env_timeouts += result.timed_out
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
            candidate_logprobs=out.candidate_logprobs,
            candidates=list(slot.info["admissible_commands"]) if out.candidate_logprobs is not None else None,
            observation=slot.observation,
        )
        slot.history.append((slot.observation, out.action_text))
        slot.observation, slot.info, slot.done = obs, info, done
        return transition
