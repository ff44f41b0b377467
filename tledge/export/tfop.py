"""tf_keras TFOpLambda layers of plain arithmetic with a number, read as Keras 3 Rescaling layers.

tf_keras records `x + 3.0`, `x * (1 / 6)`, `x / 127.5`, `x - 1.0` written between Keras layers as
TFOpLambda layers naming a TensorFlow function (`__operators__.add`, `math.multiply`, ...). Its own
MobileNetV3 (hard-sigmoid: ReLU6(x + 3) * 1/6) and the TensorFlow tutorials' `preprocess_input` inside
the model are made of them. A TFOpLambda is code as far as the config walk is concerned (it may name any
TensorFlow function), so such files were refused in safe mode.

`rewrite()` replaces, in a copy of the PARSED config, each TFOpLambda whose function is in `ARITHMETIC`,
called once on one tensor with one finite number `y` (and nothing else but `name`), by the Rescaling
layer computing the same `x * scale + offset`. Anything else stays a TFOpLambda, which the walk refuses
as before. The whitelisted functions are elementwise arithmetic: tf_keras loading the original file (the
last-resort loader) runs nothing else either.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Arithmetic:
    spelling: str  # what the note says
    scale_offset: Callable[[float], tuple[float, float]]  # y -> (scale, offset) of x op y


# TensorFlow function named in the file (TFOpLambda config "function") -> x op y as a Rescaling
ARITHMETIC: dict[str, Arithmetic] = {
    "__operators__.add": Arithmetic("x + c", lambda y: (1.0, y)),
    "math.add": Arithmetic("x + c", lambda y: (1.0, y)),
    "math.subtract": Arithmetic("x - c", lambda y: (1.0, -y)),
    "math.multiply": Arithmetic("x * c", lambda y: (y, 0.0)),
    "math.truediv": Arithmetic("x / c", lambda y: (1.0 / y, 0.0)),
    "math.divide": Arithmetic("x / c", lambda y: (1.0 / y, 0.0)),
}
_KWARGS = frozenset({"y", "name"})


def rewrite(config: dict) -> tuple[dict, dict[str, int]]:
    """(a copy of `config` with the whitelisted TFOpLambda layers as Rescaling, {spelling: count})."""
    out = copy.deepcopy(config)
    counts: dict[str, int] = {}
    _walk(out, counts)
    return out, counts


def describe(counts: dict[str, int]) -> str:
    parts = ", ".join(f"{k} x{n}" for k, n in sorted(counts.items()))
    return f"tf_keras TFOpLambda arithmetic read as Rescaling layers ({parts})"


def _walk(node: Any, counts: dict[str, int]) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, counts)
        return
    if not isinstance(node, dict):
        return
    if node.get("class_name") == "TFOpLambda":
        _layer(node, counts)
        return
    for value in node.values():
        _walk(value, counts)


def _layer(node: dict, counts: dict[str, int]) -> None:
    cfg = node.get("config")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("function"), str):
        return
    op = ARITHMETIC.get(cfg["function"])
    call = _single_call(node.get("inbound_nodes"))
    if op is None or call is None or cfg.get("dtype", "float32") != "float32":
        return
    source, y = call
    try:
        scale, offset = op.scale_offset(y)
    except ZeroDivisionError:
        return
    if not (math.isfinite(scale) and math.isfinite(offset)):
        return
    name = cfg.get("name")
    if not isinstance(name, str):
        return
    node.clear()
    node.update({"class_name": "Rescaling",
                 "config": {"name": name, "trainable": False, "dtype": "float32", "scale": scale, "offset": offset},
                 "name": name, "inbound_nodes": [[[*source, {}]]]})
    counts[op.spelling] = counts.get(op.spelling, 0) + 1


def _single_call(nodes: Any) -> tuple[list, float] | None:
    """([layer, node index, tensor index], y) of a TFOpLambda's Keras 2 node list holding one call on one
    tensor. tf_keras writes a TFOpLambda's call as its first argument's reference with the other
    arguments as kwargs, one level less deep than other layers' nodes: [[name, node, tensor, {"y": 3.0}]]."""
    if not (isinstance(nodes, list) and len(nodes) == 1):
        return None
    ref = nodes[0]
    if not (isinstance(ref, list) and len(ref) == 4 and isinstance(ref[0], str)
            and all(isinstance(i, int) and not isinstance(i, bool) for i in ref[1:3]) and isinstance(ref[3], dict)):
        return None
    kwargs = ref[3]
    y = kwargs.get("y")
    if set(kwargs) - _KWARGS or kwargs.get("name") is not None:
        return None
    if isinstance(y, bool) or not isinstance(y, (int, float)) or not math.isfinite(y):
        return None
    return ref[:3], float(y)
