"""A stand-in for a causal LM in generate mode: ``generate`` appends scripted responses to the prompts."""

from __future__ import annotations

import torch


class ScriptedModel(torch.nn.Module):
    """Row i of generate call k answers ``responses[(k * rows + i) % len(responses)]`` (token ids),
    right-padded with ``pad`` to the longest answer of the call."""

    def __init__(self, responses: list[list[int]], pad: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))  # gives the actor a device and a dtype
        self.responses = responses
        self.pad = pad
        self.calls = 0

    def generate(self, input_ids, **kwargs):
        rows = len(input_ids)
        answers = [self.responses[(self.calls * rows + i) % len(self.responses)] for i in range(rows)]
        self.calls += 1
        width = max(len(a) for a in answers)
        tail = torch.tensor([a + [self.pad] * (width - len(a)) for a in answers], dtype=input_ids.dtype)
        return torch.cat([input_ids, tail], dim=1)
