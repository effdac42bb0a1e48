import pytest

from paw_lightning.rollout.prompts import PromptBuilder, is_admissible, parse_action


@pytest.mark.parametrize(
    "response, expected",
    [
        ("<think>go</think><action>take coin</action>", "take coin"),
        ("<action>  go   east </action> trailing <action>look</action>", "go east"),
        ("<ACTION>look</ACTION>", "look"),
        ("no tags at all", None),
        ("<action></action>", None),
        ("<action>unclosed", None),
    ],
)
def test_parse_action(response, expected):
    assert parse_action(response) == expected


def test_is_admissible_ignores_case_and_spacing():
    assert is_admissible("Take  Coin", ["take coin", "look"])
    assert not is_admissible("eat coin", ["take coin"])
    assert is_admissible("anything", None)


def test_prompt_shows_last_k_steps(tiny):
    _, tokenizer = tiny
    builder = PromptBuilder(history_length=2)
    history = [("room A", "go east"), ("room B", "go north"), ("room C", "take key")]
    text = builder.render("find the coin", "room D", ["look", "go west"], history, keep=2)
    assert "room A" not in text and "[Observation 2: room B]" in text and "[Action 3: take key]" in text
    assert "taken 3 step(s)" in text and "look, go west" in text and "find the coin" in text


def test_prompt_drops_history_then_truncates_to_budget(tiny):
    _, tokenizer = tiny
    long_history = [("a very long room description " * 20, "go east")] * 2
    full = PromptBuilder(history_length=2, max_prompt_tokens=10_000).build(tokenizer, "task", "obs", ["look"], long_history)
    limited = PromptBuilder(history_length=2, max_prompt_tokens=120).build(tokenizer, "task", "obs", ["look"], long_history)
    assert len(full) > 120 >= len(limited)
    assert tokenizer.decode(limited).endswith("Your next action:")
