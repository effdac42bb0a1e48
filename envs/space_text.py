"""Any standard Gymnasium observation as text: the default describer of ``paw/Gymnasium-v0`` (envs/wrappers.py)
for an env without an ``ansi`` render, so no user code is needed to read a ``Box`` or ``Dict`` observation.

One line per value, ``label: value``, with the value's range (``Box`` bounds, ``Discrete`` choices);
``Box`` values are rounded to about a thousandth of their range (e.g. 0.0012 for MountainCar's velocity
in [-0.07, 0.07], 0.123 for a cosine in [-1, 1]; 3 decimals when unbounded). Labels come from ``labels`` (the env's known names, see
envs/gymnasium_defaults.py), else ``x[i]`` / ``part i`` / the ``Dict`` key.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

MAX_VALUES = 256  # a larger observation (an image) is not text a language model can use: give a describe


def count_values(space: spaces.Space) -> int:
    """How many lines ``space_text`` writes for an observation of ``space``; ValueError for a space it cannot write."""
    if isinstance(space, (spaces.Discrete, spaces.Text)):
        return 1
    if isinstance(space, (spaces.Box, spaces.MultiBinary, spaces.MultiDiscrete)):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.Tuple):
        return sum(count_values(s) for s in space.spaces)
    if isinstance(space, spaces.Dict):
        return sum(count_values(s) for s in space.spaces.values())
    raise ValueError(f"no default text for a {type(space).__name__} observation; give describe='package.module:function'")


def check_describable(space: spaces.Space) -> None:
    """Raise ValueError when the default describer cannot write ``space`` usefully (unknown kind, or an image)."""
    n = count_values(space)
    if n > MAX_VALUES:
        raise ValueError(f"the observation has {n} values (an image?), more than the default text writes ({MAX_VALUES}); "
                         "give describe='package.module:function' that writes it as text")


def decimals_for(low: float, high: float) -> int:
    """Decimals that resolve about a thousandth of the range ``high - low`` (3 when a bound is infinite)."""
    span = high - low
    if not math.isfinite(span) or span <= 0:
        return 3
    return int(min(6, max(0, 3 - math.floor(math.log10(span)))))


def _bound(x: float) -> str:
    return f"{x:g}" if math.isfinite(x) else ("-inf" if x < 0 else "inf")


def _box_lines(value: np.ndarray, space: spaces.Box, labels: Sequence[str] | None, name: str) -> list[str]:
    flat, low, high = np.asarray(value).ravel(), space.low.ravel(), space.high.ravel()
    integer = np.issubdtype(space.dtype, np.integer)
    lines = []
    for i, x in enumerate(flat):
        name = labels[i] if labels and i < len(labels) else (f"x[{i}]" if flat.size > 1 else name)
        lo, hi = float(low[i]), float(high[i])
        text = str(int(x)) if integer else f"{float(x):.{decimals_for(lo, hi)}f}"
        bounds = "unbounded" if not (math.isfinite(lo) or math.isfinite(hi)) else f"range {_bound(lo)} to {_bound(hi)}"
        lines.append(f"{name}: {text} ({bounds})")
    return lines


def space_lines(value: Any, space: spaces.Space, labels: Sequence[str] | None = None, name: str = "observation") -> list[str]:
    """The lines of ``space_text`` (``name`` labels a single value without a label of its own)."""
    if isinstance(space, spaces.Discrete):
        label = labels[0] if labels else name
        return [f"{label}: {int(value)} (one of {space.start} to {space.start + space.n - 1})"]
    if isinstance(space, spaces.Text):
        return [f"{labels[0] if labels else name}: {value}"]
    if isinstance(space, spaces.Box):
        return _box_lines(value, space, labels, name)
    if isinstance(space, (spaces.MultiBinary, spaces.MultiDiscrete)):
        flat = np.asarray(value).ravel()
        nvec = np.asarray(space.nvec).ravel() if isinstance(space, spaces.MultiDiscrete) else np.full(flat.size, 2)
        start = np.asarray(getattr(space, "start", np.zeros_like(nvec))).ravel()
        return [f"{labels[i] if labels and i < len(labels) else f'x[{i}]'}: {int(x)} (one of {int(start[i])} to "
                f"{int(start[i] + nvec[i] - 1)})" for i, x in enumerate(flat)]
    if isinstance(space, spaces.Tuple):
        lines, offset = [], 0
        for i, (part, sub) in enumerate(zip(value, space.spaces)):
            n = count_values(sub)
            sub_labels = labels[offset:offset + n] if labels and len(labels) >= offset + n else None
            lines += space_lines(part, sub, sub_labels, name=f"part {i}") if sub_labels or n == 1 else \
                [f"part {i} {line}" for line in space_lines(part, sub)]
            offset += n
        return lines
    if isinstance(space, spaces.Dict):
        lines = []
        for key, sub in space.spaces.items():
            sub_lines = space_lines(value[key], sub, name=str(key))
            lines += sub_lines if count_values(sub) == 1 else [f"{key} {line}" for line in sub_lines]
        return lines
    raise ValueError(f"no default text for a {type(space).__name__} observation; give describe='package.module:function'")


def space_text(value: Any, space: spaces.Space, labels: Sequence[str] | None = None) -> str:
    """An observation of ``space`` as text, one ``label: value (range)`` line per value."""
    return "\n".join(space_lines(value, space, labels))
