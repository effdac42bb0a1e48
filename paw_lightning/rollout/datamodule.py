"""``RolloutDataModule``: fresh on-policy experience for every training epoch.

One Lightning epoch is one PaW iteration. When the trainer iterates the train dataloader, the
``RolloutStream`` syncs the rollout engine with the module's current weights (when they changed),
collects a rollout with it, hands it to the module once (``on_rollout``: score, rollout callbacks,
record), and then yields shuffled mini-batches for ``ppo_epochs`` passes. So ``trainer.max_epochs``
is the number of iterations. Nothing here reaches into the module beyond those two calls.

Validation (``val_episodes > 0``) plays the same held-out tasks every time (seeds ``val_seed + i``,
one episode each, envs built with ``env_kwargs`` updated by ``val_env_kwargs``, e.g. the TextWorld
eval split) at ``val_temperature``, and the module logs their success under ``val/``.

With several processes (DDP, FSDP) every process plays ``num_groups`` groups and a consecutive share
of the validation episodes, and all of them run the same number of optimisation steps (see
paw_lightning/distributed.py).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from typing import Any, Literal

import gymnasium as gym
from gymnasium.envs.registration import load_env_creator
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

import paw_lightning.envs  # noqa: F401 - registers the paw/ env ids
from paw_lightning.choices import check_choices
from paw_lightning.distributed import Ranks, balanced_minibatches, full_params, sum_over_ranks
from paw_lightning.rollout.actors import Actor, make_actor
from paw_lightning.rollout.engines import EngineName, HFEngine, RolloutEngine, resolve_engine
from paw_lightning.rollout.vllm_engine import LoraSync
from paw_lightning.rollout.batch import minibatches, training_batch
from paw_lightning.rollout.collector import Collector
from paw_lightning.rollout.env_workers import make_text_env  # noqa: F401 - importable from here as before
from paw_lightning.rollout.prompts import PromptBuilder, resolve_template
from paw_lightning.rollout.stopping import GracefulStop

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, else ``os.cpu_count()``)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_data_options(**options) -> None:
    """Raise ValueError on a ``RolloutDataModule`` option outside its range or an unregistered env id (options
    it does not know are ignored). Cheap: the CLI runs it, and ``check_env_kwargs``, before loading the model."""
    defaults = {k: p.default for k, p in inspect.signature(RolloutDataModule.__init__).parameters.items() if k != "self"}
    o = defaults | options
    if o["env_id"] not in gym.registry:
        known = sorted(k for k in gym.registry if k.startswith("paw/"))
        raise ValueError(f"unknown env id {o['env_id']!r}; registered text envs: {known}. Register yours with gymnasium.register first.")
    check_choices(RolloutDataModule.__init__, o)
    for name in ("num_groups", "group_size", "max_steps", "ppo_epochs", "mini_batch_size", "max_prompt_tokens",
                 "max_obs_tokens", "max_new_tokens"):
        if not o[name] >= 1:
            raise ValueError(f"{name} must be >= 1, got {o[name]}")
    resolve_template(o["prompt_template"])
    for name in ("temperature", "val_temperature", "val_episodes", "invalid_action_penalty", "history_length"):
        if not o[name] >= 0:  # written so that NaN fails too
            raise ValueError(f"{name} must be >= 0, got {o[name]}")
    if not o["vllm_kv_cache_gib"] > 0:
        raise ValueError(f"vllm_kv_cache_gib must be > 0, got {o['vllm_kv_cache_gib']}")
    if not 0.0 < o["vllm_gpu_memory_utilization"] <= 1.0:
        raise ValueError(f"vllm_gpu_memory_utilization must be in (0, 1], got {o['vllm_gpu_memory_utilization']}")
    if o["vllm_max_model_len"] is not None and not o["vllm_max_model_len"] >= 1:
        raise ValueError(f"vllm_max_model_len must be >= 1, got {o['vllm_max_model_len']}")
    if o["env_workers"] is not None and not o["env_workers"] >= 0:
        raise ValueError(f"env_workers must be >= 0 (0 = envs in this process) or null (one per core), got {o['env_workers']}")
    if not o["env_timeout_s"] > 0:
        raise ValueError(f"env_timeout_s must be > 0, got {o['env_timeout_s']}")
    resolve_engine(o["engine"], o["actor"])  # engine: vllm without vLLM installed fails here


def check_env_kwargs(env_id: str, env_kwargs: dict[str, Any] | None) -> None:
    """Check the env's keyword arguments without building it: unknown names are an error, and an env class
    with a ``check_kwargs`` static method (TextWorld: the challenge; ALFWorld: that the data folder holds
    games) gets every argument, defaults filled in."""
    spec = gym.spec(env_id)
    creator = load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str) else spec.entry_point
    try:
        bound = inspect.signature(creator).bind(**(dict(spec.kwargs) | dict(env_kwargs or {})))
    except TypeError as err:
        raise ValueError(f"env_kwargs do not fit {env_id}: {err}") from None
    bound.apply_defaults()
    check = getattr(creator, "check_kwargs", None)
    if callable(check):
        check(**bound.arguments)


class RolloutStream(IterableDataset):
    """Yields the mini-batches of one fresh rollout each time it is iterated (once per epoch)."""

    def __init__(self, datamodule: "RolloutDataModule") -> None:
        self.datamodule = datamodule

    def __iter__(self):
        dm = self.datamodule
        module = dm.trainer.lightning_module
        with full_params(dm.trainer):  # FSDP: every weight here while the rollout and scoring run
            rollout = dm.collect(dm.engine_for(module), module.tokenizer)
            module.on_rollout(rollout)  # the module owns the rest: score, rollout callbacks, record
        hp, pad_id, ranks = dm.hparams, module.tokenizer.pad_token_id, Ranks.of(dm.trainer)
        if not ranks.distributed:
            batches = minibatches(rollout, hp.ppo_epochs, hp.mini_batch_size, pad_id, dm.rng)
        else:
            # every rank draws the same number here, so the shared RNG stays in step across ranks
            shuffle = np.random.default_rng([int(dm.rng.integers(0, 2**31 - 1)), ranks.rank])
            batches = balanced_minibatches(rollout, hp.ppo_epochs, hp.mini_batch_size, pad_id, shuffle, ranks, training_batch)
        for batch in batches:
            dm.stop.check()  # a stop signal during the update ends the run at this batch boundary
            yield batch


class ValidationStream(IterableDataset):
    """Yields one rollout of the held-out validation tasks each time it is iterated."""

    def __init__(self, datamodule: "RolloutDataModule") -> None:
        self.datamodule = datamodule

    def __iter__(self):
        module = self.datamodule.trainer.lightning_module
        with full_params(self.datamodule.trainer):
            rollout = self.datamodule.validate(self.datamodule.engine_for(module), module.tokenizer)
        yield rollout


class RolloutDataModule(L.LightningDataModule):
    """Gathers trajectories from Gymnasium text envs with the module's current policy.

    Args:
        env_id: a registered Gymnasium id that follows the text-env contract (``paw/TextWorld-v0``, or yours).
        env_kwargs: keyword arguments for ``gymnasium.make(env_id, ...)``, e.g. the game pool.
        num_groups: groups per rollout and process; each group plays one seed (task).
        group_size: episodes per group, all reset with the group's seed (GRPO's group).
        max_steps: steps per episode before it is truncated.
        actor: ``score`` (rank admissible commands) or ``generate`` (free text with ``<action>`` tags).
        temperature: rollout sampling temperature (the paper: 1.0); the training log-probs use it too.
        max_new_tokens: response limit of the generate actor.
        prompt_template: ``textworld`` (default), ``alfworld`` (the paper's ALFWorld layout) or your own
            str.format template with the fields task, history, step, observation and actions.
        history_length: past (observation, action) pairs in the prompt (the paper: 2).
        max_prompt_tokens: prompt budget; history is dropped first, then the prompt's head.
        max_obs_tokens: the world-model target keeps at most this many tokens of o_{t+1}.
        invalid_action_penalty: subtracted from the step reward of an invalid action (the paper: 0.1).
        format_example: show a one-shot example exchange before each prompt (helps small instruct
            models produce the ``<action>`` format; off in the paper's setting).
        response_prefix: text that starts the model's turn in generate mode, e.g. ``<action>`` (skips the
            thinking; small models then close the tag far more often); the action is parsed from
            prefix + response, and the prefix is part of the prompt, not of the trained action.
        ppo_epochs: passes over each rollout.
        mini_batch_size: transitions per optimisation step.
        seed: seeds the task draws of every rollout and the mini-batch shuffling (the same on every process).
        progress: show the rollout progress bar (episodes, env steps).
        val_episodes: held-out episodes per validation (0 = no validation), split over the processes.
        val_env_kwargs: updates ``env_kwargs`` for the validation envs (TextWorld: ``{split: eval}``).
        val_temperature: sampling temperature of validation (the paper: 0.4; 0 = greedy).
        val_seed: validation task i is reset with seed ``val_seed + i`` (the same tasks every time).
        env_workers: worker processes that run the envs, each with a share of them (default: one per CPU
            core, at most one per env; 0 = in the trainer's process, without deadlines, for debugging).
        env_timeout_s: deadline of every env reset, step and build in a worker; an env that misses it is
            killed with its worker and rebuilt, and its episode ends as truncated.
        engine: what runs the actor's forward passes: ``hf`` (the live training model), ``vllm`` (a
            vLLM engine in this process, synced once per iteration; with several processes, one per
            process) or ``auto`` (vLLM for the generate actor when it is installed; HF for the score
            actor, whose exact log-probs the trainer reuses).
        vllm_dtype: the vLLM engine's weights dtype (bfloat16 is the fast one; float32 matches the trainer;
            GPUs below compute capability 8.0, e.g. T4 and V100, need float16).
        vllm_max_model_len: longest prompt + response vLLM serves (default: max_prompt_tokens + max_new_tokens + 64).
        vllm_kv_cache_gib: CPU: memory for each process's vLLM KV cache (vLLM reads a whole number of GiB).
        vllm_gpu_memory_utilization: GPU: the share of its own GPU that each process's vLLM engine may
            take (one engine per GPU: the share is per device, not split over them); the trainer needs the rest.
        vllm_lora_sync: with LoRA, push ``merged`` weights (W + BA) or serve the ``adapter`` as a LoRA
            request (at the next rank vLLM accepts, e.g. 12 -> 16); ``auto``: merged on CPU (faster
            there), adapter on GPU.
        vllm_sleep: GPU: put vLLM to sleep during the update, freeing its memory for training (every
            process's engine sleeps and wakes on its own GPU; no collective; merged weights are pushed
            again after the sleep, which drops them).
    """

    def __init__(
        self,
        env_id: str = "paw/TextWorld-v0",
        env_kwargs: dict[str, Any] | None = None,
        num_groups: int = 4,
        group_size: int = 4,
        max_steps: int = 10,
        actor: Actor = "score",
        temperature: float = 1.0,
        max_new_tokens: int = 128,
        prompt_template: str = "textworld",
        history_length: int = 2,
        max_prompt_tokens: int = 1024,
        max_obs_tokens: int = 256,
        invalid_action_penalty: float = 0.1,
        format_example: bool = False,
        response_prefix: str = "",
        ppo_epochs: int = 1,
        mini_batch_size: int = 16,
        seed: int = 0,
        progress: bool = True,
        val_episodes: int = 0,
        val_env_kwargs: dict[str, Any] | None = None,
        val_temperature: float = 0.4,
        val_seed: int = 1_000_000,
        env_workers: int | None = None,
        env_timeout_s: float = 60.0,
        engine: EngineName = "auto",
        vllm_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16",
        vllm_max_model_len: int | None = None,
        vllm_kv_cache_gib: float = 2.0,
        vllm_gpu_memory_utilization: float = 0.3,
        vllm_lora_sync: LoraSync = "auto",
        vllm_sleep: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_data_options(**self.hparams)
        self.rng = np.random.default_rng(seed)
        self.iteration = 0
        self.total_env_steps = 0
        self.total_episodes = 0
        self.collector: Collector | None = None
        self.val_collector: Collector | None = None
        self.engine: RolloutEngine | None = None
        self._synced_step: int | None = None  # the trainer step whose weights the engine serves
        self.stop = GracefulStop()

    def build_collector(self, env_kwargs: dict, num_groups: int, group_size: int, temperature: float) -> Collector:
        """A Collector of ``num_groups x group_size`` envs built with ``env_kwargs``, acting at ``temperature``
        with this DataModule's actor, prompts and env workers (training, validation and ``paw play``)."""
        hp = self.hparams
        return Collector(
            # the spec, not the id: a worker process builds the env without the registration of this one
            make_env=functools.partial(make_text_env, gym.spec(hp.env_id), env_kwargs),
            num_groups=num_groups,
            group_size=group_size,
            max_steps=hp.max_steps,
            prompts=PromptBuilder(hp.history_length, hp.actor == "generate", hp.max_prompt_tokens,
                                  resolve_template(hp.prompt_template), hp.format_example, hp.response_prefix),
            actor=make_actor(hp.actor, temperature, hp.max_new_tokens, hp.response_prefix),
            invalid_action_penalty=hp.invalid_action_penalty,
            max_obs_tokens=hp.max_obs_tokens,
            env_workers=usable_cores() if hp.env_workers is None else hp.env_workers,
            env_timeout_s=hp.env_timeout_s,
            stop=self.stop,
        )

    @property
    def ranks(self) -> Ranks:
        """The training processes (one without a trainer)."""
        return Ranks.of(self.trainer)

    def val_indices(self) -> list[int]:
        """The validation episodes this process plays: a consecutive share of ``range(val_episodes)``."""
        ranks = self.ranks
        return [int(i) for i in np.array_split(np.arange(self.hparams.val_episodes), ranks.world_size)[ranks.rank]]

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if stage == "fit" and self.trainer is not None:
            self.stop.install()  # SIGTERM / Ctrl-C stop the fit within seconds, even mid-rollout
        ranks = self.ranks
        if hp.val_episodes and hp.val_episodes < ranks.world_size:
            raise ValueError(
                f"data.val_episodes ({hp.val_episodes}) must be at least the number of processes ({ranks.world_size}): "
                "each process plays a share of them; raise it or set it to 0"
            )
        if stage == "fit" and self.collector is None:
            self.collector = self.build_collector(dict(hp.env_kwargs or {}), hp.num_groups, hp.group_size, hp.temperature)
        if hp.val_episodes > 0 and stage in ("fit", "validate") and self.val_collector is None:
            val_kwargs = dict(hp.env_kwargs or {}) | dict(hp.val_env_kwargs or {})
            self.val_collector = self.build_collector(val_kwargs, len(self.val_indices()), 1, hp.val_temperature)

    def teardown(self, stage: str) -> None:
        for collector in (self.collector, self.val_collector):
            if collector is not None:
                collector.close()
        self.collector = self.val_collector = None
        if self.engine is not None:
            self.engine.close()
        self.engine, self._synced_step = None, None
        self.stop.uninstall()

    def on_exception(self, exception: BaseException) -> None:
        """A stopped or failed run: close the envs and their workers (Lightning skips ``teardown`` then)."""
        self.teardown("fit")

    def engine_for(self, module: L.LightningModule) -> RolloutEngine:
        """The rollout engine, built on first use and synced with the module's weights whenever the
        trainer has stepped since the last sync (once per iteration, and before validation)."""
        if self.engine is None:
            self.engine = self._build_engine(module)
        if self._synced_step != module.global_step:
            self.engine.sync(module.model)
            self._synced_step = module.global_step
        return self.engine

    def _build_engine(self, module: L.LightningModule) -> RolloutEngine:
        hp = self.hparams
        if resolve_engine(hp.engine, hp.actor) == "hf":
            return HFEngine(module.model, module.tokenizer)
        from paw_lightning.rollout.vllm_engine import VLLMEngine, VLLMSettings, on_gpu, resolve_lora_sync

        mp, trainer = module.hparams, self.trainer
        lora_sync = resolve_lora_sync(hp.vllm_lora_sync, mp.lora_rank)
        if lora_sync == "adapter" and hp.actor == "score" and not on_gpu():
            raise ValueError("vLLM cannot score with a LoRA adapter on CPU; set data.vllm_lora_sync: merged (or auto)")
        if lora_sync == "adapter" and getattr(mp, "quantize", None):
            # vLLM serves the adapter on the bf16 base while the trainer's base is nf4: the rollout policy
            # differs from the trained one by the quantisation error (rollout/engine_logprob_gap shows it).
            log.warning("QLoRA with data.vllm_lora_sync: adapter: vLLM samples with the bf16 base, the trainer uses nf4; "
                        "data.vllm_lora_sync: merged serves the de-quantised nf4 weights instead")
        settings = VLLMSettings(
            folder=self._serving_folder(module),
            dtype=hp.vllm_dtype,
            max_model_len=hp.vllm_max_model_len or hp.max_prompt_tokens + hp.max_new_tokens + 64,
            kv_cache_gib=hp.vllm_kv_cache_gib,
            gpu_memory_utilization=hp.vllm_gpu_memory_utilization,
            lora_sync=lora_sync,
            lora_rank=mp.lora_rank,
            sleep=hp.vllm_sleep,
            seed=hp.seed + trainer.global_rank,
            trust_remote_code=mp.trust_remote_code,
            rank=trainer.global_rank,
            local_rank=trainer.local_rank,
            world_size=trainer.world_size,
            device=str(trainer.strategy.root_device),
        )
        return VLLMEngine(settings, module.tokenizer)

    def _serving_folder(self, module: L.LightningModule) -> str:
        """The base model's HF folder for vLLM. With several processes rank 0 writes it (transformers saves
        weights on rank 0 only) while the others wait, then they read it."""
        from paw_lightning.models import serving_folder

        mp, trainer = module.hparams, self.trainer
        write = functools.partial(serving_folder, mp.model_name, mp.model_seed, module.tokenizer, mp.trust_remote_code)
        if trainer.world_size <= 1:
            return write()
        if trainer.global_rank == 0:
            write()
        trainer.strategy.barrier("paw-serving-folder")
        return write()  # written: only looked up

    def collect(self, policy, tokenizer):
        """One rollout with the given policy: a RolloutEngine, or a model (run on the HF engine, in eval
        mode, without gradients)."""
        if self.collector is None:
            self.setup("fit")
        ranks = self.ranks
        seeds, sampling_seed = self.draw_seeds(ranks.rank, ranks.world_size)
        generator = torch.Generator().manual_seed(sampling_seed)
        progress = self.hparams.progress and ranks.rank == 0
        rollout = self.collector.collect(policy, tokenizer, seeds, generator, self.iteration, progress)
        self.iteration += 1
        env_steps, episodes = sum_over_ranks([rollout.env_steps, len(rollout.episodes)], ranks)
        self.total_env_steps += int(env_steps)
        self.total_episodes += int(episodes)
        return rollout

    def draw_seeds(self, rank: int = 0, world_size: int = 1) -> tuple[list[int], int]:
        """This process's task seeds (one per group) and sampling seed for the next rollout.

        Every process draws ``world_size x num_groups`` seeds from the same RNG and plays its own
        consecutive slice of them, so the processes' tasks never overlap more than one process's would,
        N processes play the tasks of one process with N x num_groups groups, and the RNG stays in step
        across processes (a checkpoint's RNG state resumes every one of them)."""
        num_groups = self.hparams.num_groups
        seeds = self.rng.integers(0, 2**31 - 1, size=num_groups * world_size)[rank * num_groups : (rank + 1) * num_groups]
        sampling_seed = int(self.rng.integers(0, 2**31 - 1))
        if rank:  # each rank samples its own actions
            sampling_seed = int(np.random.default_rng([sampling_seed, rank]).integers(0, 2**31 - 1))
        return [int(s) for s in seeds], sampling_seed

    def validate(self, policy, tokenizer):
        """Play the held-out validation tasks once with the given policy (an engine or a model)."""
        if self.val_collector is None:
            self.setup("validate")
        indices = self.val_indices()
        seeds = [self.hparams.val_seed + i for i in indices]
        generator = torch.Generator().manual_seed(self.hparams.val_seed + indices[0])
        progress = self.hparams.progress and self.ranks.rank == 0
        # rollout.iteration: the training iterations played before this validation (0: the untrained model)
        return self.val_collector.collect(policy, tokenizer, seeds, generator, self.iteration, progress)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RolloutStream(self), batch_size=None, num_workers=0)

    def val_dataloader(self):
        if self.hparams.val_episodes == 0:
            return []
        return DataLoader(ValidationStream(self), batch_size=None, num_workers=0, collate_fn=lambda rollout: rollout)

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self.rng.bit_generator.state,
            "iteration": self.iteration,
            "total_env_steps": self.total_env_steps,
            "total_episodes": self.total_episodes,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state_dict["rng"]
        self.iteration = state_dict["iteration"]
        self.total_env_steps = state_dict["total_env_steps"]
        self.total_episodes = state_dict["total_episodes"]
