import pytest

from paw_lightning.envs.base import check_info, check_text_env_step, tidy_text


def test_contract_accepts_a_valid_step():
    check_text_env_step(("obs", 0.0, False, False, {"task": "t", "admissible_commands": ["a"], "won": False}))


@pytest.mark.parametrize(
    "result, message",
    [
        (("obs", 0.0, False, {}), "5 items|\\(obs, reward"),
        ((1, 0.0, False, False, {"task": "", "admissible_commands": None, "won": False}), "observation must be str"),
        (("o", 0.0, 0, False, {"task": "", "admissible_commands": None, "won": False}), "bool"),
        (("o", 0.0, False, False, {"task": ""}), "missing"),
    ],
)
def test_contract_rejects_broken_steps(result, message):
    with pytest.raises(ValueError, match=message):
        check_text_env_step(result)


def test_info_commands_must_be_strings():
    with pytest.raises(ValueError, match="list of str"):
        check_info({"task": "", "admissible_commands": [1, 2], "won": False})


def test_tidy_text_collapses_engine_whitespace():
    assert tidy_text("\n\n  a   b  \n\n\n\nc \n") == "a b\n\nc"
