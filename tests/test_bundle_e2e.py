"""End to end: a real (tiny) export (the committed tests/assets/tiny) -> `tledge bundle` -> unpacked into a
fresh venv that has only the bundle's requirements.txt -> same predictions as the export folder and as Keras,
and TensorFlow never imported.

Needs pip reaching PyPI or its cache (not TensorFlow).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import USER_XDG_CACHE_HOME
from tiny import CLASSES, IMAGES, TINY, images_of, keras_label

from tledge.devices.bundle import make_bundle

SNIPPET = r"""
import json, sys
from tledge.devices import load_for_device
from tledge.runtime import load
model_path, images = sys.argv[1], sys.argv[2:]
a = load(model_path).classify(images, top_k=3)
b = load_for_device(model_path, "x86-cpu").classify(images, top_k=3)
import tledge
print(json.dumps({
    "preds": [[[p.index, p.label, p.score] for p in row] for row in a],
    "same_via_device": [[p.index for p in r] for r in a] == [[p.index for p in r] for r in b],
    "heavy": sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras")),
    "tensorflow_installed": __import__("importlib.util").util.find_spec("tensorflow") is not None,
    "tledge_file": tledge.__file__,
}))
"""


@pytest.fixture(scope="module")
def export() -> tuple[Path, list[Path]]:
    """The committed tiny export (manifest, golden outputs and all) and two images of each class."""
    return TINY, [p for c in CLASSES for p in images_of(c)[:2]]


@pytest.fixture(scope="module")
def unpacked(export, tmp_path_factory) -> Path:
    d, _ = export
    work = tmp_path_factory.mktemp("bundle")
    res = make_bundle(d, "x86-cpu", work / "tiny-x86.tar.gz")
    assert res.model == "model_int8.tflite"
    with tarfile.open(res.path) as tar:
        tar.extractall(work / "board", filter="data")
    return work / "board" / res.top


@pytest.fixture(scope="module")
def venv_python(unpacked) -> Path:
    """A clean venv (no --system-site-packages) with only the bundle's requirements."""
    venv = unpacked / ".venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"}  # pip's cache: the user's (conftest.py)
    env.update({"XDG_CACHE_HOME": USER_XDG_CACHE_HOME} if USER_XDG_CACHE_HOME else {})
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           "-r", str(unpacked / "requirements.txt")],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, f"pip install -r requirements.txt failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return py


def _clean_env(**extra: str) -> dict:
    # (XDG_CACHE_HOME: the tests' own, conftest.py; run.sh keeps its compiled code there, not in the user's cache)
    keep = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR", "XDG_CACHE_HOME") if k in os.environ}
    return {**keep, "PYTHONNOUSERSITE": "1", **extra}


def test_bundle_predicts_like_the_export_in_a_clean_venv(export, unpacked, venv_python):
    from tledge.runtime import load

    d, images = export
    proc = subprocess.run([str(venv_python), "-c", SNIPPET, str(unpacked / "model" / "model_int8.tflite"),
                           *map(str, images)], capture_output=True, text=True, timeout=300,
                          env=_clean_env(PYTHONPATH=str(unpacked / "lib")), cwd=unpacked)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["heavy"] == [] and not got["tensorflow_installed"]
    assert Path(got["tledge_file"]).is_relative_to(unpacked / "lib")
    assert got["same_via_device"]
    want = load(d / "model_int8.tflite").classify(images, top_k=3)
    for row_got, row_want in zip(got["preds"], want):
        assert [p[0] for p in row_got] == [p.index for p in row_want]
        assert [p[1] for p in row_got] == [p.label for p in row_want]
        np.testing.assert_allclose([p[2] for p in row_got], [p.score for p in row_want], rtol=1e-6, atol=1e-7)
    assert [row[0][1] for row in got["preds"]] == [keras_label(p) for p in images]


