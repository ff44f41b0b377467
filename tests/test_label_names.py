"""Class names travel from folder names into labels.txt, the TFLite metadata's label file (MediaPipe), ONNX metadata,
`tledge run`'s CSV / JSON and a labels file read back. Names that cannot make that trip are refused where they
enter (train, export's --val folders), and what tledge writes is read back as written."""
from __future__ import annotations

import json
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

from tledge.cli import main
from tledge.errors import ContractError, DataError, TledgeWarning
from tledge.labels import name_problem, read_labels


def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = b"".join(b"\x00" + bytes([value]) * (3 * 8) for _ in range(8))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _dataset(root: Path, names) -> Path:
    for name in names:
        for i in range(2):
            _png(root / name / f"{i}.png", zlib.crc32(f"{root.name}/{name}/{i}".encode()) % 256)
    return root


@pytest.mark.parametrize("name", ["line\nbreak", "ants\r", "nel\x85y", "sep\u2028x", "par\u2029x", "ff\x0cz",
                                  "esc\x1b[2K\rFAKE", "del\x7f", " lead", "ant ", "tab\t", "abeill\udce9"])
def test_names_that_cannot_be_a_line_of_a_labels_file_are_named(name):
    assert name_problem(name) is not None


@pytest.mark.parametrize("name", ["ants", "1 star", "a;b,c", "café", "cafe\u0301", "\U0001f41d", "نحل", "-dash",
                                  "x" * 200, "two  spaces"])
def test_ordinary_awkward_names_are_fine(name):
    assert name_problem(name) is None


def test_train_refuses_a_class_folder_with_a_line_break_before_loading_anything(tmp_path, capsys):
    """Folders made by a CRLF shell script (`ants\\r`) trained, and MediaPipe then named the classes differently
    from tledge run; `line\\nbreak` gave the TFLite file more labels than outputs (MediaPipe refused it)."""
    data = _dataset(tmp_path / "d", ["ants\r", "bees\r", "line\nbreak"])
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--size", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot be labels" in err and "'ants\\r'" in err and "U+000D" in err
    assert not (tmp_path / "run").exists()


def test_export_refuses_val_folders_that_would_become_bad_labels(tmp_path, capsys):
    """A model without labels takes its --val folder names when there is one per output; the check tledge train
    makes applies to them then, and only then (two calibration folders of a 1000-class model name nothing)."""
    from types import SimpleNamespace

    from tledge.cli.export_labels import export_labels
    from tledge.export.contracting import labels_for
    from tledge.export.pipeline import ExportConfig

    data = _dataset(tmp_path / "v", ["ok", "bad\x1b[2K"])
    cfg = ExportConfig(val=str(data))
    with pytest.raises(DataError, match=r"cannot be labels: a control character .*U\+001B"):
        labels_for(cfg, SimpleNamespace(contract=None, num_outputs=2))
    assert labels_for(cfg, SimpleNamespace(contract=None, num_outputs=1000)) == ()
    notes = []  # said before loading, with the escape code shown, not sent to the terminal
    assert export_labels(tmp_path / "m.keras", None, {"--val": str(data)}, note=notes.append) is None
    assert len(notes) == 1 and "\x1b" not in notes[0] and "bad" in notes[0]


def test_numbered_class_names_are_read_back_as_written(tmp_path):
    """Classes `1 star`, `2 stars`, `3 stars` came back from their own labels.txt as `star`, `stars`, `stars`:
    only 0, 1, 2, ... (Teachable Machine, Coral) is an index column."""
    p = tmp_path / "labels.txt"
    p.write_text("1 star\n2 stars\n3 stars\n", encoding="utf-8")
    assert read_labels(p) == ("1 star", "2 stars", "3 stars")
    p.write_text("0 cat\n1 dog\n", encoding="utf-8")
    assert read_labels(p) == ("cat", "dog") and read_labels(p, numbered=False) == ("0 cat", "1 dog")
    p.write_text("0 stars\n1 star\n2 stars\n", encoding="utf-8")  # numbers off: two classes `stars`
    assert read_labels(p) == ("0 stars", "1 star", "2 stars")
    names = [f"bird {i}" for i in range(40)] + ["crane", "crane"]  # a numbered list with one shared name: numbers off
    p.write_text("".join(f"{i}  {n}\n" for i, n in enumerate(names)), encoding="utf-8")
    assert read_labels(p) == tuple(names)


