"""tledge.quant as one library: every registry entry names a module that imports, and no module of the
package imports tledge.export (the export loop orchestrates the techniques, never the other way round)."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import tledge.quant
from tledge.quant.registry import TECHNIQUES


def test_every_technique_names_an_importable_module():
    for t in TECHNIQUES.values():
        if t.module:
            importlib.import_module(f"tledge.quant.{t.module}")
    assert {"float-constant-adds", "pixel-grid", "kernel-robust-scheme"} <= set(TECHNIQUES)


def test_the_quant_package_never_imports_the_export_package():
    offenders = []
    for path in sorted(Path(tledge.quant.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n == "tledge.export" or n.startswith("tledge.export.")]
    assert not offenders, offenders
