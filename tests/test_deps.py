"""tledge._deps.require: a package that is missing, and one whose start-up was interrupted (Ctrl-C while
TensorFlow imports surfaced as "keras is not installed ... initialization failed", exit 2 instead of 130)."""
from __future__ import annotations

import sys

import pytest

from tledge._deps import require
from tledge.errors import MissingDependency


def _module(tmp_path, monkeypatch, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_interrupted_import_is_an_interrupt(tmp_path, monkeypatch):
    _module(tmp_path, monkeypatch, "tledge_probe_interrupted",
            "try:\n    raise KeyboardInterrupt\nexcept KeyboardInterrupt as e:\n"
            "    raise ImportError('initialization failed') from e\n")
    with pytest.raises(KeyboardInterrupt):
        require("tledge_probe_interrupted")


def test_failed_import_is_a_missing_dependency(tmp_path, monkeypatch):
    _module(tmp_path, monkeypatch, "tledge_probe_broken", "raise ImportError('libfoo.so: cannot open')\n")
    with pytest.raises(MissingDependency, match="tledge_probe_broken is installed but does not import: libfoo.so: "
                                                "cannot open .*force-reinstall tledge_probe_broken"):
        require("tledge_probe_broken")
    with pytest.raises(MissingDependency, match="tledge_probe_absent is not installed"):
        require("tledge_probe_absent")
