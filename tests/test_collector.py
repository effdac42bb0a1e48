import functools

import gymnasium as gym
import pytest
import torch

from paw_lightning.rollout.actors import ActorOutput, GenerateActor, ScoreActor
from paw_lightning.rollout.collector import Collector
from paw_lightning.rollout.datamodule import make_text_env
from paw_lightning.rollout.prompts import PromptBuilder
from tests.envs import fakes


class ScriptedActor:
    """Always answers the same command; marks it invalid when asked to."""

    mode, temperature = "generate", 1.0

    def __init__(self, command="go", valid=True):
        self.command, self.valid = command, valid

    def act(self, model, tokenizer, prompts, admissible, generator):
        return [ActorOutput(self.command, [5, 6], self.valid) for _ in prompts]


def corridor_collector(actor, num_groups=2, group_size=2, max_steps=4, **env_kwargs):
    make = functools.partial(make_text_env, "paw-test/Corridor-v0", env_kwargs)
    return Collector(make, num_groups, group_size, max_steps, PromptBuilder(), actor)


def test_group_members_share_their_initial_state(tiny):
    model, tokenizer = tiny
    collector = corridor_collector(ScoreActor(), num_groups=2, group_size=3)
    rollout = collector.collect(model, tokenizer, seeds=[11, 22], generator=torch.Generator().manual_seed(0), progress=False)
    first = {t.episode_id: t for t in rollout.transitions if t.step == 0}
    assert [first[i].group_id for i in range(6)] == [0, 0, 0, 1, 1, 1]
    assert first[0].prompt_ids == first[1].prompt_ids == first[2].prompt_ids
    assert first[3].prompt_ids == first[4].prompt_ids != first[0].prompt_ids
    assert [e.seed for e in rollout.episodes] == [11, 11, 11, 22, 22, 22]


def test_episodes_end_on_win_or_max_steps(tiny):
    model, tokenizer = tiny
    rollout = corridor_collector(ScriptedActor("go"), max_steps=5).collect(model, tokenizer, [1, 2], torch.Generator(), progress=False)
    assert all(e.won and e.length == 2 and e.total_return == 10.0 for e in rollout.episodes)
    stuck = corridor_collector(ScriptedActor("wait"), max_steps=3).collect(model, tokenizer, [1, 2], torch.Generator(), progress=False)
    assert all(not e.won and e.length == 3 for e in stuck.episodes)
    assert [t.done for t in stuck.transitions if t.episode_id == 0] == [False, False, True]


def test_invalid_actions_get_the_penalty_and_still_reach_the_env(tiny):
    model, tokenizer = tiny
    rollout = corridor_collector(ScriptedActor("go", valid=False), max_steps=5).collect(model, tokenizer, [1, 2], torch.Generator(), progress=False)
    assert all(t.reward == pytest.approx(-0.1 + (10.0 if t.done else 0.0)) for t in rollout.transitions)
    assert all(e.valid_actions == 0 and e.won for e in rollout.episodes)


def test_a_crashed_env_is_rebuilt_and_the_run_goes_on(tiny):
    model, tokenizer = tiny
    collector = corridor_collector(ScriptedActor("go"), max_steps=5)
    fakes.CRASHES["left"] = 1
    rollout = collector.collect(model, tokenizer, [1, 2], torch.Generator(), progress=False)
    assert collector.env_restarts == 1
    crashed = [e for e in rollout.episodes if e.env_restarts]
    assert len(crashed) == 1 and not crashed[0].won and crashed[0].length == 1
    # the rebuilt env plays the next rollout normally
    again = collector.collect(model, tokenizer, [1, 2], torch.Generator(), progress=False)
    assert all(e.won for e in again.episodes)


