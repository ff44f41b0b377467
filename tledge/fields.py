"""Dataclass fields checked against their annotations, so that a library call with a wrong type (a string for a
number, a dict for thresholds) gets an ArgumentError naming the field, not a TypeError from deep inside."""
from __future__ import annotations

import dataclasses
import numbers
import os
import types
import typing
from enum import Enum
from pathlib import Path

from tledge.errors import ArgumentError


def check(obj) -> None:
    """ArgumentError for the first field whose value does not fit its annotation (unknown annotations pass)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        want, value = hints.get(f.name), getattr(obj, f.name)
        if want is not None and not fits(value, want):
            raise ArgumentError(f"{type(obj).__name__}({f.name}={value!r}): expected {_show(want)}")
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value) is not int:
            object.__setattr__(obj, f.name, int(value))  # numpy's int64 passed, then broke json.dumps and `isinstance(size, int)`


def fits(v, t) -> bool:
    origin = typing.get_origin(t)
    if t is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(fits(v, a) for a in typing.get_args(t))
    if t is type(None):
        return v is None
    if t is bool:
        return isinstance(v, bool)
    if t is int:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if t is float:
        return isinstance(v, numbers.Real) and not isinstance(v, bool)
    if t is Path:
        return isinstance(v, (str, os.PathLike))
    if isinstance(t, type) and issubclass(t, Enum):
        return isinstance(v, (t, str))  # the config turns a name into its member
    if origin is tuple:
        args = typing.get_args(t)
        if not isinstance(v, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(fits(x, args[0]) for x in v)
        return len(v) == len(args) and all(fits(x, a) for x, a in zip(v, args))
    if origin is dict:
        key, val = typing.get_args(t) or (typing.Any, typing.Any)
        return isinstance(v, dict) and all(fits(a, key) and fits(b, val) for a, b in v.items())
    if isinstance(t, type):
        return isinstance(v, t)
    return True


def _show(t) -> str:
    return getattr(t, "__name__", None) if isinstance(t, type) else str(t).replace("typing.", "")
