"""Typed options from YAML / command-line dicts: one ``from_dict`` for every options dataclass.

Why one function: a value enters hepfm once (a preset, ``-o key=value`` or a flag) and must be
checked there, with the same one-line errors everywhere, not at each use. ``from_dict`` refuses
unknown keys (with a suggestion), recurses into nested option dataclasses and coerces each value to
its annotated type (YAML 1.1 reads ``1e-3`` as a string; ``-o`` values arrive parsed as JSON/YAML).
Range checks live in each dataclass's ``__post_init__`` through :func:`require`, so a dataclass
built in Python is checked exactly like one built from a file.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from hepfm.errors import HepfmInputError

T = TypeVar("T")


def from_dict(cls: type[T], d: dict[str, Any] | T | None, where: str) -> T:
    """Build the dataclass ``cls`` from a mapping; ``where`` names the section in messages (``train``)."""
    if d is None:
        d = {}
    if isinstance(d, cls):
        return d
    if not isinstance(d, dict):
        raise HepfmInputError(f"{where}: expected a mapping of options, got {d!r}")
    hints = typing.get_type_hints(cls)
    check_known(d, [f.name for f in dataclasses.fields(cls)], where)  # type: ignore[arg-type]
    kwargs = {name: coerce(value, hints[name], f"{where}.{name}") for name, value in d.items()}
    return cls(**kwargs)


def check_known(keys: Iterable[str], known: Sequence[str], where: str, what: str = "option") -> None:
    """Refuse the first key not in ``known``: ``unknown option train.eval_evry; did you mean
    train.eval_every?`` (or the list of known keys when none is close). Every options mapping in hepfm
    is checked here, so the message is the same everywhere."""
    unknown = sorted(set(keys) - set(known))
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, known, n=1)
        prefix = f"{where}." if where else ""
        hint = f"; did you mean {prefix}{close[0]}?" if close else f" ({what}s: {', '.join(known)})"
        raise HepfmInputError(f"unknown {what} {prefix}{key}{hint}")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` as the annotated type ``tp``, or a one-line error naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except HepfmInputError as err:
                errors.append(err)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)  # type: ignore[arg-type]
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise HepfmInputError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise HepfmInputError(f"{key}: expected a list of {len(args)} values, got {value!r}")
            return tuple(
                coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        item = args[0] if args else Any
        items = [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise HepfmInputError(f"{key}: expected a mapping, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise HepfmInputError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        number = _as_int(value)
        if number is None:
            raise HepfmInputError(f"{key}: expected an integer, got {value!r}")
        return number
    if tp is float:
        try:
            real = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            real = math.nan
        if not math.isfinite(real):
            raise HepfmInputError(f"{key}: expected a finite number, got {value!r}")
        return real
    if tp is str:
        if not isinstance(value, str):
            raise HepfmInputError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _as_int(value: Any) -> int | None:
    """An integer from an int, an integral float or a numeric string (``"1e3"``); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def require(ok: bool, key: str, problem: str, value: Any) -> None:
    """Raise the one-line error ``<key> <problem>, got <value>`` unless ``ok``."""
    if not ok:
        raise HepfmInputError(f"{key} {problem}, got {value!r}")
