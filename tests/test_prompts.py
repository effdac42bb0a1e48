import pytest

from paw_lightning.rollout.prompts import (
    MAX_ACTION_CHARS,
    PromptBuilder,
    choose_action,
    is_admissible,
    match_admissible,
    parse_action,
    resolve_template,
    sanitize_action,
)


@pytest.mark.parametrize(
    "response, expected",
    [
        ("<think>go</think><action>take coin</action>", "take coin"),
        ("<action>  go   east </action> trailing <action>look</action>", "go east"),
        ("<ACTION>look</ACTION>", "look"),
        ("no tags at all", None),
        ("<action></action>", None),
        ("<action>unclosed", None),
        ("</action> <action>look</action>", "look"),
        ("<Action>\n take\tcoin \n</aCTION>", "take coin"),
        ("<action><action>x</action></action>", "<action>x"),
        ("<action>   \n </action>", None),
    ],
)
def test_parse_action(response, expected):
    assert parse_action(response) == expected


@pytest.mark.parametrize("filler", [" ", "\n", "x", "<action>", "</action"])
def test_parse_action_is_linear_on_100k_character_responses(filler):
    """The old regex backtracked cubically: 10k spaces after an opening tag took minutes."""
    n = 100_000 // len(filler)
    assert parse_action("<action>" + filler * n) is None
    padded = parse_action(filler * n + "<action>" + " " * 100_000 + "go east" + " " * 100_000 + "</action>")
    assert padded == "go east" if filler != "<action>" else padded.endswith("<action> go east")
    assert parse_action("<action>" + filler * n + "</action>") == (" ".join((filler * n).split()) or None)


def test_sanitize_action_drops_control_characters_and_caps_the_length():
    assert sanitize_action("take\x00 \x0e\x0f\x10\x11\x12\x13\x14\x15coin") == "take coin"
    assert sanitize_action("go\teast\r\n\x0b\x0c\x85now") == "go east now"
    assert sanitize_action("\x7fopen\x9b door\x1b[0m") == "open door[0m"
    assert sanitize_action("  caf\u00e9 \u2019s  ") == "caf\u00e9 \u2019s"  # printable non-ASCII stays
    hostile = "".join(chr(c) for c in range(0xA0)) * 1000 + "x" * 100_000
    clean = sanitize_action(hostile)
    assert len(clean) <= MAX_ACTION_CHARS and not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in clean)
    assert sanitize_action("word " * 100, max_chars=12) == "word word wo"
    assert sanitize_action("word " * 100, max_chars=10) == "word word"  # no trailing space
    for text in (hostile, "a \x00 b", "word " * 100):
        assert sanitize_action(sanitize_action(text)) == sanitize_action(text)


def test_choose_action_sends_the_admissible_spelling():
    alfworld = ["go to countertop 1", "inventory", "look"]
    assert choose_action("<think>go</think><action>Go to  CounterTop 1</action>", alfworld) == ("go to countertop 1", True)
    assert choose_action("<action>go to the moon</action>", alfworld) == ("go to the moon", False)
    assert choose_action("no tags: look", alfworld) == ("no tags: look", False)  # unparsed is never valid
    assert choose_action("<action>look\x00</action>", alfworld) == ("look", True)
    assert choose_action("<action>\x00\x0e</action>", alfworld) == ("", False)
    assert choose_action("<action>Say Hello</action>", None) == ("Say Hello", True)  # free text: as written
    assert match_admissible("INVENTORY", alfworld) == "inventory" and match_admissible("dance", alfworld) is None


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
