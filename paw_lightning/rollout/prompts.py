"""Prompt templates in the spirit of the paper's: task, last k (observation, action) pairs, current
observation, admissible actions; with the think/action tag instruction for the generate actor.

Instruct models get the text wrapped in their chat template as a user turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TEXTWORLD_TEMPLATE = (
    "You are an expert agent playing a text-based game.\n"
    "Your task is: {task}\n"
    "{history}"
    "You have taken {step} step(s) so far. Current observation: {observation}\n"
    "Your admissible actions are: {actions}\n"
)
ALFWORLD_TEMPLATE = (
    "You are an expert household agent in the ALFRED embodied environment.\n"
    "Your task is to: {task}\n"
    "You have taken {step} step(s) so far.\n"
    "{history}"
    "Current observation: {observation}\n"
    "Your admissible actions are: [{actions}]\n"
)
TEMPLATES = {"textworld": TEXTWORLD_TEMPLATE, "alfworld": ALFWORLD_TEMPLATE}
HISTORY_HEADER = "Your last {k} observations and actions:\n"
HISTORY_ENTRY = "[Observation {i}: {observation}]\n[Action {i}: {action}]\n"
GENERATE_SUFFIX = (
    "Think briefly about the next step inside <think> </think>, then give exactly one admissible "
    "action inside <action> </action>.\n"
)
SCORE_SUFFIX = "Your next action:"
# A one-shot exchange shown before the prompt when format_example is on: small instruct models copy
# the answer format from an earlier turn far more reliably than from an instruction alone.
FORMAT_EXAMPLE = {"task": "open the door.", "observation": "You are in a hall. There is a closed door.",
                  "actions": "open door, look, go west", "history": "", "step": 0}
FORMAT_EXAMPLE_ANSWER = "<think>I should open the door.</think>\n<action>open door</action>"



def resolve_template(template: str) -> str:
    """A named template (``textworld``, ``alfworld``) or a str.format template with the fields task,
    history, step, observation and actions; raises ValueError for anything else."""
    if template in TEMPLATES:
        return TEMPLATES[template]
    fields = ("{task}", "{observation}", "{actions}")
    if not all(f in template for f in fields):
        raise ValueError(f"prompt_template must be one of {sorted(TEMPLATES)} or a format string with {fields} "
                         f"(and optionally {{history}}, {{step}}); got {template[:80]!r}")
    return template


ACTION_OPEN = re.compile(re.escape("<action>"), re.IGNORECASE)
ACTION_CLOSE = re.compile(re.escape("</action>"), re.IGNORECASE)
# The longest command an env is sent; admissible commands of TextWorld and ALFWorld are far shorter.
MAX_ACTION_CHARS = 256
# C0 and C1 control characters (and DEL): the whitespace ones become a space, the others are dropped.
# TextWorld's interpreter hangs or segfaults on NUL and on \x0e-\x15, so none of them may reach an env.
CONTROL_TABLE = {c: (" " if chr(c).isspace() else None) for c in (*range(0x20), *range(0x7F, 0xA0))}


def parse_action(response: str) -> str | None:
    """The text inside the first ``<action>...</action>`` pair (tags in any case), whitespace collapsed,
    or None when there is no closed pair or it is empty. Linear in the response length."""
    opening = ACTION_OPEN.search(response)
    if opening is None:
        return None
    closing = ACTION_CLOSE.search(response, opening.end())
    if closing is None:
        return None
    return " ".join(response[opening.end() : closing.start()].split()) or None


def sanitize_action(text: str, max_chars: int = MAX_ACTION_CHARS) -> str:
    """What an env may be sent: control characters dropped (whitespace ones become spaces), whitespace
    runs collapsed to one space, at most ``max_chars`` characters. Idempotent."""
    text = " ".join(text.translate(CONTROL_TABLE).split())
    return text[:max_chars].rstrip()


def match_admissible(action: str, admissible: list[str] | None) -> str | None:
    """The admissible command that ``action`` names, ignoring case and spacing, in the env's own
    spelling (ALFWorld is case-sensitive); None when there is none. With no list (free-text envs) every
    action is admissible and comes back as it is."""
    if admissible is None:
        return action
    wanted = " ".join(action.lower().split())
    return next((a for a in admissible if " ".join(a.lower().split()) == wanted), None)


def is_admissible(action: str, admissible: list[str] | None) -> bool:
    """Case- and space-insensitive membership; every action is admissible when the env lists none."""
    return match_admissible(action, admissible) is not None


def choose_action(response: str, admissible: list[str] | None) -> tuple[str, bool]:
    """(the command to send, valid) for a generated response: the parsed action in the env's spelling
    when it is admissible; else the parsed action, or the whole response when it has no action tags,
    as an invalid action. The text is already sanitised, so the check sees what the env will get."""
    parsed = parse_action(response)
    action = sanitize_action(parsed if parsed is not None else response)
    matched = match_admissible(action, admissible) if parsed is not None and action else None
    return (matched, True) if matched is not None else (action, False)


@dataclass
class PromptBuilder:
    """Renders the prompt of one step and tokenises it.

    Args:
        history_length: how many past (observation, action) pairs to show (the paper: 2).
        generate: add the think/action tag instruction (generate actor) instead of the score suffix.
        max_prompt_tokens: longer prompts drop history first, then keep their last tokens.
        template: a str.format template with task, history, step, observation and actions fields.
        format_example: put a one-shot example exchange (``FORMAT_EXAMPLE_*``) before the prompt.
        response_prefix: text that starts the model's turn (after the chat template's generation prompt),
            e.g. ``<action>``; it belongs to the prompt, and the generate actor parses prefix + response.
    """

    history_length: int = 2
    generate: bool = False
    max_prompt_tokens: int = 1024
    template: str = TEXTWORLD_TEMPLATE
    format_example: bool = False
    response_prefix: str = ""

    def render(
        self, task: str, observation: str, admissible: list[str] | None, history: list[tuple[str, str]], keep: int
    ) -> str:
        """The prompt text with the last ``keep`` of the ``history`` (observation, action) pairs."""
        shown = history[len(history) - keep :] if keep > 0 else []
        history_text = ""
        if shown:
            first = len(history) - len(shown) + 1
            history_text = HISTORY_HEADER.format(k=len(shown)) + "".join(
                HISTORY_ENTRY.format(i=first + j, observation=o, action=a) for j, (o, a) in enumerate(shown)
            )
        actions = ", ".join(admissible) if admissible is not None else "any text command"
        text = self.template.format(
            task=task, history=history_text, step=len(history), observation=observation, actions=actions
        )
        return text + (GENERATE_SUFFIX if self.generate else SCORE_SUFFIX)

    def example_prompt(self) -> str:
        """The one-shot example's prompt, in this builder's own template."""
        return self.template.format(**FORMAT_EXAMPLE) + GENERATE_SUFFIX

    def encode(self, tokenizer, text: str) -> list[int]:
        """Token ids of the text, as a user turn of the chat template when the tokenizer has one."""
        if getattr(tokenizer, "chat_template", None):
            turns = [{"role": "user", "content": text}]
            if self.format_example:
                turns = [
                    {"role": "user", "content": self.example_prompt()},
                    {"role": "assistant", "content": FORMAT_EXAMPLE_ANSWER},
                    *turns,
                ]
            encoded = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True)
            return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded) + self._prefix_ids(tokenizer)
        if self.format_example:
            text = f"{self.example_prompt()}\n{FORMAT_EXAMPLE_ANSWER}\n\n{text}"
        return tokenizer(text + self.response_prefix, add_special_tokens=False)["input_ids"]

    def _prefix_ids(self, tokenizer) -> list[int]:
        if not self.response_prefix:
            return []
        return tokenizer(self.response_prefix, add_special_tokens=False)["input_ids"]

    def build(
        self, tokenizer, task: str, observation: str, admissible: list[str] | None, history: list[tuple[str, str]]
    ) -> list[int]:
        """Token ids of the prompt within ``max_prompt_tokens``: history is dropped oldest first, then
        the prompt keeps its last tokens (the current observation and the admissible actions)."""
        for keep in range(min(self.history_length, len(history)), -1, -1):
            ids = self.encode(tokenizer, self.render(task, observation, admissible, history, keep))
            if len(ids) <= self.max_prompt_tokens:
                return ids
        return ids[-self.max_prompt_tokens :]
