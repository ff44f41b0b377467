"""The runtime's package compiles on every Python the README names for it (3.10-3.13) that this machine has: a
docstring 3.13 refused (a lone surrogate) stopped `tledge run` there, and CI runs 3.11 only. Compiling needs no
dependency, so every interpreter found is used; none found: skipped."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import tledge

ROOT = Path(tledge.__file__).parent
RUNTIME_PYTHONS = ("3.10", "3.11", "3.12", "3.13")


def _interpreters() -> dict[str, str]:
    found = {}
    for v in RUNTIME_PYTHONS:
        candidates = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{v}*/bin/python")))
        candidates += [shutil.which(f"python{v}")]  # (a pyenv shim of a version not selected fails: tried, not taken)
        exe = next((c for c in candidates if c and subprocess.run([c, "-c", "pass"], capture_output=True,
                                                                  timeout=60).returncode == 0), None)
        if exe:
            found[v] = exe
    return found


@pytest.mark.parametrize("version", RUNTIME_PYTHONS)
def test_the_package_compiles_on_each_runtime_python(version, tmp_path):
    exe = _interpreters().get(version)
    if exe is None:
        pytest.skip(f"no Python {version} here")
    r = subprocess.run([exe, "-m", "compileall", "-q", str(ROOT)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPYCACHEPREFIX": str(tmp_path)})  # (nothing written beside the code)
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
