"""--thresholds files as every Python reads them: TOML on Python 3.10 (a Jetson's) was refused ("need Python
3.11+") although the docs say TOML or JSON; pyproject.toml now gives 3.10 tomli, which tledge falls back to."""
from __future__ import annotations

import sys

import pytest

from tledge.errors import TledgeError
from tledge.parity import load_thresholds

TOML = '[int8]\nmin_agreement = 0.9\n\n["model_fp16.tflite"]\nmax_abs = 0.5\n'


def test_toml_without_tomllib_is_read_with_tomli(tmp_path, monkeypatch):
    import tomllib

    (tmp_path / "t.toml").write_text(TOML)
    want = load_thresholds(tmp_path / "t.toml")
    monkeypatch.setitem(sys.modules, "tomllib", None)  # Python 3.10: no tomllib (import raises ImportError)
    monkeypatch.setitem(sys.modules, "tomli", tomllib)  # tomli: the same API
    got = load_thresholds(tmp_path / "t.toml")
    assert got == want and got["int8"].min_agreement == 0.9 and got["model_fp16.tflite"].max_abs == 0.5
    monkeypatch.setitem(sys.modules, "tomli", None)  # neither: one line saying what to install
    with pytest.raises(TledgeError, match="pip install tomli"):
        load_thresholds(tmp_path / "t.toml")


def test_json_thresholds_nested_deep_is_one_line(tmp_path):
    (tmp_path / "t.json").write_text('{"int8": ' + "[" * 200 + "]" * 200 + "}")
    with pytest.raises(TledgeError, match="nested too deeply"):
        load_thresholds(tmp_path / "t.json")
