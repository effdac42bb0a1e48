"""What a rollout holds: one ``Transition`` per env step and one ``Episode`` per finished episode.

The collector fills the transitions; ``rollout_prep.prepare_rollout`` (via ``PaWModule.on_rollout``) adds
the per-transition tensors (old/reference log-probs, action entropy, advantages) and the PaW callbacks
write ``wm_selected`` and ``wm_weight``. Everything downstream (batches, losses, metrics) reads from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


@dataclass
class Transition:
    """One step ``[h_t | a_t | o_{t+1}]`` of one episode, tokenised."""

    prompt_ids: list[int]  # the templated prompt h_t
    action_ids: list[int]  # the response a_t (score actor: the chosen candidate)
    action_text: str  # what was sent to the env
    obs_ids: list[int]  # o_{t+1}, the world-model target (truncated to max_obs_tokens)
    next_obs: str
    reward: float  # per step, including the invalid-action penalty
    done: bool
    valid: bool  # parsed and admissible
    group_id: int
    episode_id: int
    step: int
    task_type: str
    actor_logprob: float = float("nan")  # the behaviour policy's log-prob at sampling time (score actor)
    actor_entropy: float = float("nan")  # entropy of the candidate distribution at sampling time (score actor)
    actor_token_logprobs: list[float] | None = None  # generate: the engine's log-prob of each action token
    candidate_ids: list[list[int]] | None = None  # score actor: every admissible command, tokenised
    chosen: int = -1  # score actor: index of the taken candidate
    candidate_logprobs: list[float] | None = None  # score actor: the sampling policy's log-prob of every candidate
    candidates: list[str] | None = None  # score actor: the admissible commands, in candidate order (episode logs)
    observation: str = ""  # o_t, the observation the action was taken in (GiGPO's anchor state)
    # The world-model target after a_t, set by rollout_prep.build_wm_targets (world_model.build_targets) when an
    # option changes it; None means obs_ids, every token in the loss.
    wm_ids: list[int] | None = None
    wm_loss_mask: list[bool] | None = None  # per wm_ids token: is it an observation token the WM loss scores

    def wm_target(self) -> tuple[list[int], list[bool]]:
        """(tokens after a_t, which of them the world-model loss scores)."""
        if self.wm_ids is None:
            return list(self.obs_ids), [True] * len(self.obs_ids)
        return list(self.wm_ids), list(self.wm_loss_mask)


@dataclass
class Episode:
    """Summary of one episode."""

    episode_id: int
    group_id: int
    seed: int
    task_type: str
    task: str = ""  # the goal text (info["task"] at reset)
    total_return: float = 0.0
    length: int = 0
    won: bool = False
    winnable: bool = True  # False: the env has no win, only a return (info["winnable"]); not in success rates
    valid_actions: int = 0
    env_restarts: int = 0  # times its env was rebuilt (raised, timed out or lost its worker; resets included)
    env_timeouts: int = 0  # env calls that missed the deadline


@dataclass
class Rollout:
    """All transitions and episodes of one iteration, plus what scoring and the callbacks add."""

    transitions: list[Transition]
    episodes: list[Episode]
    num_groups: int
    mode: str  # "score" or "generate": how the actor chose actions
    temperature: float
    iteration: int = 0
    wall_s: float = 0.0
    engine: str = "hf"  # the rollout engine that ran the actor
    exact_actor_logprobs: bool = True  # the actor's log-probs are the trainer's own (HF engine): reusable
    # Per transition, filled by rollout_prep.prepare_rollout:
    old_logprobs: list[Tensor] = field(default_factory=list)  # each (units,)
    ref_logprobs: list[Tensor] | None = None
    action_entropy: Tensor | None = None  # (N,)
    advantages: Tensor | None = None  # (N,)
    old_values: Tensor | None = None  # (N,) critic values at sampling time (PPO)
    value_targets: Tensor | None = None  # (N,) GAE returns (PPO)
    # Per transition, written by the PaW callbacks (defaults: every transition, weight wm_coef):
    wm_selected: Tensor | None = None  # (N,) bool
    wm_weight: Tensor | None = None  # (N,)
    wm_selected_frac: float = 1.0  # selected share of every process's transitions (wm_normalize: update)
    max_obs_tokens: int | None = None  # the collector's cap on o_{t+1}, which also caps longer WM targets
    metrics: dict[str, float] = field(default_factory=dict)  # extra metrics from the rollout hooks

    def __len__(self) -> int:
        return len(self.transitions)

    @property
    def group_ids(self) -> Tensor:
        return torch.tensor([t.group_id for t in self.transitions], dtype=torch.long)

    @property
    def episode_ids(self) -> Tensor:
        return torch.tensor([t.episode_id for t in self.transitions], dtype=torch.long)

    @property
    def rewards(self) -> Tensor:
        return torch.tensor([t.reward for t in self.transitions], dtype=torch.float32)

    @property
    def steps(self) -> Tensor:
        return torch.tensor([t.step for t in self.transitions], dtype=torch.long)

    @property
    def env_steps(self) -> int:
        return len(self.transitions)

    def permute_wm_targets(self, source: Tensor) -> None:
        """Give transition i the world-model target (``wm_target()``, whatever the options built) of
        transition ``source[i]``.

        Only what the world model learns changes: prompts, actions, rewards, ``done``, o_t and the real
        o_{t+1} (``obs_ids``, ``next_obs``) stay, so the RL side of the rollout is untouched.
        """
        if len(source) != len(self):
            raise ValueError(f"need one source index per transition ({len(self)}), got {len(source)}")
        targets = [t.wm_target() for t in self.transitions]
        self.transitions = [replace(t, wm_ids=targets[j][0], wm_loss_mask=targets[j][1])
                            for t, j in zip(self.transitions, source.tolist())]

    def episode_returns(self) -> tuple[Tensor, Tensor]:
        """(E,) returns and (E,) groups of the episodes, indexed by episode_id."""
        returns = torch.tensor([e.total_return for e in self.episodes], dtype=torch.float32)
        groups = torch.tensor([e.group_id for e in self.episodes], dtype=torch.long)
        return returns, groups
