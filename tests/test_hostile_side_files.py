"""Export folders and model files edited by hand or by someone else: a manifest, golden file, contract or .keras
archive that parses in an unexpected way is exit 2 and one line from every verb, never a traceback (each case
here gave a RecursionError, OverflowError, ValueError, UnicodeDecodeError, RuntimeError or NotImplementedError)."""
from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from tiny import TINY, FOREIGN

from tledge import artifacts
from tledge.cli import main
from tledge.backbones import contract_for
from tledge.contract import Contract
from tledge.errors import ContractError, ModelLoadError
from tledge.export import kerasconfig


def _copy(tmp_path: Path) -> Path:
    out = tmp_path / "exp"
    shutil.copytree(TINY, out, ignore=shutil.ignore_patterns("foreign", "images", "reference.json"))
    return out


def _rehash(folder: Path) -> None:
    """The manifest's sizes and sha256 made to match the edited files (what a careful tamperer does)."""
    m = json.loads((folder / artifacts.MANIFEST).read_text())
    for e in m["files"]:
        p = folder / e["file"]
        e["bytes"], e["sha256"] = p.stat().st_size, artifacts.sha256_of(p)
    (folder / artifacts.MANIFEST).write_text(json.dumps(m))


def _one_line_exit_2(capsys, *argv) -> str:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (argv, rc, err)
    return err


@pytest.mark.parametrize("manifest", [
    '{"format": "tledge.export", "files": ' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"format": "tledge.export", "schema": Infinity, "files": []}',
    '{"format": "tledge.export", "schema": "1", "files": []}',
])
def test_manifest_that_parses_oddly(manifest, tmp_path, capsys):
    exp = _copy(tmp_path)
    (exp / artifacts.MANIFEST).write_text(manifest)
    for argv in (("info", exp), ("run", exp, "--source", TINY / "images"), ("parity", "--golden", exp)):
        assert "not a valid tledge manifest" in _one_line_exit_2(capsys, *argv)
    rc = main(["run", str(exp / "model_int8.tflite"), "--source", str(TINY / "images")])  # a file: runs, with a note
    assert rc == 0 and "manifest.json is unreadable" in capsys.readouterr().err


def test_manifest_with_a_value_nested_deep_is_refused_on_every_python(tmp_path, capsys):
    """A manifest whose figures nest 200 deep: Python 3.13's json parses thousands of levels, and `tledge info` then
    recursed in dataclasses.asdict (a RecursionError traceback, at depths 3.11's json refused itself); on 3.11 the
    value was accepted or echoed whole. tledge's JSON is refused beyond safejson.MAX_JSON_DEPTH levels, alike on
    every Python."""
    depth = 200
    exp = _copy(tmp_path)
    m = json.loads((exp / artifacts.MANIFEST).read_text())
    m["files"][0]["figures"] = "NESTED"
    (exp / artifacts.MANIFEST).write_text(json.dumps(m).replace('"NESTED"', "[" * depth + "]" * depth))
    for argv in (("info", exp), ("run", exp, "--source", TINY / "images")):
        assert "nested too deeply" in _one_line_exit_2(capsys, *argv)


def test_json_depth_is_measured_without_recursion():
    from tledge.safejson import MAX_JSON_DEPTH, NestedTooDeeply, loads_json

    assert loads_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH) is not None
    assert loads_json('{"a": [1, {"b": []}], "c": "[[[["}') == {"a": [1, {"b": []}], "c": "[[[["}
    for text in ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), '{"a":' * 5000 + "1" + "}" * 5000):
        with pytest.raises(NestedTooDeeply):
            loads_json(text)


