"""Labels in the wrong order (helper 142): `tledge parity` scored every file with the first file's labels (a file
with its labels reversed got the right file's accuracy, 0.955, and passed), `export --labels` took the model's own
labels in another order without a word, and labels files were split at form feeds and U+2028 inside a line."""
from __future__ import annotations

import json
import shutil

import pytest

from tledge.errors import ContractError


def test_labels_files_are_split_at_newlines_only(tmp_path):
    from tledge.labels import read_labels
    from tledge.std_metadata import labels_from_text

    (tmp_path / "ff.txt").write_bytes(b"a\nb\x0c\r\nc\n")
    assert read_labels(tmp_path / "ff.txt") == ("a", "b", "c")  # (was: "line 3 is empty between labels")
    (tmp_path / "ls.txt").write_text("a\nb\u2028c\nd\n", encoding="utf-8")
    with pytest.raises(ContractError, match=r"line 2 .*U\+2028"):  # (was: 4 labels for 3 outputs)
        read_labels(tmp_path / "ls.txt")
    assert labels_from_text("a\nb\u2028c\nd\n".encode()) == ("a", "b\u2028c", "d")  # as MediaPipe reads them


def test_the_model_own_labels_in_another_order_are_refused():
    from tledge.labels import refuse_reordered, reordered_at

    own = ("ant", "bee", "café")
    assert reordered_at(("Ant", "bee", "cafe\u0301"), own) is None  # the same order, spelt otherwise
    assert reordered_at(("ant", "bee", "wasp"), own) is None  # other labels: not a reordering
    assert reordered_at(("bee", "ant", "café"), own) == 0
    with pytest.raises(ContractError, match=r"--labels l.txt names the 3 labels of x/tledge.json in another order "
                                            r"\(line 1: 'bee', where x/tledge.json has 'ant'\)"):
        refuse_reordered(("bee", "café", "ant"), "l.txt", own, "x/tledge.json")


@pytest.fixture(scope="module")
def two_exports(tiny_model, shapes_dataset, tmp_path_factory):
    """The tiny model exported twice (fp32 TFLite): with its labels, and with them reversed (no tledge.json beside
    the model, so nothing says which order is right)."""
    from tledge.export.pipeline import ExportConfig, export

    d = tmp_path_factory.mktemp("label_order")
    labels = tiny_model["contract"].labels
    (d / "reversed.txt").write_text("\n".join(labels[::-1]) + "\n")
    (d / "right.txt").write_text("\n".join(labels) + "\n")
    out = {}
    for name in ("right", "reversed"):
        cfg = ExportConfig(out=d / name, formats=("tflite",), val=str(shapes_dataset / "val"),
                           labels=str(d / f"{name}.txt"))
        export(tiny_model["keras"], cfg)
        out[name] = d / name / "model_fp32.tflite"
    return out


def test_parity_scores_each_file_by_its_own_labels(tiny_model, shapes_dataset, two_exports):
    from tledge.export.check import parity

    val = shapes_dataset / "val"
    right, rev = two_exports["right"], two_exports["reversed"]
    for files in ([right, rev], [rev, right]):
        report = parity(tiny_model["keras"], files, val)
        acc = {r.file.split("/")[0]: r.accuracy for r in report.results}
        assert acc["right"] > 0.9 and acc["reversed"] < 0.6, acc  # (were both the first file's)


def test_a_file_naming_the_references_labels_in_another_order_fails(tiny_model, shapes_dataset, two_exports,
                                                                     tmp_path):
    from tledge.contract import Contract
    from tledge.export.check import parity

    ref = tmp_path / "model.keras"
    shutil.copy(tiny_model["keras"], ref)
    (tmp_path / "tledge.json").write_text(json.dumps(Contract.from_dict(tiny_model["contract"].to_dict()).to_dict()))
    report = parity(ref, [two_exports["right"], two_exports["reversed"]], shapes_dataset / "val")
    by = {r.file.split("/")[0]: r for r in report.results}
    assert by["right"].passed, by["right"].failures
    assert not by["reversed"].passed and any("reference's 3 labels in another order" in f
                                             for f in by["reversed"].failures)


def test_export_refuses_labels_reordering_the_models_own(tiny_model, shapes_dataset, tmp_path, capsys):
    from tledge.cli import main
    from tledge.contract import Contract

    shutil.copy(tiny_model["keras"], tmp_path / "model.keras")
    Contract.from_dict(tiny_model["contract"].to_dict()).save(tmp_path / "tledge.json")
    (tmp_path / "rev.txt").write_text("\n".join(tiny_model["contract"].labels[::-1]) + "\n")
    code = main(["export", str(tmp_path / "model.keras"), "--labels", str(tmp_path / "rev.txt"),
                 "--formats", "tflite", "--val", str(shapes_dataset / "val"), "--out", str(tmp_path / "out")])
    assert code == 2 and not (tmp_path / "out").exists()
    assert "in another order" in capsys.readouterr().err


def test_decomposed_folder_names_that_sort_otherwise_composed_are_refused_as_labels(tiny_model, shapes_dataset,
                                                                                   tmp_path, capsys):
    """A model with no labels of its own, exported with val folders a macOS zip wrote decomposed: `cafe\\u0301` sorts
    before `cafz`, `café` after, and two outputs were named the other's (accuracy 0.333, parity PASSED)."""
    from tledge.cli import main
    from tledge.errors import DataError
    from tledge.labels import refuse_unicode_order

    refuse_unicode_order(["ant", "cafz", "caf\u00e9"], where="x")  # composed: as written
    refuse_unicode_order(["ant", "be\u0301e"], where="x")  # decomposed, the same order either way
    with pytest.raises(DataError, match="decomposed"):
        refuse_unicode_order(["ant", "cafe\u0301", "cafz"], where="x")
    val = tmp_path / "val"
    for folder, name in zip(sorted(p.name for p in (shapes_dataset / "val").iterdir()),
                            ("ant", "cafe\u0301", "cafz")):
        shutil.copytree(shapes_dataset / "val" / folder, val / name)
    code = main(["export", str(tiny_model["keras"]), "--formats", "tflite", "--val", str(val),
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "decomposed" in capsys.readouterr().err and not (tmp_path / "out").exists()
