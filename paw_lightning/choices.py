"""Options that take one of a few strings are ``typing.Literal`` types: the CLI lists their choices in
``--help`` and rejects anything else while parsing. ``check_choices`` gives code that builds the
classes directly (tests, notebooks) the same check, read from the same annotations.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Literal, get_args, get_origin


def literal_choices(annotation: Any) -> tuple | None:
    """The allowed values of a Literal annotation (also inside ``X | None``), else None (also for a union
    with another type, e.g. ``int | Literal["auto"]``, whose values the type checks)."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    if any(literal_choices(arg) is None and arg is not type(None) for arg in get_args(annotation)):
        return None
    choices = [c for arg in get_args(annotation) if (c := literal_choices(arg)) is not None]
    if choices:
        return tuple(v for c in choices for v in c) + ((None,) if type(None) in get_args(annotation) else ())
    return None


def check_choices(function, arguments: dict[str, Any]) -> None:
    """Raise ValueError when an argument of ``function`` typed as a Literal has another value."""
    hints = typing.get_type_hints(function)
    for name in inspect.signature(function).parameters:
        choices = literal_choices(hints.get(name))
        if choices is not None and name in arguments and arguments[name] not in choices:
            raise ValueError(f"unknown {name} {arguments[name]!r}; choose one of {list(choices)}")