@pytest.mark.skipif(importlib.util.find_spec("tledge.cli.run") is None, reason="tledge run not available")
def test_run_sh_on_a_folder(unpacked, venv_python, tmp_path):
    """Run from a folder holding another tledge/ (a checkout in the board's home): `python -m tledge` ran that one,
    and `./run.sh --check` passed without checking anything."""
    (tmp_path / "tledge").mkdir()
    (tmp_path / "tledge" / "__init__.py").write_text("raise SystemExit('NOT THE BUNDLE')\n")
    (tmp_path / "numpy.py").write_text("open('PWNED', 'w')\n")  # run.sh's import check ran it
    proc = subprocess.run(["sh", str(unpacked / "run.sh"), str(TINY / "images"), "--json", "--top-k", "2"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=_clean_env(PYTHON=str(venv_python)))
    assert "NOT THE BUNDLE" not in proc.stderr and not (tmp_path / "PWNED").exists()
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(rows) == len(IMAGES) and all(r["status"] == "ok" for r in rows)
    assert {Path(r["source"]).name: r["top"][0]["label"] for r in rows} == {p.name: keras_label(p) for p in IMAGES}


@pytest.mark.skipif(importlib.util.find_spec("tledge.cli.run") is None, reason="tledge run not available")
def test_run_sh_options_without_a_source_are_options(unpacked, venv_python):
    """`./run.sh --json` (SOURCE defaults to camera 0, as run.sh's header says) took --json as the source and
    failed "argument --source: expected one argument"; here the options come first, and the user's --source,
    --device and --threads replace run.sh's own (left out, so tledge sees each option once)."""
    image = IMAGES[0]
    proc = subprocess.run(["sh", str(unpacked / "run.sh"), "--json", "--top-k", "1", "--source", str(image),
                           "--device", "x86-cpu", "--threads", "1"],  # the user's win over run.sh's own
                          capture_output=True, text=True, timeout=300, cwd=unpacked,
                          env=_clean_env(PYTHON=str(venv_python)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert [r["top"][0]["label"] for r in rows] == [keras_label(image)]


def test_run_sh_without_runtime_says_how_to_install(unpacked, tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    proc = subprocess.run(["sh", str(unpacked / "run.sh"), "photos"], capture_output=True, text=True,
                          timeout=60, env=_clean_env(PYTHON=str(bare / "bin" / "python")))
    assert proc.returncode == 2
    assert "pip install -r" in proc.stderr and "requirements.txt" in proc.stderr


def test_run_sh_from_a_folder_with_a_colon_through_a_link_with_cdpath(unpacked, venv_python, tmp_path):
    """A bundle unpacked under `co:lon/` (PYTHONPATH split the path: ModuleNotFoundError, or another tledge ran),
    run.sh called through a symbolic link (its folder was the link's), and an exported CDPATH (cd printed the folder:
    HERE got two lines). `./run.sh "$UNSET"` opened camera 0."""
    board = tmp_path / "co:lon" / unpacked.name
    shutil.copytree(unpacked, board, symlinks=True, ignore=shutil.ignore_patterns(".venv"))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "classify").symlink_to(board / "run.sh")
    env = _clean_env(PYTHON=str(venv_python), CDPATH=f".:{tmp_path}")
    for argv in (["--check"], [str(IMAGES[0]), "--json"]):
        proc = subprocess.run(["sh", str(tmp_path / "bin" / "classify"), *argv], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run(["sh", str(board / "run.sh"), "", "--json"], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "source is empty" in proc.stderr, proc.stderr
    proc = subprocess.run(["sh", str(board / "run.sh"), str(IMAGES[0]), "--source", str(IMAGES[1])],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)  # one was dropped
    assert proc.returncode == 2 and "a SOURCE and --source" in proc.stderr, proc.stderr


def test_run_sh_never_runs_compiled_code_planted_beside_lib(unpacked, venv_python, tmp_path):
    """--check hashes lib/'s sources, but Python ran a .pyc in lib/.../__pycache__ whose header names the source's
    time and size instead of that source: a tampered tarball ran its own code, and `--check` passed."""
    import importlib.util
    import marshal

    board = tmp_path / unpacked.name
    shutil.copytree(unpacked, board, symlinks=True, ignore=shutil.ignore_patterns(".venv"))
    src = board / "lib" / "tledge" / "cli" / "__init__.py"
    st = src.stat()
    code = compile("import sys; sys.stderr.write('PLANTED'); sys.exit(7)", str(src), "exec")
    pyc = Path(importlib.util.cache_from_source(str(src)))
    pyc.parent.mkdir(exist_ok=True)
    pyc.write_bytes(importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little") + int(st.st_mtime).to_bytes(4, "little")
                    + (st.st_size & 0xFFFFFFFF).to_bytes(4, "little") + marshal.dumps(code))
    home = {k: v for k, v in _clean_env(PYTHON=str(venv_python), HOME=str(tmp_path)).items() if k != "XDG_CACHE_HOME"}
    homeless = {k: v for k, v in home.items() if k != "HOME"}  # (a service account: the temporary folder's cache)
    for env in (home, homeless):
        for argv in (["--check"], [str(IMAGES[0]), "--json"]):
            proc = subprocess.run(["sh", str(board / "run.sh"), *argv], capture_output=True, text=True, timeout=300,
                                  cwd=tmp_path, env=env)
            assert proc.returncode == 0 and "PLANTED" not in proc.stderr, proc.stderr[-3000:]