@pytest.mark.parametrize("schema", ['"x"', "Infinity", "true"])
def test_golden_meta_that_parses_oddly(schema, tmp_path, capsys):
    exp = _copy(tmp_path)
    with np.load(exp / "golden.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    text = json.dumps(meta | {"schema": "SCHEMA"}).replace('"SCHEMA"', schema)
    for name, m in (("odd", text), ("deep", "[" * 100_000 + "]" * 100_000)):
        buf = io.BytesIO()
        np.savez(buf, **(arrays | {"meta": np.array(m)}))
        (exp / "golden.npz").write_bytes(buf.getvalue())
        _rehash(exp)
        err = _one_line_exit_2(capsys, "parity", "--golden", exp)
        assert "golden" in err, (name, err)


def test_contract_that_is_not_utf8(tmp_path, capsys):
    text = contract_for("mobilenet_v2", 32, labels=("ant\u00e9", "bee")).to_json().replace("\\u00e9", "\u00e9")
    with pytest.raises(ContractError, match="not UTF-8"):
        Contract.from_json(text.encode("latin-1"))
    folder = tmp_path / "foreign"
    folder.mkdir()
    shutil.copy(FOREIGN / "model_int8.tflite", folder)
    (folder / "tledge.json").write_bytes(text.encode("latin-1"))
    for argv in (("info", folder / "model_int8.tflite"), ("run", folder / "model_int8.tflite", "--source",
                                                             TINY / "images")):
        assert "UTF-8" in _one_line_exit_2(capsys, *argv)


def _patched_keras(tmp_path: Path, name: str, offset_in_central: int, value: bytes) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", json.dumps({"class_name": "Functional", "config": {"layers": []}}))
    data = bytearray(buf.getvalue())
    central = data.index(b"PK\x01\x02")
    data[central + offset_in_central:central + offset_in_central + len(value)] = value
    p = tmp_path / name
    p.write_bytes(bytes(data))
    return p


@pytest.mark.parametrize("name, offset, value, said", [
    ("encrypted.keras", 8, b"\x01", "encrypted"),  # general purpose flag bit 0
    ("method.keras", 10, b"\x63\x00", "compression"),  # method 99 (AES), which zipfile cannot read
])
def test_keras_archive_zipfile_cannot_read(name, offset, value, said, tmp_path):
    path = _patched_keras(tmp_path, name, offset, value)
    with pytest.raises(ModelLoadError, match=f"not a .keras archive Keras writes.*{said}"):
        kerasconfig.read_keras_config(path)


@pytest.mark.parametrize("quant", [{"scale": 1e309, "zero_point": 0}, {"scale": 0.5, "zero_point": 0, "dtype": "bogus"},
                                   {"scale": -1, "zero_point": 0}, {"scale": 0.5, "zero_point": 1.5}, [0.5, 0]])
def test_contract_quantisation_that_means_nothing_is_refused(quant):
    """An infinite scale and dtype "bogus" were taken (the model's own quantisation happened to be used instead)."""
    d = contract_for("mobilenet_v2", 32, labels=("a", "b")).to_dict()
    with pytest.raises(ContractError, match="output_quant needs a positive finite scale"):
        Contract.from_dict(d | {"output_quant": quant})
    ok = Contract.from_dict(d | {"output_quant": {"scale": 1 / 256, "zero_point": 0, "dtype": "uint8"}})
    assert ok.output_quant.scale == 1 / 256


def test_golden_arrays_declaring_more_than_they_hold_are_refused(tmp_path, capsys):
    """A pixels.npy header declaring shape (10**15,) had numpy allocate it: a MemoryError traceback, exit 1."""
    exp = _copy(tmp_path)
    src = zipfile.ZipFile(TINY / "golden.npz")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as out:
        for i in src.infolist():
            data = src.read(i)
            if i.filename == "pixels.npy":
                head = "{'descr': '|u1', 'fortran_order': False, 'shape': (1000000000000000,), }"
                head += " " * (118 - len(head) - 1) + "\n"
                data = b"\x93NUMPY\x01\x00" + len(head).to_bytes(2, "little") + head.encode() + bytes(64)
            out.writestr(i.filename, data)
    (exp / "golden.npz").write_bytes(buf.getvalue())
    _rehash(exp)
    assert main(["parity", "--golden", str(exp)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a readable tledge golden file" in err and "declares" in err, err


def test_only_the_files_the_metadata_names_are_read_from_a_tflite_zip():
    """Every zip entry appended to a .tflite was read: 30 entries of 16 MB of zeros in a 0.5 MB file took 550 MB
    to `tledge info`. Only the associated files the metadata names are read, up to MAX_PACKED_FILE in all."""
    from tledge.metadata import read_standard_metadata

    data = (Path(__file__).resolve().parent / "assets" / "calibrated" / "model_int8.tflite").read_bytes()
    buf = io.BytesIO(data)
    with zipfile.ZipFile(buf, "a", zipfile.ZIP_DEFLATED) as z:
        for k in range(3):
            z.writestr(f"zeros{k}.bin", bytes(4 << 20))
    md = read_standard_metadata(buf.getvalue())
    assert set(md.packed) == md.file_names() == {"labels.txt", "calibration.txt"}
    assert md.labels() == ("circle", "hstripes", "vstripes") and md.score_calibration() is not None
