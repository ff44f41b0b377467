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


def test_an_int8_file_slower_than_fp32_is_said_only_when_timed_in_turns(tmp_path, monkeypatch):
    """Parity's rows say int8 is 10x fp32 (rows timed one after the other): the note waits for the files timed in
    turns, and says so only when that confirms it."""
    import os

    from tledge.export import speed
    from tledge.parity import ParityResult

    for name in ("model_int8.tflite", "model_fp32.tflite"):
        shutil.copy(TINY / name, tmp_path / name)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)

    def row(name, ms):
        return ParityResult(name, "tflite", name[6:10], 2, 0.0, 0.0, 0.0, 1.0, None, None, True, latency_ms=ms)
    rows = [row("model_int8.tflite", 10.0), row("model_fp32.tflite", 1.0)]
    calls = []

    def timed(files, *args, **kwargs):
        calls.append(sorted(files))
        return {"int8": 4.0, "fp32": 1.0}
    monkeypatch.setattr(speed, "latencies_in_turns", timed)
    notes = speed.slower_int8(rows, tmp_path, pixels)
    assert calls == [["fp32", "int8"]] and len(notes) == 1 and notes[0].startswith(
        "model_int8.tflite runs 4.00x model_fp32.tflite's batch-1 latency"), notes
    monkeypatch.setattr(speed, "latencies_in_turns", lambda *a, **k: {"int8": 1.1, "fp32": 1.0})
    assert speed.slower_int8(rows, tmp_path, pixels) == []  # in turns it is not slower: no note
    calls.clear()
    monkeypatch.setattr(speed, "latencies_in_turns", timed)
    assert speed.slower_int8([row("model_int8.tflite", 1.2), rows[1]], tmp_path, pixels) == [] and calls == []
    calls.clear()  # the int8 loop timed the kept file against fp32 in turns already: those figures, no second run
    kept = [{"file": "model_int8.tflite", "rung": "r", "kept": True, "latency_in_turns_ms": {"kept": 3.0, "plain": 3.0,
                                                                                          "fp32": 1.0}}]
    notes = speed.slower_int8([row("model_int8.tflite", 1.0), rows[1]], tmp_path, pixels, fidelity=kept)
    assert calls == [] and len(notes) == 1 and "3.00x" in notes[0], notes
    note = speed.machine_note(2)
    assert f"{os.cpu_count()} cores" in note and "rows on 2 threads" in note and "in turns on 1" in note, note
    note = speed.machine_note(None, loop=False)  # no int8 loop ran: parity's rows only, no loop to speak of
    assert note.startswith("batch-1 latency (parity's rows) measured on ") and "loop" not in note, note


def test_files_are_compared_on_one_thread_whatever_the_export_runs_on(tmp_path, monkeypatch):
    """The comparisons in turns load every file on TURN_THREADS (1): with as many threads as cores, another process
    on one core made the ratio of the same two files wander 0.63-1.04; the export's own --threads do not reach it."""
    from tledge import runtime
    from tledge.export.parity import TURN_THREADS, latencies_in_turns

    shutil.copy(TINY / "model_int8.tflite", tmp_path / "model_int8.tflite")
    pixels = np.random.default_rng(0).integers(0, 256, (1, 48, 48, 3), dtype=np.uint8)
    ctx = SimpleNamespace(out=tmp_path, val_x=pixels, threads=4)
    plain = check_files(np.full((1, 2), 0.5, np.float32), [(tmp_path / "model_int8.tflite", "tflite", "int8")],
                        pixels)[0]
    threads, load = [], runtime.load

    def spy(path, **kwargs):
        threads.append(kwargs.get("threads"))
        return load(path, **kwargs)
    monkeypatch.setattr(runtime, "load", spy)
    outcome = SimpleNamespace(attempts=[{"file": plain.file, "rung": "r"}], notes=[])
    shipped.note(plain, plain, "r", None, outcome, ctx, (TINY / "model_int8.tflite").read_bytes())
    assert TURN_THREADS == 1 and threads == [1, 1], threads
    assert "(in turns, 1 thread)" in outcome.notes[0], outcome.notes
    ms = latencies_in_turns({"a": tmp_path / "model_int8.tflite"}, pixels, suffix=".tflite", rounds=1, runs=2)
    assert threads[-1] == 1 and 0 < ms["a"] < 1000
