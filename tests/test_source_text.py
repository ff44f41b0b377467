"""Every string in tledge's source is UTF-8 text: a docstring holding a lone surrogate (`\\udce9` written without its
backslash escaped) stopped `tledge.runtime.outputs` importing on Python 3.13, which compiles docstrings as UTF-8 and
refuses surrogates: `tledge run` crashed on every input there, while the README says the runtime runs on 3.10-3.13."""
from __future__ import annotations

import ast
from pathlib import Path

import tledge

ROOT = Path(tledge.__file__).parent


def test_no_string_constant_holds_a_surrogate():
    bad = []
    for f in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                try:
                    node.value.encode("utf-8")
                except UnicodeEncodeError:
                    bad.append(f"{f.relative_to(ROOT)}:{node.lineno}")
    assert not bad, bad
