"""What the fidelity loop says about the file it ships: the kept rung's row and note carry its batch-1 latency against
the plain int8 file it replaced and the fp32 file, measured in turns (committed tiny files, no converter)."""
from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from tiny import TINY

from tledge.export import shipped
from tledge.export.parity import check_files


@pytest.mark.parametrize("kind", ["tflite", "onnx"])
def test_the_kept_file_is_timed_against_the_plain_and_fp32_files(tmp_path, kind):
    for name in (f"model_int8.{kind}", f"model_fp32.{kind}"):
        shutil.copy(TINY / name, tmp_path / name)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 3), dtype=np.uint8)  # the tiny files' input
    ref = np.full((4, 2), 0.5, np.float32)
    plain = check_files(ref, [(tmp_path / f"model_int8.{kind}", kind, "int8")], pixels)[0]
    outcome = SimpleNamespace(attempts=[{"file": plain.file, "rung": "plain"}, {"file": plain.file, "rung": "r"}],
                              notes=[])
    ctx = SimpleNamespace(out=tmp_path, val_x=pixels, threads=1)
    shipped.note(plain, plain, "r", None, outcome, ctx, (TINY / f"model_int8.{kind}").read_bytes())
    row = outcome.attempts[1]
    assert row["kept"] and set(row["latency_in_turns_ms"]) == {"kept", "plain", "fp32"}, row
    assert all(0 < v < 1000 for v in row["latency_in_turns_ms"].values()), row
    assert "x the plain file's" in outcome.notes[0] and "x the fp32 file's" in outcome.notes[0], outcome.notes
    (tmp_path / f"model_fp32.{kind}").unlink()  # no fp32 file (--formats without it): kept against plain only
    shipped.note(plain, plain, "r", None, outcome, ctx, (TINY / f"model_int8.{kind}").read_bytes())
    assert set(row["latency_in_turns_ms"]) == {"kept", "plain"} and "fp32" not in outcome.notes[1]
    shipped.note(plain, plain, "plain", None, outcome, ctx, b"")  # the plain file ships: nothing to compare
    assert "latency" not in outcome.notes[2] and outcome.attempts[0]["kept"] and "latency_in_turns_ms" not in \
        outcome.attempts[0]
