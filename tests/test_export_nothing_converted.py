"""An export in which every conversion fails (session 37: an unstripped pruning model's SavedModel) replaced the
export already in --out with a folder of no model file ("wrote 0 model files"): the good files were gone and
`tledge run` on the folder failed. Nothing converted now leaves the folder as it was, with one line and exit 1."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")

from tledge.artifacts import sha256_of  # noqa: E402
from tledge.cli import main  # noqa: E402
from tledge.errors import ExportError  # noqa: E402


def test_a_failed_export_keeps_the_previous_one(tiny_model, tiny_export, shapes_dataset, tmp_path, monkeypatch,
                                                capsys):
    out = tmp_path / "export"
    shutil.copytree(tiny_export.out, out)
    before = {p.relative_to(out): sha256_of(p) for p in out.rglob("*") if p.is_file()}

    def refuse(fmt, path, **_):
        path.write_bytes(b"half a file")  # what a converter may leave behind before it fails
        raise ExportError(f"{fmt.filename}: the converter gave up")
    monkeypatch.setattr("tledge.export.formats.write", refuse)
    rc = main(["export", str(tiny_model["keras"]), "--out", str(out), "--val", str(shapes_dataset / "val")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and "no model file converted (model_fp32.tflite: " in err[-1] and "left as it was" in err[-1]
    assert len([line for line in err if line.startswith("tledge export: error")]) == 1, err
    (out / "export.log").write_text("the log of the export whose files these are\n")
    before[Path("export.log")] = sha256_of(out / "export.log")
    assert main(["export", str(tiny_model["keras"]), "--out", str(out), "--val", str(shapes_dataset / "val")]) == 1
    assert {p.relative_to(out): sha256_of(p) for p in out.rglob("*") if p.is_file()} == before  # its log included
    assert not (tmp_path / "none").exists()
    rc = main(["export", str(tiny_model["keras"]), "--out", str(tmp_path / "none"), "--val",
               str(shapes_dataset / "val")])
    assert rc == 1 and not (tmp_path / "none").exists()  # a folder it created is removed again
