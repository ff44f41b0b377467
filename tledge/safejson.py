"""JSON that tledge reads from files and the environment (contracts, manifests, golden files, thresholds, checkpoint
state, TF_CONFIG), parsed with a depth limit that is the same on every Python. Imports nothing of tledge."""
from __future__ import annotations

import json

MAX_JSON_DEPTH = 64  # tledge's JSON (contract, manifest, golden, TF_CONFIG) nests under 10 levels


class NestedTooDeeply(ValueError):
    """JSON nested deeper than MAX_JSON_DEPTH."""


def loads_json(text: str | bytes, max_depth: int = MAX_JSON_DEPTH, *, unique: bool = False, numbers_only: bool = False):
    """json.loads, refusing nesting deeper than `max_depth` (NestedTooDeeply, a ValueError): Python 3.13's json
    parses thousands of levels that 3.11's refused, and code walking the result (dataclasses.asdict) then recursed
    into a RecursionError traceback. The depth is measured without recursion. `unique`: a key twice in one object
    is a ValueError (json keeps the last one silently; TOML refuses it). NaN and Infinity are read as null, or with
    `numbers_only` refused (a ValueError): in a thresholds file null switches a check off."""
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys if unique else None,
                           parse_constant=_refuse_constant if numbers_only else _no_number)
    except RecursionError:
        raise NestedTooDeeply("nested too deeply") from None
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > max_depth:
                raise NestedTooDeeply("nested too deeply")
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
    return value


def _no_number(name: str) -> None:
    """NaN, Infinity and -Infinity, which JSON has not (Python's json.dump writes them): read as null, so that what
    tledge writes back (an exported tledge.json, a bundle's manifest, `info --json`) is JSON a strict parser reads."""
    return None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is no number JSON has")


def finite(v):
    """`v` (JSON values) with every non-finite float as None, for writing JSON that has no NaN or Infinity."""
    if isinstance(v, float):
        return v if v == v and v not in (float("inf"), float("-inf")) else None
    if isinstance(v, dict):
        return {k: finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [finite(x) for x in v]
    return v


def _unique_keys(pairs: list) -> dict:
    seen: dict = {}
    for k, v in pairs:
        if k in seen:
            raise ValueError(f"the key {k[:60]!r} is given twice in one object")
        seen[k] = v
    return seen


# the kinds of JSON value a file's field may be, and how a message names each
KIND_WORDS = {"int": "an integer", "number": "a number", "bool": "true or false", "strings": "a list of strings",
              "numbers": "a list of numbers", "object": "a JSON object", "string": "a string"}


def is_kind(value, kind: str) -> bool:
    """Whether a parsed JSON value is of `kind` (a key of KIND_WORDS); true and false are not numbers."""
    if kind in ("strings", "numbers"):
        return isinstance(value, list) and all(is_kind(v, kind[:-1] if kind == "strings" else "number") for v in value)
    return {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "bool": lambda v: isinstance(v, bool), "string": lambda v: isinstance(v, str),
            "object": lambda v: isinstance(v, dict)}[kind](value)
