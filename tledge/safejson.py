"""JSON that tledge reads from files and the environment (contracts, manifests, golden files, thresholds, checkpoint
state, TF_CONFIG), parsed with a depth limit that is the same on every Python. Imports nothing of tledge."""
from __future__ import annotations

import json

MAX_JSON_DEPTH = 64  # tledge's JSON (contract, manifest, golden, TF_CONFIG) nests under 10 levels


class NestedTooDeeply(ValueError):
    """JSON nested deeper than MAX_JSON_DEPTH."""


def loads_json(text: str | bytes, max_depth: int = MAX_JSON_DEPTH):
    """json.loads, refusing nesting deeper than `max_depth` (NestedTooDeeply, a ValueError): Python 3.13's json
    parses thousands of levels that 3.11's refused, and code walking the result (dataclasses.asdict) then recursed
    into a RecursionError traceback. The depth is measured without recursion."""
    try:
        value = json.loads(text)
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
