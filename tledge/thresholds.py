"""Parity thresholds files (TOML or JSON, keyed by precision or file name), read and checked: what `tledge parity
--thresholds` and `tledge export --thresholds` take. The defaults are the file table's (tledge.artifacts)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tledge._deps import require
from tledge.artifacts import DEFAULT_THRESHOLDS, THRESHOLD_FIELDS, Thresholds, precision_in_name
from tledge.errors import TledgeError
from tledge.safejson import loads_json


def load_thresholds(path: str | Path) -> dict[str, Thresholds]:
    """A JSON or TOML file: {"int8": {"min_agreement": 0.97}, "model_int8.onnx": {...}} (keys are
    precisions or file names; values override the defaults). Raises TledgeError (exit 2) naming the
    file for a missing or unreadable file, bad syntax, a wrong shape, unknown fields or bad values."""
    p = Path(path)
    if not p.is_file():
        raise TledgeError(f"--thresholds {p} is a folder; expected a JSON or TOML file" if p.is_dir() else
                          f"--thresholds {p} is not a regular file (a pipe or device?); expected a JSON or TOML file"
                          if p.exists() else f"--thresholds {p}: file not found")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TledgeError(f"--thresholds {p}: cannot read it ({exc.__class__.__name__}: {exc})") from None
    raw = _parse_thresholds_text(p, text)
    if raw == {}:  # with --golden it replaced the export's own thresholds by the defaults, silently
        raise TledgeError(f"--thresholds {p}: the file sets no thresholds (empty); give a table per precision or "
                          "file name, or leave --thresholds out")
    try:
        return thresholds_from_dict(raw)
    except TledgeError as exc:
        raise TledgeError(f"--thresholds {p}: {exc}") from None


def _parse_thresholds_text(p: Path, text: str) -> dict:
    if p.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10 (a Jetson's): tomli, a dependency there (pyproject.toml)
            tomllib = require("tomli", purpose=f"--thresholds {p} on Python 3.10 (or use a .json file)")
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise TledgeError(f"--thresholds {p}: not valid TOML ({exc})") from None
        except RecursionError:
            raise TledgeError(f"--thresholds {p}: not valid TOML (nested too deeply)") from None
    try:
        return loads_json(text, unique=True, numbers_only=True)  # (NaN as null switched the check off)
    except ValueError as exc:  # (JSONDecodeError, or nested too deeply)
        raise TledgeError(f"--thresholds {p}: not valid JSON ({exc}); TOML files need a .toml name") from None


_RANGES = {"max_abs": (0.0, None), "min_agreement": (0.0, 1.0), "max_accuracy_drop": (0.0, 1.0),
           "many_classes": (2, None), "top_k": (1, None), "min_topk_agreement": (0.0, 1.0),
           "significance": (0.0, 1.0)}


def _check_value(key: str, name: str, value) -> None:
    if value is None and name not in ("min_agreement", "many_classes", "top_k", "min_topk_agreement"):
        # None switches a check off
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TledgeError(f"{key}.{name} must be a number, got {value!r}")
    if name in ("many_classes", "top_k") and not isinstance(value, int):  # top_k 1.5 checked top-2 as "top-1.5"
        raise TledgeError(f"{key}.{name} must be a whole number, got {value!r}")
    lo, hi = _RANGES[name]
    if not (value >= lo and (hi is None or value <= hi)):  # also refuses NaN
        raise TledgeError(f"{key}.{name} must be in [{lo:g}, {'inf' if hi is None else f'{hi:g}'}], got {value!r}")


def thresholds_from_dict(raw: dict) -> dict[str, Thresholds]:
    """{"int8": {"min_agreement": 0.97}, "model_int8.onnx": {...}} -> Thresholds per key. A key that
    is a file name (model_<precision>.<ext>) starts from its precision's defaults. Raises TledgeError
    for a wrong shape, unknown fields and out-of-range values."""
    if isinstance(raw, Thresholds):
        raise TledgeError("thresholds is a table of precision or file name -> Thresholds, e.g. {'int8': "
                          "Thresholds(min_agreement=0.97)}, got one Thresholds")
    if not isinstance(raw, dict):
        raise TledgeError(f"thresholds must be a table of precision or file name -> fields, got "
                          f"{type(raw).__name__}")
    out = {}
    for key, vals in raw.items():
        if isinstance(vals, Thresholds):  # its fields checked as a table's are ("0.5" failed inside stats)
            for name in THRESHOLD_FIELDS:
                _check_value(key, name, getattr(vals, name))
            out[key] = vals
            continue
        if not isinstance(vals, dict):
            raise TledgeError(f"thresholds for {key!r} must be a table of fields "
                              f"({', '.join(THRESHOLD_FIELDS)}), got {vals!r}")
        unknown = set(vals) - set(THRESHOLD_FIELDS)
        if unknown:
            raise TledgeError(f"thresholds for {key!r}: unknown field(s) {sorted(unknown)}; "
                              f"known: {', '.join(THRESHOLD_FIELDS)}")
        for name, value in vals.items():
            _check_value(key, name, value)
        if "/" in key or "\\" in key:  # files are matched by name: a path never matched, and the check stayed off
            raise TledgeError(f"thresholds key {key!r} is a path: name the exported file alone "
                              f"({key.replace(chr(92), '/').rsplit('/', 1)[-1]!r})")
        if key not in DEFAULT_THRESHOLDS and Path(key).suffix.lower() not in (".tflite", ".onnx"):
            raise TledgeError(f"thresholds key {key!r} is neither a precision ({', '.join(DEFAULT_THRESHOLDS)}) nor "
                              "an exported file's name (.tflite, .onnx)")
        base = DEFAULT_THRESHOLDS.get(key) or DEFAULT_THRESHOLDS.get(precision_in_name(key) or "", Thresholds())
        out[key] = replace(base, **vals, given=frozenset(vals))
    return out
