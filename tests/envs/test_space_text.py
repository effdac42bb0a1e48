"""The default text of each standard observation space: values with their ranges, rounded to the bounds' scale."""

import numpy as np
import pytest
from gymnasium import spaces

from paw_lightning.envs.space_text import check_describable, decimals_for, space_text


def test_box_values_are_rounded_to_their_range_and_show_their_bounds():
    box = spaces.Box(np.array([-1.2, -0.07, -np.inf], np.float32), np.array([0.6, 0.07, np.inf], np.float32))
    text = space_text(np.array([-0.4712, 0.00123, 12.34567], np.float32), box, ["position", "velocity"])
    assert text.splitlines() == ["position: -0.471 (range -1.2 to 0.6)", "velocity: 0.0012 (range -0.07 to 0.07)",
                                 "x[2]: 12.346 (unbounded)"]
    assert decimals_for(0, 1000) == 0 and decimals_for(-1, 1) == 3
    assert space_text(np.array([3]), spaces.Box(0, 9, (1,), np.int64)) == "observation: 3 (range 0 to 9)"


def test_discrete_multi_tuple_dict_and_text_spaces():
    assert space_text(5, spaces.Discrete(16)) == "observation: 5 (one of 0 to 15)"
    assert space_text(np.array([1, 0]), spaces.MultiBinary(2)).splitlines() == ["x[0]: 1 (one of 0 to 1)", "x[1]: 0 (one of 0 to 1)"]
    assert space_text(np.array([2]), spaces.MultiDiscrete([5])) == "x[0]: 2 (one of 0 to 4)"
    assert space_text((14, 3), spaces.Tuple((spaces.Discrete(32), spaces.Discrete(11))), ["sum", "card"]) == \
        "sum: 14 (one of 0 to 31)\ncard: 3 (one of 0 to 10)"
    assert space_text((1, np.array([0.5], np.float32)), spaces.Tuple((spaces.Discrete(2), spaces.Box(0, 1, (1,))))) == \
        "part 0: 1 (one of 0 to 1)\npart 1: 0.500 (range 0 to 1)"
    dict_space = spaces.Dict({"mission": spaces.Text(20), "pos": spaces.MultiDiscrete([4, 4])})
    assert space_text({"mission": "go", "pos": np.array([1, 2])}, dict_space).splitlines() == \
        ["mission: go", "pos x[0]: 1 (one of 0 to 3)", "pos x[1]: 2 (one of 0 to 3)"]


def test_an_image_or_an_unknown_space_asks_for_a_describe():
    with pytest.raises(ValueError, match="an image.*give describe="):
        check_describable(spaces.Box(0, 255, (64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="no default text for a Graph"):
        check_describable(spaces.Graph(spaces.Discrete(2), None))
