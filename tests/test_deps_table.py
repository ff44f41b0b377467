"""tledge._deps names the pip package and extra that fix a missing import: one table, checked against pyproject.toml
(it sent OpenCV users to the [runtime] extra, though OpenCV is a core dependency)."""
from __future__ import annotations

import re
import tomllib

from conftest import REPO

from tledge import _deps


def _names(requirements) -> set[str]:
    return {re.split(r"[<>=!;\[ ]", r.strip(), maxsplit=1)[0].lower() for r in requirements}


def test_every_known_package_is_in_the_extra_it_names():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = {k: _names(v) for k, v in project["optional-dependencies"].items()}
    core = _names(project["dependencies"])
    for module, (pip_name, extra) in _deps._KNOWN.items():
        name = pip_name.split()[0].lower()
        if extra == "":  # in no extra (tflite-runtime: an alternative interpreter)
            assert all(name not in v for v in extras.values()) and name not in core, module
            continue
        where = core if extra is None else extras[extra]
        assert name in where, f"{module}: {name} is not in {'the core' if extra is None else f'[{extra}]'}"
