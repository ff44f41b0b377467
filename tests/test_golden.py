"""Golden outputs (tledge.runtime.golden): every export stores a few parity images with the Keras outputs,
and `tledge parity --golden` / a bundle's `run.sh --check` re-run parity with the runtime alone."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
from tiny import MODELS, TINY

from tledge import artifacts
from tledge.cli import main
from tledge.runtime import golden

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras", "tf_keras")
# a process in which TensorFlow / Keras cannot be imported at all (and we can see whether anything tried)
BLOCKER = """
import sys
class _Block:
    tried = []
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {heavy!r}:
            _Block.tried.append(name)
            raise ImportError("blocked for this test: " + name)
        return None
sys.meta_path.insert(0, _Block())
""".format(heavy=HEAVY)
NO_EDITABLE = """
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "").lower()]
"""
RUN_BLOCKED = BLOCKER + """
import json
from tledge.cli import main
rc = main(sys.argv[1:])
sys.stdout.flush()
print(json.dumps({"rc": rc, "tried": _Block.tried,
                  "heavy": sorted(m for m in sys.modules if m.split(".")[0] in %r),
                  "exporter": sorted(m for m in sys.modules if m.startswith("tledge.export"))}), file=sys.stderr)
sys.exit(rc)
""" % (HEAVY,)


def _blocked(argv: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", RUN_BLOCKED, *argv], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)
    tail = json.loads(proc.stderr.strip().splitlines()[-1])
    return proc, tail


def _rehash(folder: Path, name: str = golden.GOLDEN) -> None:
    """Make the manifest vouch for the file's new bytes (as someone editing it consistently would)."""
    m = json.loads((folder / artifacts.MANIFEST).read_text())
    for e in m["files"]:
        if e["file"] == name:
            data = (folder / name).read_bytes()
            e["sha256"], e["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    (folder / artifacts.MANIFEST).write_text(json.dumps(m, indent=2))


def _swap_top1(path: Path) -> None:
    """Golden outputs edited to disagree with every file: each row's two largest outputs swapped."""
    g = golden.read(path)
    ref = g.reference.copy()
    order = np.argsort(ref, axis=1)
    rows = np.arange(len(ref))
    ref[rows, order[:, -1]], ref[rows, order[:, -2]] = g.reference[rows, order[:, -2]], g.reference[rows, order[:, -1]]
    golden.save(golden.Golden(g.pixels, ref, g.labels, g.names, g.sha256, g.meta), path)


# ---- selection (no model needed) ----------------------------------------------------------------------------
def test_selection_is_deterministic_spread_over_classes_and_skips_the_least_confident():
    rng = np.random.default_rng(0)
    n, k = 300, 3
    labels = np.repeat(np.arange(k), n // k)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += rng.uniform(0, 4, n)
    ref = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    idx = golden.select(ref, labels)
    assert len(idx) == 32 and len(set(idx.tolist())) == 32
    assert np.array_equal(idx, golden.select(ref.copy(), labels.copy()))
    assert sorted(np.bincount(labels[idx], minlength=k).tolist()) == [10, 11, 11]
    srt = np.sort(ref, 1)
    margin = srt[:, -1] - srt[:, -2]
    assert margin[idx].min() >= np.sort(margin)[n // 4]  # the least confident quarter is left out
    for c in range(k):  # spread over each class's files, not its first ones
        members = np.flatnonzero(labels[idx] == c)
        assert idx[members].max() - idx[members].min() > 0.8 * (n // k)
    assert np.array_equal(golden.select(ref[:20], labels[:20]), np.arange(20))  # few images: all of them
    small = golden.select(ref[:40], None)  # no labels: spread over the reference's top-1
    assert len(small) == 32


def test_images_a_passing_file_got_wrong_at_export_are_left_out(monkeypatch):
    rng = np.random.default_rng(2)
    n, k = 400, 4
    labels = np.arange(n) % k
    ref = rng.dirichlet(np.ones(k), n).astype(np.float32)
    flips = set(range(0, n, 7))  # what the exported files got wrong
    seen = []

    def fake_agreeing(pixels, reference, models):
        seen.append(len(pixels))
        idx = [int(np.flatnonzero((ref == r).all(1))[0]) for r in reference]
        return np.array([i not in flips for i in idx])

    monkeypatch.setattr(golden, "agreeing", fake_agreeing)
    idx, dropped = golden.choose(np.zeros((n, 2, 2, 3)), ref, labels, models=[Path("m.tflite")])
    assert seen == [128] and len(idx) == 32 and dropped > 0  # a pool of 4n was run, not all 400 images
    assert not flips & set(idx.tolist())
    assert sorted(np.bincount(labels[idx], minlength=k).tolist()) == [8, 8, 8, 8]
    idx2, _ = golden.choose(np.zeros((n, 2, 2, 3)), ref, labels)  # no files: nothing to leave out
    assert flips & set(idx2.tolist())


def test_a_damaged_golden_file_is_a_clear_error(tmp_path):
    from tledge.errors import TledgeError

    bad = tmp_path / "golden.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(TledgeError, match="golden.npz is not a readable tledge golden file"):
        golden.read(bad)
    np.savez(bad, pixels=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(TledgeError, match="no reference"):
        golden.read(bad)


def test_golden_file_round_trip_keeps_thresholds_names_and_exact_pixels(tmp_path):
    from tledge.parity import Thresholds

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (40, 8, 8, 3)).astype(np.float32)  # raw pixels, as export prepares them
    ref = rng.dirichlet(np.ones(4), 40).astype(np.float32)
    files = [tmp_path / "val" / f"c{i % 4}" / f"{i}.png" for i in range(40)]
    for i, f in enumerate(files):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(bytes([i]) * 10)
    used = {"int8": Thresholds(min_agreement=0.9, max_accuracy_drop=None), "model_fp32.onnx": Thresholds(max_abs=1e-3)}
    g = golden.from_export(pixels, ref, np.arange(40) % 4, files, tmp_path / "val", used)
    golden.save(g, tmp_path / "g.npz")
    back = golden.read(tmp_path / "g.npz")
    idx = back.meta["indices"]
    assert len(idx) == 32 and not back.all_parity_images and back.pixels.dtype == np.uint8
    np.testing.assert_array_equal(back.pixels.astype(np.float32), pixels[idx])
    np.testing.assert_array_equal(back.reference, ref[idx])
    assert back.names[0] == f"c{idx[0] % 4}/{idx[0]}.png" and back.sha256[0] == artifacts.sha256_of(files[idx[0]])
    assert back.thresholds == used and list(back.labels) == [i % 4 for i in idx]
    noise = golden.from_export(pixels[:5] / 255.0, ref[:5], None, None, None)  # not whole numbers: float32 kept
    golden.save(noise, tmp_path / "n.npz")
    back = golden.read(tmp_path / "n.npz")
    assert back.pixels.dtype == np.float32 and back.labels is None and back.sha256 == ("",) * 5
    np.testing.assert_array_equal(back.pixels, (pixels[:5] / 255.0).astype(np.float32))


# ---- the committed tiny export (tests/assets/tiny) ------------------------------------------------------------
def test_parity_golden_without_tensorflow_reproduces_parity_json(tmp_path):
    out = TINY
    junit = tmp_path / "golden.xml"
    proc, tail = _blocked(["parity", "--golden", str(out), "--json", "--junit", str(junit)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert tail["heavy"] == [] and tail["tried"] == [] and tail["exporter"] == [] and tail["rc"] == 0
    got = {r["file"]: r for r in json.loads(proc.stdout)["results"]}
    want = {r["file"]: r for r in json.loads((out / "parity.json").read_text())["results"]}
    assert set(got) == set(want) == set(MODELS)
    for name, w in want.items():
        g = got[name]
        assert g["passed"] and g["images"] == w["images"] == 24
        assert g["top1_agreement"] == w["top1_agreement"] and g["accuracy"] == w["accuracy"]
        assert g["reference_accuracy"] == w["reference_accuracy"]
        if w["precision"] == "fp32":
            assert abs(g["max_abs_error"] - w["max_abs_error"]) <= 1e-6, name
            assert abs(g["mean_abs_error"] - w["mean_abs_error"]) <= 1e-6, name
    cases = list(ET.parse(junit).getroot().iter("testcase"))
    assert sorted(c.get("name") for c in cases) == sorted(want) and all(c.find("failure") is None for c in cases)


def test_golden_edited_consistently_fails_and_changed_bytes_are_refused(tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(TINY, out)
    _swap_top1(out / golden.GOLDEN)
    assert main(["parity", "--golden", str(out)]) == 2  # bytes changed, manifest not: not trusted
    err = capsys.readouterr().err
    assert "golden.npz: changed since export" in err and len(err.strip().splitlines()) == 1
    _rehash(out)  # the same edit, vouched for by the manifest: now the outputs disagree
    assert main(["parity", "--golden", str(out), "--junit", str(tmp_path / "j.xml")]) == 1
    captured = capsys.readouterr()
    assert "parity: FAILED" in captured.out and "top-1 agreement 0.000" in captured.err
    cases = list(ET.parse(tmp_path / "j.xml").getroot().iter("testcase"))
    assert len(cases) == 6 and all(c.find("failure") is not None for c in cases)
    (out / golden.GOLDEN).unlink()
    assert main(["parity", "--golden", str(out)]) == 2
    assert "golden.npz: missing, but listed in manifest.json" in capsys.readouterr().err


def test_a_folder_with_no_model_file_left_to_check_is_not_a_comparison(tmp_path, capsys):
    """Every model file deleted (or none vouched for) printed an empty table and "parity: FAILED", exit 1 ("the
    board disagrees"); nothing was compared."""
    out = tmp_path / "out"
    shutil.copytree(TINY, out)
    for name in MODELS:
        (out / name).unlink(missing_ok=True)
    assert main(["parity", "--golden", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no model file to check" in err and "missing" in err, err


def test_thresholds_of_the_export_and_from_a_file(tmp_path, capsys):
    g = golden.read(TINY / golden.GOLDEN)
    assert g.thresholds == {}  # the export used the defaults
    strict = tmp_path / "t.json"
    strict.write_text(json.dumps({"int8": {"max_abs": 1e-9}}))
    assert main(["parity", "--golden", str(TINY), "--thresholds", str(strict), "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    failed = {r["file"] for r in rep["results"] if not r["passed"]}
    assert failed == {"model_int8.tflite", "model_int8.onnx"}
    # the thresholds the export used travel in golden.npz and apply on the board (here: a strict fp16 line)
    out = tmp_path / "out"
    shutil.copytree(TINY, out)
    meta = {**g.meta, "thresholds": {"fp16": {"max_abs": 1e-9, "min_agreement": 1.0, "max_accuracy_drop": None}}}
    golden.save(golden.Golden(g.pixels, g.reference, g.labels, g.names, g.sha256, meta), out / golden.GOLDEN)
    _rehash(out)
    assert main(["parity", "--golden", str(out), "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert {r["file"] for r in rep["results"] if not r["passed"]} == {"model_fp16.tflite"}
    loose = tmp_path / "loose.json"  # a thresholds file replaces the export's
    loose.write_text(json.dumps({"fp16": {"min_agreement": 0.99}}))
    assert main(["parity", "--golden", str(out), "--thresholds", str(loose)]) == 0
    printed = capsys.readouterr()  # the table and the verdict on stdout, tledge's notes on stderr (as export's)
    assert printed.out.rstrip().endswith("parity: PASSED") and "note:" not in printed.out, printed.out
    assert "tledge parity: note: " in printed.err, printed.err


def test_golden_usage_errors(tmp_path, capsys):
    (tmp_path / "m.h5").write_bytes(b"x")
    for argv, msg in ((["parity", "--golden", str(tmp_path / "nope")], "--golden"),
                      (["parity", "--golden", str(tmp_path), "--images", str(tmp_path)], "takes no --images"),
                      (["parity", "--golden", str(tmp_path), "--device", "toaster"], "unknown device"),
                      (["parity", str(tmp_path / "m.h5")], "EXPORTED, --images required"),
                      (["parity", "--golden", str(tmp_path)], "no manifest.json")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_export_without_golden_is_refused_with_a_reason(tmp_path, capsys):
    out = tmp_path / "old"
    shutil.copytree(TINY, out)
    (out / golden.GOLDEN).unlink()
    m = artifacts.read(out)
    from dataclasses import replace

    artifacts.write(out, replace(m, files=tuple(e for e in m.files if e.file != golden.GOLDEN)))
    assert main(["parity", "--golden", str(out)]) == 2
    assert "no golden.npz" in capsys.readouterr().err


# ---- a bundle on the "board" ---------------------------------------------------------------------------------
def test_bundle_run_sh_check_passes_then_fails_when_outputs_disagree(tmp_path):
    from tledge.devices.bundle import make_bundle

    res = make_bundle(TINY, "rpi5", tmp_path / "b.tar.gz")
    with tarfile.open(res.path) as tar:
        tar.extractall(tmp_path / "board", filter="data")
    board = tmp_path / "board" / res.top
    assert (board / "model" / golden.GOLDEN).is_file() and (board / "lib/tledge/cli/parity.py").is_file()
    assert not (board / "lib/tledge/export").exists()
    assert "./run.sh --check" in (board / "README.md").read_text()
    shipped = sorted(p.name for p in (board / "model").iterdir() if p.suffix in (".tflite", ".onnx"))
    site = tmp_path / "site"  # sitecustomize: TensorFlow and Keras cannot be imported on this "board"
    site.mkdir()
    # ... and only the bundle's lib/ provides tledge (not this venv's editable install of the checkout)
    (site / "sitecustomize.py").write_text(BLOCKER + NO_EDITABLE)
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(site)}

    def check(*extra):
        return subprocess.run(["bash", str(board / "run.sh"), "--check", *extra], capture_output=True, text=True,
                              timeout=300, env=env, cwd=tmp_path)

    proc = check("--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(proc.stdout)
    assert sorted(r["file"] for r in rep["results"]) == shipped and rep["passed"]
    keras_file = tmp_path / "model.keras"  # a Keras model on the board: never loaded, the exporter is missing
    with zipfile.ZipFile(keras_file, "w") as z:
        z.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {"layers": []}}))
    proc = subprocess.run([sys.executable, "-m", "tledge", "parity", str(keras_file),
                           str(board / "model"), "--images", str(board / "model")], capture_output=True, text=True,
                          timeout=300, env={**env, "PYTHONPATH": f"{board / 'lib'}:{site}"}, cwd=tmp_path)
    assert proc.returncode == 2 and "no exporter" in proc.stderr and "--golden" in proc.stderr, proc.stderr
    cli = board / "lib/tledge/cli/parity.py"  # the bundle's code is checked before any of it runs
    original = cli.read_bytes()
    cli.write_bytes(original + b"\nopen('RAN', 'w')\n")
    proc = check()
    assert proc.returncode == 2 and "not intact" in proc.stderr and "lib/tledge/cli/parity.py" in proc.stderr
    cli.write_bytes(original)
    (board / "lib" / "sitecustomize.py").write_text("open('RAN', 'w')\n")  # PYTHONPATH=lib/ would run it
    proc = check()
    assert proc.returncode == 2 and "lib/sitecustomize.py (not in the bundle)" in proc.stderr
    assert not (tmp_path / "RAN").exists()
    (board / "lib" / "sitecustomize.py").unlink()
    (board / "model" / "np").mkdir()  # a folder linked into lib/: rglob did not enter it, and its numpy ran
    (board / "model" / "np" / "__init__.py").write_text("open('RAN', 'w')\n")
    (board / "lib" / "numpy").symlink_to("../model/np")
    proc = check()
    assert proc.returncode == 2 and "lib/numpy (a link)" in proc.stderr, proc.stderr
    assert not (tmp_path / "RAN").exists()
    (board / "lib" / "numpy").unlink()
    shutil.rmtree(board / "model" / "np")
    _swap_top1(board / "model" / golden.GOLDEN)
    proc = check()
    assert proc.returncode == 2 and "golden.npz: changed since export" in proc.stderr
    _rehash(board / "model")
    proc = check()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "parity: FAILED" in proc.stdout


def test_golden_without_the_files_runtime_is_exit_2_not_a_disagreement():
    """An install with onnxruntime only (Windows' [runtime]) printed FAIL rows "could not run: MissingDependency" and
    exit 1, "the board disagrees". The files it can run are checked; the others are noted, not failed; with no
    runtime for any file it is exit 2 (the docs: the runtime is not installed)."""
    def golden(blocked):
        code = (f"import sys; sys.modules.update({{m: None for m in {blocked!r}}}); from tledge.cli import main; "
                f"sys.exit(main(['parity', '--golden', {str(TINY)!r}]))")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(REPO)})

    proc = golden(["ai_edge_litert", "tflite_runtime"])  # the ONNX files are checked, the TFLite ones noted
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "model_int8.onnx" in proc.stdout and "FAIL" not in proc.stdout
    assert "model_int8.tflite: not checked" in proc.stdout + proc.stderr
    proc = golden(["ai_edge_litert", "tflite_runtime", "onnxruntime", "onnx"])
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and "nothing was compared" in err, proc.stdout + err


def test_a_folder_replaced_during_the_check_is_checked_again(tmp_path, monkeypatch):
    """parity --golden while an export swapped the folder: three files of the old export and one of the new were
    compared with the old golden file (a false FAIL, exit 1). The manifest leaves first and comes back last, so a
    check during which it changed is run again."""
    d = tmp_path / "e"
    shutil.copytree(TINY, d)
    real, calls = golden.check_file, []

    def swapping(path, *a, **k):
        calls.append(path.name)
        if len(calls) == 1:  # the swap lands now: the manifest is another file (same content, a new inode)
            shutil.copy(d / artifacts.MANIFEST, tmp_path / "m.json")
            os.replace(tmp_path / "m.json", d / artifacts.MANIFEST)
        return real(path, *a, **k)

    monkeypatch.setattr(golden, "check_file", swapping)
    report = golden.check(d)
    assert report.passed and len(calls) == 2 * len(report.results)  # the first pass was thrown away


def test_a_bundle_whose_own_model_cannot_run_on_the_board_is_exit_2(tmp_path):
    """Outside audit of 2026-12-08: a Jetson bundle (its model an ONNX file) on a board without onnxruntime said
    "parity: PASSED", exit 0, on its LiteRT fallback alone; `./run.sh` then failed. The file run.sh runs not being
    checked is exit 2 (the bundle README: "the runtime of the model `./run.sh` runs is missing"); a folder that is not a bundle keeps
    checking what it can (above)."""
    import json

    from tledge.devices.bundle import make_bundle

    res = make_bundle(TINY, "jetson-orin", tmp_path / "b.tar.gz")
    with tarfile.open(res.path) as tar:
        tar.extractall(tmp_path / "board", filter="data")
    board = tmp_path / "board" / res.top
    model = json.loads((board / "bundle.json").read_text())["model"]
    assert model.endswith(".onnx") and (board / "model" / "model_int8.tflite").is_file(), model
    code = ("import sys; sys.modules.update({m: None for m in ('onnxruntime', 'onnx')}); from tledge.cli import main; "
            f"sys.exit(main(['parity', '--golden', {str(board / 'model')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and f"{model.split('/')[-1]}, the model ./run.sh runs, cannot run here" in err[-1], \
        proc.stdout + proc.stderr
