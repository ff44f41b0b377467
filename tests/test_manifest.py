"""The export folder as a unit (tledge.artifacts, tledge.export.unit): one table of exported files
that profiles, export, parity and the runtime share; the manifest written last; the lock; the swap;
bundle/run/info trusting only vouched files. Placeholder files where no model is needed, the tiny
trained model (tests/conftest.py) where one is."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

from tledge import artifacts
from tledge import trust
from tledge.cli import main
from tledge.devices.bundle import make_bundle
from tledge.errors import ModelLoadError, TledgeError
from tledge.export import unit

REPO = Path(__file__).resolve().parents[1]
MODEL_FILES = ("model_fp32.tflite", "model_int8.tflite", "model_fp32.onnx", "model_int8.onnx")


# ---- the table -----------------------------------------------------------------------------------
def test_every_module_derives_from_the_table():
    from tledge.devices.profiles import PROFILES, Format, Precision
    from tledge.export import formats, parity, tflite
    from tledge.runtime.backends import BACKENDS

    assert parity.DEFAULT_THRESHOLDS is artifacts.DEFAULT_THRESHOLDS and parity.Thresholds is artifacts.Thresholds
    assert set(formats.FORMATS.values()) == set(artifacts.exportable())
    assert set(tflite.PRECISIONS) == {a.precision for a in artifacts.exportable() if a.kind == "tflite"}
    assert {f.value for f in Format} == set(artifacts.KINDS) == set(BACKENDS)
    assert {p.value for p in Precision} == set(artifacts.PRECISIONS)
    for p in PROFILES.values():
        for t in p.targets:
            assert artifacts.BY_FILENAME[t.filename] is t.artifact
    with pytest.raises(TledgeError, match="cannot write a onnx fp16"):
        artifacts.lookup("onnx", "fp16")


def _plan(device: str, monkeypatch, tmp_path):
    """What `tledge export MODEL --device X` would convert: the CLI's config, given to export's own plan."""
    from tledge.export import pipeline

    cfg = _config(["--device", device], monkeypatch, tmp_path)
    return {f.filename for f in pipeline.plan(cfg)}, cfg.compile_edgetpu


def _config(argv, monkeypatch, tmp_path):
    """The ExportConfig `tledge export m.keras ARGV` hands the pipeline (captured before anything is loaded)."""
    import zipfile

    from tledge.export import pipeline

    with zipfile.ZipFile(tmp_path / "m.keras", "w") as z:  # passes the CLI's checks; never loaded here
        z.writestr("config.json", "{}")
    (tmp_path / "imgs" / "a").mkdir(parents=True, exist_ok=True)
    (tmp_path / "imgs" / "a" / "x.png").write_bytes(b"")  # an image by name: the CLI checks names, never decodes
    monkeypatch.chdir(tmp_path)
    seen = {}

    def capture(model, cfg):
        seen["cfg"] = cfg
        raise TledgeError("captured")

    monkeypatch.setattr(pipeline, "export", capture)
    assert main(["export", "m.keras", *argv]) == 2
    return seen["cfg"]


def test_int8_only_reaches_the_export_config(monkeypatch, tmp_path, capsys):
    """--int8-only (NPU delegates) and --device coral-usb keep every op int8; a CPU export keeps the CPU delegate's
    float ops (tledge.export.tflite.CPU_FLOAT_OPS)."""
    base = ["--int8", "--calib", "imgs", "--val", "imgs"]
    assert _config(base + ["--int8-only", "--formats", "tflite"], monkeypatch, tmp_path).int8_only is True
    assert _config(base, monkeypatch, tmp_path).int8_only is False
    assert _config(["--device", "coral-usb"], monkeypatch, tmp_path).int8_only is True
    assert _config(["--device", "rpi4"], monkeypatch, tmp_path).int8_only is False


@pytest.mark.parametrize("device", sorted(__import__("tledge.devices.profiles", fromlist=["x"]).PROFILES))
def test_every_profile_choice_is_produced_by_export_for_that_device(device, monkeypatch, capsys, tmp_path):
    from tledge.devices.profiles import PROFILES

    written, compiles = _plan(device, monkeypatch, tmp_path)
    for t in PROFILES[device].targets:
        if t.compiled_for:  # compiled from a file export writes, by the compiler export runs
            assert t.artifact.source.filename in written and compiles, t.filename
        else:
            assert t.filename in written, (device, t.filename, written)
    # and export writes nothing the profile does not list, besides fp32 of each format (the exact file)
    listed = {t.filename for t in PROFILES[device].targets}
    assert written - listed <= {"model_fp32.tflite", "model_fp32.onnx"}


# ---- placeholder export folders -----------------------------------------------------------------
def _placeholder_export(d: Path, tag: str = "a", verdicts=None) -> artifacts.Manifest:
    d.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        (d / name).write_bytes(f"{tag} {name}".encode())
    for name in artifacts.SIDE_FILES:
        (d / name).write_text(f"{tag} {name}\n")
    src = d.parent / f"model_{tag}.keras"
    src.write_bytes(tag.encode())
    m = artifacts.build(d, src, verdicts or {n: (True, {"top1_agreement": 1.0}) for n in MODEL_FILES})
    artifacts.write(d, m)
    return m


def test_manifest_round_trip_and_verification(tmp_path):
    m = _placeholder_export(tmp_path / "e", verdicts={"model_fp32.tflite": (True, {}),
                                                      "model_int8.tflite": (False, {"failures": ["x"]})})
    back = artifacts.read(tmp_path / "e")
    assert back == m and back.source["sha256"] == hashlib.sha256(b"a").hexdigest()
    e = back.entry("model_int8.tflite")
    assert (e.kind, e.precision, e.verdict, e.bytes) == ("tflite", "int8", "fail", len(b"a model_int8.tflite"))
    assert e.sha256 == hashlib.sha256(b"a model_int8.tflite").hexdigest()
    _, ok, notes = trust.vouched(tmp_path / "e", "test")
    assert [x.file for x in ok] == ["model_fp32.tflite"]  # the others failed or were never checked
    assert any("model_int8.tflite: failed parity" in n for n in notes)
    (tmp_path / "e" / "model_fp32.tflite").write_bytes(b"tampered")
    with pytest.raises(TledgeError, match="model_fp32.tflite: changed since export"):
        trust.vouched(tmp_path / "e", "test")


def test_manifest_refuses_unsafe_names_and_garbage(tmp_path):
    d = tmp_path / "e"
    _placeholder_export(d)
    raw = json.loads((d / "manifest.json").read_text())
    raw["files"][0]["file"] = "../../etc/passwd"
    (d / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(TledgeError, match="not a valid tledge manifest"):
        artifacts.read(d)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(TledgeError, match="not a valid tledge manifest"):
        artifacts.read(d)
    # valid JSON of the wrong shape was an AttributeError / TypeError traceback in every command
    good = {**raw, "files": [{**e, "file": "model_fp32.tflite"} for e in raw["files"][:1]]}
    for wrong in ([], "x", 3, None, {**good, "files": [1]}, {**good, "source": [1]},
                  {**good, "files": [{**good["files"][0], "bytes": "x"}]},
                  {**good, "files": [{**good["files"][0], "figures": None}]}):
        (d / "manifest.json").write_text(json.dumps(wrong))
        with pytest.raises(TledgeError, match="not a valid tledge manifest"):
            artifacts.read(d)
    (d / "manifest.json").write_text(json.dumps(good))
    assert artifacts.read(d).files[0].file == "model_fp32.tflite"


def test_folder_without_manifest_is_refused_clearly(tmp_path):
    d = tmp_path / "old"
    _placeholder_export(d)
    (d / "manifest.json").unlink()  # an older tledge, or an interrupted export
    with pytest.raises(TledgeError, match="no manifest.json.*run tledge export again"):
        trust.require(d, "tledge bundle")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TledgeError, match="not a tledge export folder"):
        trust.require(tmp_path / "empty", "tledge bundle")


def test_check_file_refuses_a_changed_file_and_notes_unlisted(tmp_path):
    d = tmp_path / "e"
    _placeholder_export(d)
    assert trust.check_file(d / "model_int8.tflite") == []
    (d / "model_int8.tflite").write_bytes(b"other bytes")
    with pytest.raises(ModelLoadError, match="model_int8.tflite: changed since export"):
        trust.check_file(d / "model_int8.tflite")
    (d / "model_fp16.tflite").write_bytes(b"dropped in later")
    assert "not listed" in trust.check_file(d / "model_fp16.tflite")[0]
    assert trust.check_file(tmp_path / "elsewhere.tflite") == []  # no manifest: nothing to check


def test_a_rejected_file_is_checked_against_the_manifest_above_it(tmp_path):
    """rejected/model_int8.tflite ran with no note that it failed parity, and a changed one was not refused."""
    d = tmp_path / "e"
    d.mkdir()
    (d / "rejected").mkdir()
    (d / "model_fp16.tflite").write_bytes(b"the fallback")
    (d / "rejected" / "model_int8.tflite").write_bytes(b"a rejected int8 file")
    (tmp_path / "m.keras").write_bytes(b"m")
    artifacts.write(d, artifacts.build(d, tmp_path / "m.keras", {"model_fp16.tflite": (True, {}),
                                                                 "rejected/model_int8.tflite": (False, {})}))
    notes = trust.check_file(d / "rejected" / "model_int8.tflite")
    assert len(notes) == 1 and "rejected/model_int8.tflite was REJECTED at export" in notes[0]
    (d / "rejected" / "model_int8.tflite").write_bytes(b"changed")
    with pytest.raises(ModelLoadError, match="model_int8.tflite: changed since export"):
        trust.check_file(d / "rejected" / "model_int8.tflite")


def test_bundle_skips_files_that_failed_parity_or_are_missing(tmp_path):
    d = tmp_path / "e"
    verdicts = {n: (n != "model_int8.tflite", {}) for n in MODEL_FILES}
    _placeholder_export(d, verdicts=verdicts)
    res = make_bundle(d, "rpi4", tmp_path / "a.tar.gz")
    assert res.model == "model_fp32.tflite"
    assert any("model_int8.tflite: failed parity at export: not used" in n for n in res.notes)
    with pytest.raises(TledgeError, match="no usable model file.*model_int8.tflite: failed parity"):
        make_bundle(d, "rpi4", tmp_path / "b.tar.gz", precision="int8", backend="tflite")
    (d / "model_fp32.tflite").unlink()  # a missing file is left out, with a note
    res = make_bundle(d, "rpi4", tmp_path / "c.tar.gz")
    assert res.model == "model_int8.onnx" and any("model_fp32.tflite: missing" in n for n in res.notes)
    (d / "labels.txt").unlink()  # ... but not a missing side file
    with pytest.raises(TledgeError, match="labels.txt: missing"):
        make_bundle(d, "rpi4", tmp_path / "d.tar.gz")
    assert not any((tmp_path / n).exists() for n in ("b.tar.gz", "d.tar.gz"))


# ---- the lock -------------------------------------------------------------------------------------
def test_lock_is_exclusive_and_released(tmp_path):
    a = unit.FolderLock(tmp_path).acquire()
    with pytest.raises(TledgeError, match=f"another tledge export \\(pid {os.getpid()} .*choose another --out"):
        unit.FolderLock(tmp_path).acquire()
    a.release()
    assert not (tmp_path / unit.LOCK).exists()
    b = unit.FolderLock(tmp_path).acquire()
    assert b.notes == []
    b.release()


def test_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    (tmp_path / unit.LOCK).write_text("999999 host 2026-01-01T00:00:00Z\n")  # flock died with its holder
    lock = unit.FolderLock(tmp_path).acquire()
    assert "pid 999999" in lock.notes[0] and "interrupted" in lock.notes[0]
    lock.release()


def test_lock_without_fcntl_checks_the_pid(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fcntl", None)  # as on Windows: O_EXCL and a pid check
    (tmp_path / unit.LOCK).write_text("999999 host 2026-01-01T00:00:00Z\n")
    lock = unit.FolderLock(tmp_path).acquire()
    assert "999999" in lock.notes[0]
    with pytest.raises(TledgeError, match="another tledge export"):
        unit.FolderLock(tmp_path).acquire()  # held by this (live) process
    lock.release()


# ---- the swap -------------------------------------------------------------------------------------
def _stage_new(out: Path) -> artifacts.Manifest:
    """A new export (fp32 TFLite only, other bytes) in a staging folder of `out`, manifest included."""
    stage = out / (unit.STAGING_PREFIX + "1")
    stage.mkdir()
    (stage / "model_fp32.tflite").write_bytes(b"b model_fp32.tflite")
    for name in artifacts.SIDE_FILES:
        (stage / name).write_text(f"b {name}\n")
    (stage / "rejected").mkdir()
    (stage / "rejected" / "model_int8.tflite").write_bytes(b"b rejected int8")
    m = artifacts.build(stage, out.parent / "model_a.keras", {"model_fp32.tflite": (True, {}),
                                                             "rejected/model_int8.tflite": (False, {})})
    artifacts.write(stage, m)
    return m


def _state(out: Path) -> str:
    """old / new (a complete, verifying manifest of either export) or none (no manifest)."""
    m = artifacts.read(out)
    if m is None:
        return "none"
    assert trust.problems(out, m.files) == []  # whatever the manifest lists is there and intact
    return "new" if m.entry("model_int8.tflite") is None else "old"


def test_swap_interrupted_at_every_step_leaves_old_none_or_new(tmp_path, monkeypatch):
    """A crash after each file operation of the swap: never a manifest that vouches for a wrong file."""
    steps, k, seen = 0, 0, []
    real = {"replace": os.replace, "unlink": Path.unlink, "rmtree": shutil.rmtree}
    while True:
        out = tmp_path / f"out{k}"
        _placeholder_export(out, "a")
        (out / "model_fp16.tflite").write_bytes(b"stale, not in the manifest")
        new = _stage_new(out)
        calls = [0]

        def counted(name):
            def op(*a, **kw):
                calls[0] += 1
                if calls[0] > k:
                    raise KeyboardInterrupt("killed")
                return real[name](*a, **kw)
            return op

        monkeypatch.setattr(unit.os, "replace", counted("replace"))
        monkeypatch.setattr(Path, "unlink", counted("unlink"))
        monkeypatch.setattr(unit.shutil, "rmtree", counted("rmtree"))
        try:
            unit.swap_in(out / (unit.STAGING_PREFIX + "1"), out, new)
            done = True
        except KeyboardInterrupt:
            done = False
        monkeypatch.undo()
        seen.append(_state(out))
        if done:
            steps = k
            break
        k += 1
    assert seen[0] == "old" and seen[-1] == "new" and set(seen[1:-1]) == {"none"} and steps > 8
    out = tmp_path / f"out{steps}"
    assert not (out / "model_fp16.tflite").exists() and not (out / "model_int8.onnx").exists()
    assert (out / "rejected" / "model_int8.tflite").read_bytes() == b"b rejected int8"


# ---- real exports ---------------------------------------------------------------------------------
needs_tf = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="needs tledge[export]")


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@needs_tf
def test_export_writes_a_manifest_that_vouches_for_every_file(tiny_export, tiny_model):
    m = artifacts.read(tiny_export.out)
    assert m.source["sha256"] == artifacts.sha256_of(tiny_model["keras"])
    assert {e.file for e in m.vouched()} == {p.name for p in tiny_export.files}
    for e in m.files:
        assert trust.problems(tiny_export.out, [e]) == []
        if e.role == "model":
            assert 0.98 <= e.figures["top1_agreement"] <= 1.0 and e.figures["images"] == 24
    assert not list(tiny_export.out.glob(".tledge-*"))  # no lock, no staging left


@needs_tf
def test_reexport_of_another_model_leaves_no_stale_file(tiny_model, tiny_export, shapes_dataset, tmp_path, capsys):
    import keras

    from tledge.export.pipeline import ExportConfig, export

    out = tmp_path / "out"
    shutil.copytree(tiny_export.out, out)
    (out / "rejected").mkdir()
    (out / "rejected" / "model_int8.onnx").write_bytes(b"an old rejected file")
    other = keras.models.clone_model(tiny_model["model"])
    other.set_weights(tiny_model["model"].get_weights())
    other.save(tmp_path / "other.keras")
    res = export(tmp_path / "other.keras", ExportConfig(out=out, formats=("tflite",), val=str(shapes_dataset / "val")))
    assert res.passed
    model_files = sorted(p.name for p in out.iterdir() if p.suffix in (".tflite", ".onnx"))
    assert model_files == ["model_fp32.tflite"] and not (out / "rejected").exists()
    assert artifacts.read(out).source["sha256"] == artifacts.sha256_of(tmp_path / "other.keras")
    assert main(["bundle", str(out), "--device", "rpi4", "--out", str(tmp_path / "b.tar.gz"), "--json"]) == 0
    shipped = json.loads(capsys.readouterr().out)
    assert shipped["model"] == "model_fp32.tflite"
    with tarfile.open(tmp_path / "b.tar.gz") as tar:
        models = [n for n in tar.getnames() if n.endswith((".tflite", ".onnx"))]
        inner = json.loads(tar.extractfile("b/model/manifest.json").read())
    assert models == ["b/model/model_fp32.tflite"]
    assert [f["file"] for f in inner["files"] if f["role"] == "model"] == ["model_fp32.tflite"]


@needs_tf
def test_export_for_jetson_orin_writes_exactly_its_files(tiny_model, shapes_dataset, tmp_path, capsys):
    from tledge.devices.profiles import PROFILES

    val = str(shapes_dataset / "val")
    assert main(["export", str(tiny_model["keras"]), "--device", "jetson-orin", "--calib", val, "--val", val,
                 "--out", str(tmp_path / "j")]) == 0
    capsys.readouterr()
    written = {p.name for p in (tmp_path / "j").iterdir() if p.suffix in (".tflite", ".onnx")}
    assert written == {t.filename for t in PROFILES["jetson-orin"].targets}
    assert main(["bundle", str(tmp_path / "j"), "--device", "jetson-orin", "--out", str(tmp_path / "j.tar.gz")]) == 0


@needs_tf
def test_export_for_coral_lists_the_compiled_file_as_derived(tiny_model, shapes_dataset, tmp_path, monkeypatch,
                                                             capsys):
    from test_devices_edgetpu import FAKE_COMPILER, PARTIAL_LOG

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "edgetpu_compiler").write_text(FAKE_COMPILER.replace("@LOG@", PARTIAL_LOG))
    (bindir / "edgetpu_compiler").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    val, out = str(shapes_dataset / "val"), tmp_path / "coral"
    assert main(["export", str(tiny_model["keras"]), "--device", "coral-usb", "--calib", val, "--val", val,
                 "--out", str(out)]) == 0
    assert "tledge export: note: edgetpu: " in capsys.readouterr().err  # notes are on stderr
    e = artifacts.read(out).entry("model_int8_edgetpu.tflite")
    assert e.derived_from == "model_int8.tflite" and e.verdict == "pass" and e.vouched
    res = make_bundle(out, "coral-usb", tmp_path / "c.tar.gz")
    assert (res.model, res.fallback) == ("model_int8_edgetpu.tflite", "model_int8.tflite")
    _tamper(out / "model_int8_edgetpu.tflite")
    assert main(["bundle", str(out), "--device", "coral-usb", "--out", str(tmp_path / "d.tar.gz")]) == 2
    assert "model_int8_edgetpu.tflite: changed since export" in capsys.readouterr().err