def test_a_train_run_with_numbered_names_exports_with_its_own_labels_txt(tmp_path):
    """train writes `0 ants` / `1 bees` to tledge.json and labels.txt; the latter reads as Teachable Machine's
    `ants` / `bees`: the two are the same labels, not an edited file."""
    from tledge.cli.export_labels import export_labels
    from tledge.contract import Contract

    run = tmp_path / "run"
    run.mkdir()
    Contract(8, 8, labels=("0 ants", "1 bees")).save(run / "tledge.json")
    (run / "labels.txt").write_text("0 ants\n1 bees\n", encoding="utf-8")
    assert export_labels(run / "model.keras", None, {}, lambda note: None) is None


@pytest.mark.parametrize("text", ["bees\x00zero\nants\n", "ants\nbe\x1b[31mes\n", "ants\n0\tbees\n"])
def test_a_labels_txt_with_control_characters_is_refused(tmp_path, text):
    """MediaPipe cut `bees<NUL>zero` to `bees`; an escape code reached terminals. JSON labels and folder names were
    checked, text files not."""
    p = tmp_path / "labels.txt"
    p.write_bytes(text.encode())
    with pytest.raises(ContractError, match=r"line [12] .*control character"):
        read_labels(p)


def test_duplicate_labels_are_named_by_the_file_s_own_line_numbers(tmp_path):
    from tledge.export.contracting import labels_for
    from tledge.export.pipeline import ExportConfig

    p = tmp_path / "dup.txt"
    p.write_text("\n\nZebra\nZebra\n", encoding="utf-8")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert labels_for(ExportConfig(labels=str(p)), None) == ("Zebra", "Zebra")
    said = [str(w.message) for w in seen if issubclass(w.category, TledgeWarning)]
    assert len(said) == 1 and "'Zebra' on lines 3 and 4" in said[0]
    j = tmp_path / "index.json"  # one line: entries, not lines; every shared name, not the first only
    j.write_text(json.dumps(["tench", "crane", "tench", "crane", "kite", "crane"]), encoding="utf-8")
    with pytest.warns(TledgeWarning, match=r"'tench' on entries 0 and 2; 'crane' on entries 1 and 3 and 5\)"):
        labels_for(ExportConfig(labels=str(j)), None)


def test_json_lines_stay_one_line_whatever_a_label_holds():
    """U+2028 / U+0085 in a label (a file made elsewhere) split one JSON line in two for str.splitlines()."""
    from tledge.runtime.outputs import json_line
    from tledge.runtime import Prediction
    from tledge.runtime.pipeline import Result

    label = "sep\u2028x nel\x85y par\u2029z"
    r = Result(source="a.jpg", index=0, status="ok", top=[Prediction(0, label, 0.5)], latency_ms=1.0)
    text = json_line(r)
    assert len(text.splitlines()) == 1 and json.loads(text)["top"][0]["label"] == label


def test_validation_folders_are_matched_not_checked_as_labels(tmp_path):
    """`val/ants ` (a trailing space) matches the class `ants` as export's matching does; it was refused as a
    label it never becomes."""
    from tledge.train.data import plan

    _dataset(tmp_path / "d" / "train", ["ants", "bees"])
    _dataset(tmp_path / "d" / "val", ["ants ", "Bees"])
    assert plan(tmp_path / "d").classes == ("ants", "bees")


def test_a_numbered_labels_file_keeps_its_numbers_when_the_class_folders_have_them(tmp_path):
    """tledge train on folders `0 ants`, `1 bees` writes labels.txt `0 ants` / `1 bees`, Teachable Machine's form:
    exported with that labels.txt and --calib on those folders, the model's labels became `ants`, `bees`."""
    import cv2

    from tledge.export.contracting import labels_for
    from tledge.export.pipeline import ExportConfig

    data = tmp_path / "numbered"
    for c in ("0 ants", "1 bees"):
        (data / c).mkdir(parents=True)
        cv2.imwrite(str(data / c / "a.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "labels.txt").write_text("0 ants\n1 bees\n")
    assert labels_for(ExportConfig(labels=str(tmp_path / "labels.txt"), calib=str(data)), None) == ("0 ants", "1 bees")
    tm = tmp_path / "tm"  # Teachable Machine's labels.txt, folders named without the numbers: stripped as before
    for c in ("ants", "bees"):
        (tm / c).mkdir(parents=True)
        cv2.imwrite(str(tm / c / "a.png"), np.zeros((8, 8, 3), np.uint8))
    assert labels_for(ExportConfig(labels=str(tmp_path / "labels.txt"), val=str(tm)), None) == ("ants", "bees")
    assert labels_for(ExportConfig(labels=str(tmp_path / "labels.txt"), calib="random"), None) == ("ants", "bees")