def test_generate_actor_turns_malformed_output_into_invalid_actions(tiny):
    """The untrained tiny model writes no <action> tag: every step is invalid, nothing crashes."""
    model, tokenizer = tiny
    collector = corridor_collector(GenerateActor(temperature=1.0, max_new_tokens=6), num_groups=1, group_size=2, max_steps=2)
    rollout = collector.collect(model, tokenizer, [3], torch.Generator().manual_seed(0), progress=False)
    assert len(rollout.transitions) == 4
    assert not any(t.valid for t in rollout.transitions)
    assert all(t.reward == pytest.approx(-0.1) for t in rollout.transitions)
    assert all(1 <= len(t.action_ids) <= 6 for t in rollout.transitions)


def test_score_actor_needs_admissible_commands(tiny):
    model, tokenizer = tiny
    collector = corridor_collector(ScoreActor(), num_groups=1, group_size=1, free_text=True)
    with pytest.raises(ValueError, match="actor: generate"):
        collector.collect(model, tokenizer, [0], torch.Generator(), progress=False)


def test_score_actor_samples_from_the_candidate_softmax(tiny):
    model, tokenizer = tiny
    prompts = [tokenizer("You see a door.", add_special_tokens=False)["input_ids"]]
    out = ScoreActor(temperature=1.0).act(model, tokenizer, prompts, [["open door", "look", "go east"]], torch.Generator().manual_seed(0))[0]
    assert out.action_text in ("open door", "look", "go east") and out.valid
    assert out.logprob <= 0 and 0 <= out.entropy <= torch.log(torch.tensor(3.0)).item() + 1e-6
    greedy = [ScoreActor(temperature=0).act(model, tokenizer, prompts, [["open door", "look", "go east"]], torch.Generator())[0].chosen for _ in range(2)]
    assert greedy[0] == greedy[1]


def test_ranks_play_different_tasks_from_the_same_seed():
    from paw_lightning.rollout.datamodule import RolloutDataModule

    seeds = {}
    for rank in (0, 1):  # each process has its own DataModule, seeded alike
        dm = RolloutDataModule(env_id="paw-test/Corridor-v0", num_groups=3, group_size=1, max_steps=1, progress=False)
        seeds[rank], _ = dm.draw_seeds(rank, world_size=2)
    assert len(seeds[0]) == len(seeds[1]) == 3 and not set(seeds[0]) & set(seeds[1])


def test_collect_runs_the_policy_in_eval_mode_and_restores_the_mode(tiny):
    model, tokenizer = tiny
    seen = []

    class ModeSpy(ScriptedActor):
        def act(self, engine, tokenizer, prompts, admissible, generator):
            seen.append(engine.model.training)  # the HF engine runs the live model
            return super().act(engine, tokenizer, prompts, admissible, generator)

    model.train()
    corridor_collector(ModeSpy("go"), max_steps=2).collect(model, tokenizer, [1, 2], torch.Generator(), progress=False)
    assert seen and not any(seen) and model.training
    model.eval()


def test_response_prefix_is_in_the_prompt_and_the_parse(tiny):
    """With response_prefix "<action>", a response "go</action>" is the valid action "go"."""
    model, tokenizer = tiny
    builder = PromptBuilder(generate=True, response_prefix="<action>")
    ids = builder.build(tokenizer, "reach the end", "You are at the start.", ["go", "wait"], [])
    assert tokenizer.decode(ids).endswith("<action>")
    answer = tokenizer("go</action>", add_special_tokens=False)["input_ids"]

    class Echo(torch.nn.Module):  # generates a fixed answer after any prompt
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, **kwargs):
            return torch.cat([input_ids, torch.tensor([answer] * len(input_ids))], dim=1)

    outs = GenerateActor(max_new_tokens=8, response_prefix="<action>").act(Echo(), tokenizer, [ids], [["go", "wait"]], torch.Generator())
    assert outs[0].valid and outs[0].action_text == "go" and outs[0].action_ids == answer
    plain = GenerateActor(max_new_tokens=8).act(Echo(), tokenizer, [ids], [["go", "wait"]], torch.Generator())
    assert not plain[0].valid  # without the prefix the same text has no opening tag
