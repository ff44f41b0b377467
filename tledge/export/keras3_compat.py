"""`.keras` archives older Keras 3 releases wrote that Keras 3.15 cannot load as they are.

Keras 3.0-3.8 wrote a nested functional model's one input and one output as lists of one reference
(`"input_layers": [["input_layer_3", 0, 0]]`); 3.15 writes the reference itself and, reading the old form inside a
Sequential (`Sequential([Input, Rescaling, MobileNet(...), GlobalAveragePooling2D, Dense])`, the usual transfer-
learning layout), fails: 'Layer "dense_1" expects 1 input(s), but it received 2 input tensors' (keras-team/keras
#20084). The references are rewritten in the parsed config (nothing else changes) and the archive loaded again from
a temporary copy; the weights file is the original's.
"""
from __future__ import annotations

import copy
import tempfile
import zipfile
from pathlib import Path
from typing import Any


def is_ref(x: Any) -> bool:
    return isinstance(x, list) and len(x) == 3 and isinstance(x[0], str) and \
        all(isinstance(v, int) and not isinstance(v, bool) for v in x[1:])


def single_ends(config: Any) -> tuple[Any, int]:
    """A copy of `config` with every nested functional model's one-reference `input_layers` / `output_layers`
    lists written as the reference, and how many were rewritten."""
    out, count = copy.deepcopy(config), 0

    def visit(node: Any, top: bool) -> None:
        nonlocal count
        if isinstance(node, list):
            for item in node:
                visit(item, False)
            return
        if not isinstance(node, dict):
            return
        cfg = node.get("config")
        if node.get("class_name") == "Functional" and isinstance(cfg, dict) and not top:
            for key in ("input_layers", "output_layers"):
                ends = cfg.get(key)
                if isinstance(ends, list) and len(ends) == 1 and is_ref(ends[0]):
                    cfg[key], count = ends[0], count + 1
        for value in node.values():
            visit(value, False)
    visit(out, True)
    return out, count


def load_fixed(path: Path, config: dict, load) -> tuple[Any, str] | None:
    """(model, note) from `path` with single_ends applied, loaded by `load(archive_path)`; None when nothing needs
    rewriting (the caller reports its first error)."""
    import json

    fixed, count = single_ends(config)
    if not count:
        return None
    with tempfile.TemporaryDirectory(prefix="tledge-keras-") as d:
        copy_path = Path(d) / "model.keras"
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(copy_path, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                data = json.dumps(fixed).encode() if info.filename == "config.json" else src.read(info)
                dst.writestr(info.filename, data)
        model = load(copy_path)
    return model, (f"an older Keras 3 archive: {count} nested model end reference{'s' if count > 1 else ''} "
                   "rewritten as Keras 3.15 writes them (keras-team/keras#20084)")
