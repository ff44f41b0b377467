"""Importing tledge must not change the user's process, and its pytest plugin is opt-in."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata

import pytest

from conftest import REPO


def _env_after(code: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND")}
    out = subprocess.run([sys.executable, "-c", code + "\nimport os, json; print(json.dumps(dict(os.environ)))"],
                         capture_output=True, text=True, env=env, cwd=REPO, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1]), env


def test_import_tledge_changes_no_environment_variable():
    after, before = _env_after("import tledge, tledge.runtime, tledge.contract, tledge.testing")
    assert {k: v for k, v in after.items() if before.get(k) != v} == {}


def test_import_tledge_imports_neither_tensorflow_nor_keras():
    code = "import sys, tledge, tledge.testing; print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr


def test_pytest_plugin_is_not_registered_for_every_pytest_run():
    groups = metadata.entry_points(group="pytest11")
    assert not [ep for ep in groups if ep.value.startswith("tledge")], "tledge must not auto-load into pytest"


def test_assert_parity_imports_without_pytest():
    """docs/parity-ci.md: outside pytest, `from tledge.testing import assert_parity` (pytest is a dev extra)."""
    code = ("import sys; sys.modules['pytest'] = None\nimport tledge.testing as t\n"
            "print(callable(t.assert_parity), hasattr(t, 'tledge_parity'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["True", "False"], out.stderr[-2000:]


def test_blas_threads_limits_numpy_blas_inside_the_block_only():
    """The int8 loop runs with one BLAS thread (OpenBLAS's spinning threads beside other jobs made its Gram
    products 15x slower); the user's setting comes back after it."""
    pytest.importorskip("threadpoolctl")
    from threadpoolctl import threadpool_info

    from tledge._deps import blas_threads

    def blas():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    before = blas()
    with blas_threads(1):
        assert blas() and all(n == 1 for n in blas())
    assert blas() == before


def test_no_install_line_fetches_tledge_from_pypi():
    """tledge is not on PyPI: `pip install 'tledge[runtime]'` (the README's line) installs whatever someone else
    registers under the name. Every install line in the docs, the device profiles and the messages names the
    wheel or the checkout."""
    import re
    import shlex

    from tledge.devices.profiles import PROFILES

    texts = {str(p.relative_to(REPO)): p.read_text(encoding="utf-8")
             for p in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), *sorted((REPO / "docs").rglob("*.yaml")),
                       *sorted((REPO / "docs").rglob("*.sh")), *sorted((REPO / "tledge").rglob("*.py")),
                       *sorted((REPO / "benchmarks").glob("*.py")), *sorted((REPO / "ci").glob("*"))] if p.is_file()}
    texts["profiles"] = "\n".join(line for p in PROFILES.values() for line in p.install)
    bad = []
    for name, text in texts.items():
        for cmd in re.findall(r"(?:pip3?|pipx|uv pip) install ([^\n`#]*)", text):
            try:
                words = shlex.split(cmd)
            except ValueError:
                words = cmd.split()
            if any(re.fullmatch(r"(['\"]?)tledge(\[[\w,]*\])?([<>=!~]=?[^'\"]*)?\1", w) for w in _packages(words)):
                bad.append(f"{name}: pip install {cmd.strip()}")
    assert not bad, bad


def _packages(words: list[str]) -> list[str]:
    """The words of a `pip install` line up to the prose after it (a word ending in a comma, one in brackets),
    with the closing quote and bracket of the sentence around it taken off: `'tledge[runtime]' there` and
    `(pip install 'tledge[all]')"` (quotes kept when shlex could not split the line) name tledge, `matplotlib, in
    tledge[train]` and `ai-edge-litert (tledge[runtime])` do not."""
    out = []
    for w in words:
        if w.startswith("("):
            break
        name = w.rstrip("),;")
        if not name.startswith('"'):  # the sentence's closing quote, not the name's: `'tledge[all]')"`
            name = name.rstrip('"').rstrip("),;")
        out.append(name)
        if w.endswith(","):
            break
    return out


def test_importing_tledge_io_reads_the_umask_without_setting_it():
    """Setting and restoring the umask to read it races with another thread creating files at that moment."""
    code = ("import os; os.umask(0o027); calls = []; real = os.umask\n"
            "os.umask = lambda m: (calls.append(m), real(m))[1]\n"
            "import tledge.io as t; print(calls, oct(t._UMASK))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["[]", "0o27"], (out.stdout, out.stderr[-2000:])



def test_every_module_compiles_with_warnings_as_errors():
    """`python -W error -m tledge` (or a test run with -W error) failed on an invalid escape sequence in a
    docstring (outputs.py: SyntaxError under -W error, a DeprecationWarning otherwise)."""
    import warnings

    bad = []
    for path in sorted((REPO / "tledge").rglob("*.py")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                compile(path.read_text(encoding="utf-8"), str(path), "exec")
            except (SyntaxError, SyntaxWarning, DeprecationWarning) as exc:
                bad.append(f"{path.relative_to(REPO)}: {exc}")
    assert bad == []
