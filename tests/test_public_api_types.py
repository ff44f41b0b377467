"""The public API as a type checker and a caller see it (helper 156): re-exported names the docs import were
private to mypy/pyright (a py.typed package's plain `from x import Y` re-export), the Format/Precision enums had no
members they could see, a URL with a user but no host was a TypeError, and edgetpu_compile split one string of
extra arguments into letters."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tledge

ROOT = Path(tledge.__file__).parent
# module -> the names other modules and the docs import from it (re-exports)
REEXPORTS = {"contract.py": ("ColorOrder", "Fit", "Layout", "Norm", "Output", "Quant", "Resize", "DECISION"),
             "export/pipeline.py": ("ExportConfig", "ExportResult"),
             "export/parity.py": ("Thresholds", "ParityReport", "load_thresholds"),
             "parity.py": ("Thresholds", "DEFAULT_THRESHOLDS"),
             "runtime/sources.py": ("Frame", "Source")}


@pytest.mark.parametrize("module", sorted(REEXPORTS))
def test_reexports_are_explicit(module):
    """`from a import X as X` (or __all__): what PEP 484 and pyright take as a public re-export."""
    tree = ast.parse((ROOT / module).read_text())
    explicit = {a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for a in node.names
                if a.asname == a.name}
    listed = {e.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
              for t in node.targets if getattr(t, "id", None) == "__all__" for e in node.value.elts}
    missing = [n for n in REEXPORTS[module] if n not in explicit | listed]
    assert not missing, missing


def test_the_device_enums_are_classes_with_members():
    from tledge.artifacts import KINDS, PRECISIONS
    from tledge.devices import Format, Precision

    tree = ast.parse((ROOT / "devices" / "profiles.py").read_text())
    classes = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    assert {"Format", "Precision"} <= classes  # (Enum("Format", {...}) has no members a type checker sees)
    assert [f.value for f in Format] == list(KINDS) and [p.value for p in Precision] == list(PRECISIONS)


def test_a_url_with_a_user_and_no_host_is_one_line():
    from tledge.errors import TledgeError
    from tledge.runtime.sources import open_source

    with pytest.raises(TledgeError, match="no host"):
        open_source("http://user:pw@/snap.jpg")


def test_edgetpu_compile_refuses_one_string_of_arguments(tmp_path):
    from tledge.devices import edgetpu_compile
    from tledge.errors import TledgeError

    src = tmp_path / "model_int8.tflite"
    src.write_bytes(b"0000TFL3")
    with pytest.raises(TledgeError, match="a list of arguments, not one string"):
        edgetpu_compile(src, extra_args="--timeout_sec=60")
    assert "--timeout_sec=60" in edgetpu_compile(src, extra_args=["--timeout_sec=60"]).command_line
