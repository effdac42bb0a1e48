import pytest

from paw_lightning.rollout.prompts import PromptBuilder, is_admissible, parse_action, resolve_template


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


def test_alfworld_template_has_the_papers_parts():
    builder = PromptBuilder(history_length=2, generate=True, template=resolve_template("alfworld"))
    history = [("You arrive at fridge 1.", "go to fridge 1"), ("The fridge 1 is open.", "open fridge 1")]
    text = builder.render("put a cool apple in countertop", "You see an apple 1.", ["take apple 1 from fridge 1", "look"],
                          history, keep=2)
    assert "ALFRED" in text and "Your task is to: put a cool apple in countertop" in text
    assert "taken 2 step(s)" in text and "[Action 2: open fridge 1]" in text
    assert "Current observation: You see an apple 1." in text and "[take apple 1 from fridge 1, look]" in text
    assert "<think>" in text and "<action>" in text


def test_unknown_prompt_template_is_a_clear_error():
    assert resolve_template("{task} {observation} {actions}") == "{task} {observation} {actions}"
    with pytest.raises(ValueError, match="prompt_template must be one of"):
        resolve_template("alfred")
