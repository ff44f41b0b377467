"""A tledge.json beside the model never silently wins: explicit flags do, a contradicting one is refused,
and the report says where each part of the contract came from."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import build_tiny_classifier, train_tiny
from tledge.cli import main
from tledge.contract import Contract
from tledge.errors import ContractError
from tledge.export import loader, resolve
from tledge.export.check import parity

LABELS = ("circle", "hstripes", "vstripes")


@pytest.fixture(scope="module")
def plain_model(shapes_dataset, tmp_path_factory):
    """A tiny 3-class model trained on tf-normalised input, without its preprocessing baked in."""
    contract = Contract(48, 48, norm="tf", baked=False, input_dtype="float32", labels=LABELS)
    model = train_tiny(build_tiny_classifier(baked=False), shapes_dataset / "train", contract, epochs=40)
    d = tmp_path_factory.mktemp("plain")
    model.save(d / "model.keras")
    return d / "model.keras"


def _beside(model, tmp_path, **contract):
    """The model copied into a folder with a stray tledge.json written for another model."""
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(model, d / "model.keras")
    Contract(**{"height": 48, "width": 48, "norm": "caffe", "baked": False, "labels": LABELS, **contract}).save(
        d / "tledge.json")
    return d / "model.keras", d / "tledge.json"


@pytest.mark.parametrize("baked", [True, False])
def test_preprocess_flag_wins_over_the_sidecar(baked, plain_model, shapes_dataset, tmp_path):
    """The sidecar says caffe (baked: the model would normalise itself); the flag says tf, as trained."""
    model, side = _beside(plain_model, tmp_path, baked=baked)
    val = str(shapes_dataset / "val")
    rc = main(["export", str(model), "--preprocess", "tf", "--formats", "tflite", "--val", val,
               "--out", str(tmp_path / "flag")])
    report = json.loads((tmp_path / "flag" / "parity.json").read_text())
    assert rc == 0, report
    assert Contract.load(tmp_path / "flag" / "tledge.json").norm.value == "tf"
    assert report["results"][0]["reference_accuracy"] > 0.9  # the model's own normalisation was used
    source = [n for n in report["notes"] if n.startswith("contract:")]
    assert len(source) == 1 and "normalisation from --preprocess (tf)" in source[0]
    assert f"labels from the sidecar {side}" in source[0]
    assert source[0] in (tmp_path / "flag" / "parity.md").read_text()

    # without the flag the sidecar is used, and the report says so
    rc = main(["export", str(model), "--formats", "tflite", "--val", val, "--out", str(tmp_path / "side")])
    notes = json.loads((tmp_path / "side" / "parity.json").read_text())["notes"]
    assert Contract.load(tmp_path / "side" / "tledge.json").norm.value == "caffe"
    assert any(f"normalisation from the sidecar {side} (caffe" in n for n in notes), notes


def test_labels_and_size_flags_win(plain_model, tmp_path):
    model, side = _beside(plain_model, tmp_path)
    lm = loader.load_model(model)
    contract, add = resolve.resolve_contract(lm, preprocess="tf", input_size=None, labels=("a", "b", "c"),
                                            labels_from="--labels l.txt")
    assert contract.labels == ("a", "b", "c") and add == "tf"
    assert "labels from --labels l.txt" in lm.contract_source and "size from the model's input" in lm.contract_source
    assert f"resize, fit and colour order from the sidecar {side}" in lm.contract_source
    resolve.resolve_contract(lm, preprocess="tf", input_size=None, geometry_flags={"resize": "--resize",
                                                                                  "fit": "--crop"})
    assert f"colour order from the sidecar {side}" in lm.contract_source  # what the flags set is not the sidecar's
    assert "resize from --resize" in lm.contract_source and "fit from --crop" in lm.contract_source
    assert "resize, fit" not in lm.contract_source and "fit and" not in lm.contract_source
    with pytest.raises(ContractError, match="--input-size 64x64 but model.keras has a fixed 48x48"):
        resolve.resolve_contract(lm, preprocess="tf", input_size=(64, 64))
    with pytest.raises(ContractError, match="2 labels from --labels l.txt but model.keras has 3 outputs"):
        resolve.resolve_contract(lm, preprocess="tf", input_size=None, labels=("a", "b"), labels_from="--labels l.txt")


@pytest.mark.parametrize("case, expect", [
    ("labels", "it lists 2 labels but the model has 3 outputs"),
    ("size", "it says 64x64 input but the model takes 48x48"),
])
def test_contradicting_sidecar_is_refused(case, expect, plain_model, shapes_dataset, tmp_path, capsys):
    bad = {"labels": {"labels": ("a", "b")}, "size": {"height": 64, "width": 64}}[case]
    model, side = _beside(plain_model, tmp_path, **bad)
    out = tmp_path / "o"
    for flags in ([], ["--preprocess", "tf", "--labels", str(_labels_file(tmp_path))]):
        rc = main(["export", str(model), "--formats", "tflite", "--val", str(shapes_dataset / "val"),
                   "--out", str(out), *flags])
        err = capsys.readouterr().err.strip()
        # without --labels the class folders are checked against the sidecar's labels first
        also = "match none of the model's 2 labels" if case == "labels" and not flags else expect
        assert rc == 2 and len(err.splitlines()) == 1 and str(side) in err and (expect in err or also in err), err
        assert not out.exists()


def _labels_file(tmp_path):
    p = tmp_path / "labels.txt"
    p.write_text("\n".join(LABELS) + "\n")
    return p


def test_baked_model_refuses_a_contradicting_preprocess(tiny_model, shapes_dataset, tmp_path, capsys):
    lm = loader.load_model(tiny_model["keras"])
    contract, add = resolve.resolve_contract(lm, preprocess="mobilenet", input_size=None, labels=LABELS)
    assert add is None and contract.norm.value == "tf"  # mobilenet is tf: the baked layer does it
    assert "baked preprocessing layer (tf)" in lm.contract_source
    rc = main(["export", str(tiny_model["keras"]), "--preprocess", "caffe", "--val", str(shapes_dataset / "val"),
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "normalise twice" in err and not (tmp_path / "o").exists()


def test_parity_takes_the_embedded_contract_not_a_stray_sidecar(plain_model, shapes_dataset, tmp_path):
    model, side = _beside(plain_model, tmp_path)
    side.unlink()
    out = tmp_path / "e"
    assert main(["export", str(model), "--preprocess", "tf", "--formats", "tflite",
                 "--val", str(shapes_dataset / "val"), "--out", str(out)]) == 0
    # another model's tledge.json lands beside the reference afterwards
    Contract(64, 64, norm="caffe", baked=False, labels=("a", "b")).save(side)
    report = parity(model, [out], shapes_dataset / "val")
    assert report.passed and report.results[0].reference_accuracy > 0.9
    assert any("normalisation from the exported files' embedded contract (tf)" in n for n in report.notes), report.notes


def test_val_folders_match_the_model_s_labels_as_parity_matches_them(tmp_path):
    """export --val refused folders that differ from the model's labels only in case, spaces or Unicode form (macOS
    writes 'Ä' decomposed), which train and parity accept."""
    import unicodedata

    from tledge.cli.export_labels import export_labels
    from tledge.errors import TledgeError

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "labels.txt").write_text(unicodedata.normalize("NFC", "Ämeise") + "\nhoney bee\n")
    for name in (unicodedata.normalize("NFD", "Ämeise"), "Honey  Bee"):
        (tmp_path / "val" / name).mkdir(parents=True)
        (tmp_path / "val" / name / "a.png").write_bytes(b"png")
    notes = []
    got = export_labels(tmp_path / "run" / "model.keras", None, {"--val": str(tmp_path / "val")}, notes.append)
    assert got == str(tmp_path / "run" / "labels.txt") and not notes
    (tmp_path / "val" / "wasps").mkdir()
    (tmp_path / "val" / "wasps" / "a.png").write_bytes(b"png")
    with pytest.raises(TledgeError, match="class folder.s. 'wasps' in --val .* match none of the model's 2 labels"):
        export_labels(tmp_path / "run" / "model.keras", None, {"--val": str(tmp_path / "val")}, notes.append)


def test_a_labels_file_beside_the_model_is_not_called_the_labels_flag(plain_model, tmp_path):
    """The CLI passes a labels.txt found beside the model on as --labels; parity.md said "labels from --labels
    m/labels.txt" where the user had passed no flag."""
    from tledge.export.contracting import export_contract
    from tledge.export.pipeline import ExportConfig

    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(plain_model, d / "model.keras")
    (d / "labels.txt").write_text("\n".join(LABELS) + "\n")
    (tmp_path / "mine.txt").write_text("\n".join(LABELS) + "\n")
    for given, said in ((d / "labels.txt", f"labels from the labels.txt beside the model ({d / 'labels.txt'})"),
                        (tmp_path / "mine.txt", f"labels from --labels {tmp_path / 'mine.txt'}")):
        lm = loader.load_model(d / "model.keras")
        export_contract(ExportConfig(labels=str(given), preprocess="tf"), lm, LABELS)
        assert said in lm.contract_source
