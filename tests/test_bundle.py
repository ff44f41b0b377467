"""Deploy bundles from an export folder of placeholder files: choice of files, requirements, run.sh,
manifest, Edge TPU compilation, atomic writing, the CLI. (The end-to-end run is test_bundle_e2e.py.)"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from tledge import artifacts
from tledge.cli import main
from tledge.contract import Contract
from tledge.devices import bundle as bundle_mod
from tledge.devices.bundle import make_bundle
from tledge.errors import TledgeError, TledgeWarning

MODEL_FILES = ("model_fp32.tflite", "model_int8.tflite", "model_fp16.tflite", "model_dynamic.tflite",
               "model_fp32.onnx", "model_int8.onnx")


@pytest.fixture
def export_dir(tmp_path) -> Path:
    d = tmp_path / "export"
    d.mkdir()
    for name in MODEL_FILES:
        (d / name).write_bytes(f"placeholder {name}".encode())
    Contract(height=8, width=8, labels=("ant", "bee")).save(d / "tledge.json")
    (d / "labels.txt").write_text("ant\nbee\n")
    (d / "parity.json").write_text("{}\n")
    (d / "parity.md").write_text("# parity\n")
    (tmp_path / "model.keras").write_bytes(b"placeholder model")
    artifacts.write(d, artifacts.build(d, tmp_path / "model.keras", {n: (True, {}) for n in MODEL_FILES}))
    return d


def read_tar(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return {m.name: m for m in tar.getmembers()}


def member_text(path: Path, name: str) -> str:
    with tarfile.open(path) as tar:
        return tar.extractfile(name).read().decode()


def test_rpi4_bundle_contents(export_dir, tmp_path):
    out = tmp_path / "dist" / "pi.tar.gz"
    res = make_bundle(export_dir, "rpi4", out)
    assert res.path == out and res.top == "pi" and res.model == "model_int8.tflite" and res.fallback is None
    members = read_tar(out)
    top = "pi/"
    for rel in ("model/model_int8.tflite", "model/tledge.json", "model/labels.txt", "model/parity.json",
                "requirements.txt", "run.sh", "README.md", "bundle.json", "lib/tledge/__init__.py",
                "lib/tledge/runtime/model.py", "lib/tledge/devices/profiles.py", "lib/tledge/cli/__init__.py"):
        assert top + rel in members, rel
    assert not any(n.startswith((top + "lib/tledge/export", top + "lib/tledge/train")) for n in members)
    assert top + "lib/tledge/layers.py" not in members and top + "model/model_fp32.tflite" not in members
    assert members[top + "run.sh"].mode & stat.S_IXUSR
    reqs = member_text(out, top + "requirements.txt")
    assert "ai-edge-litert==" in reqs and "numpy==" in reqs and "opencv-python-headless==" in reqs
    assert "tensorflow" not in reqs.lower().replace("no tensorflow", "") and "onnxruntime" not in reqs
    run_sh = member_text(out, top + "run.sh")
    assert "MODEL=${MODEL:-model_int8.tflite}" in run_sh
    assert '-c "$TLEDGE" "$HERE/lib" run "$HERE/model/$MODEL" $OWN "$@"' in run_sh
    assert "DEVICE=rpi4\nTHREADS=\"\"\n" in run_sh and "_edgetpu" not in run_sh
    assert "SOURCE=0" in run_sh
    subprocess.run(["sh", "-n", "-"], input=run_sh, text=True, check=True)
    readme = member_text(out, top + "README.md")
    assert "--system-site-packages" in readme and "tledge bench" in readme and "picamera2" in readme


def test_manifest_hashes_every_file(export_dir, tmp_path):
    res = make_bundle(export_dir, "x86-cpu", tmp_path / "b.tar.gz")
    manifest = json.loads(member_text(res.path, "b/bundle.json"))
    assert manifest["device"] == "x86-cpu" and manifest["model"] == "model/model_int8.tflite"
    assert manifest["options"]["backend"] == "tflite"
    with tarfile.open(res.path) as tar:
        for rel, digest in manifest["sha256"].items():
            assert hashlib.sha256(tar.extractfile(f"b/{rel}").read()).hexdigest() == digest
    assert set(manifest["sha256"]) | {"bundle.json"} == {n[2:] for n in read_tar(res.path) if n.startswith("b/")}


def test_pins_are_this_machines_versions(export_dir, tmp_path):
    from importlib.metadata import version

    res = make_bundle(export_dir, "rpi5", tmp_path / "b.tar.gz")
    reqs = member_text(res.path, "b/requirements.txt")
    assert f"ai-edge-litert=={version('ai-edge-litert')}; python_version ==" in reqs
    assert "ai-edge-litert>=2.3; python_version !=" in reqs


def test_jetson_bundle_uses_onnx_and_no_pypi_onnxruntime(export_dir, tmp_path):
    res = make_bundle(export_dir, "jetson-orin", tmp_path / "j.tar.gz")
    assert (res.model, res.fallback) == ("model_fp32.onnx", "model_int8.tflite")
    reqs = member_text(res.path, "j/requirements.txt")
    assert "onnxruntime-gpu" in reqs and "Jetson_Zoo" in reqs
    assert "onnxruntime==" not in reqs and "\nonnxruntime" not in reqs
    assert "numpy>=1.23,<2" in reqs and "opencv-python-headless" not in reqs
    assert "trt_engine_cache_enable" in json.dumps(res.options.to_dict())
    readme = member_text(res.path, "j/README.md")
    assert ".venv/bin/pip install onnxruntime-gpu" in readme and "MODEL=model_int8.tflite ./run.sh" in readme


def test_explicit_format_and_precision_win(export_dir, tmp_path):
    res = make_bundle(export_dir, "rpi4", tmp_path / "b.tar.gz", backend="onnx")
    assert res.model == "model_int8.onnx"
    assert "onnxruntime==" in member_text(res.path, "b/requirements.txt")
    res = make_bundle(export_dir, "rpi4", tmp_path / "c.tar.gz", precision="fp32", threads=2)
    assert res.model == "model_fp32.tflite" and res.options.threads == 2
    assert "DEVICE=rpi4\nTHREADS=2\n" in member_text(res.path, "c/run.sh")


def test_falls_back_along_the_preference_list(export_dir, tmp_path):
    assert not any("best file" in n for n in make_bundle(export_dir, "rpi4", tmp_path / "a.tar.gz").notes)
    (export_dir / "model_int8.tflite").unlink()
    res = make_bundle(export_dir, "rpi4", tmp_path / "b.tar.gz")
    assert res.model == "model_fp32.tflite"  # and it says so (it shipped the next file silently)
    assert any("rpi4's best file, model_int8.tflite, is not in the export" in n for n in res.notes), res.notes
    for f in export_dir.glob("model_*"):
        f.unlink()
    with pytest.raises(TledgeError, match="no usable model file"):
        make_bundle(export_dir, "rpi4", tmp_path / "c.tar.gz")
    assert not (tmp_path / "c.tar.gz").exists()


def test_coral_without_compiler_ships_int8_and_says_how(export_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    if shutil.which("edgetpu_compiler"):
        pytest.skip("a real edgetpu_compiler is installed here")
    res = make_bundle(export_dir, "coral-usb", tmp_path / "c.tar.gz")
    assert res.model == "model_int8.tflite" and res.fallback is None
    # the command names the export folder, not the bundle's temporary one (gone once the bundle is written)
    assert any(f"edgetpu_compiler -s -o {export_dir} {export_dir / 'model_int8.tflite'}" in n for n in res.notes), \
        res.notes
    readme = member_text(res.path, "c/README.md")
    assert "edgetpu_compiler" in readme and "libedgetpu1-std" in readme
    assert "libedgetpu1-std" in member_text(res.path, "c/requirements.txt")


def test_coral_with_compiler_ships_the_compiled_file(export_dir, tmp_path, monkeypatch):
    from test_devices_edgetpu import install_fake_compiler

    install_fake_compiler(tmp_path, monkeypatch)
    res = make_bundle(export_dir, "coral-usb", tmp_path / "c.tar.gz")
    assert (res.model, res.fallback) == ("model_int8_edgetpu.tflite", "model_int8.tflite")
    assert res.options.delegates == ("libedgetpu.so.1",)
    assert any("30 of 32 ops on the Edge TPU" in n and n.endswith("-> model/model_int8_edgetpu.tflite")
               for n in res.notes)  # not the bundle's temporary folder, gone when the user reads it
    assert "c/model/model_int8_edgetpu.tflite" in read_tar(res.path)
    run_sh = member_text(res.path, "c/run.sh")
    assert 'case "$MODEL" in *_edgetpu.tflite) ;; *) DEVICE="" ;; esac' in run_sh
    subprocess.run(["sh", "-n", "-"], input=run_sh, text=True, check=True)
    assert not list(export_dir.glob("*_edgetpu*"))  # the export folder is left alone


def test_coral_bundle_takes_a_file_compiled_by_hand_as_the_docs_say(tmp_path, monkeypatch):
    """`edgetpu_compiler -s -o out/ out/model_int8.tflite`, then `tledge bundle out/ --device coral-usb`: the
    compiled file was "not in manifest.json: not used" and the CPU int8 file shipped."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    if shutil.which("edgetpu_compiler"):
        pytest.skip("a real edgetpu_compiler is installed here")
    from test_edgetpu_fallback import _rescaled_output
    from tiny import TINY, edgetpu_stand_in

    export_dir = tmp_path / "e"
    shutil.copytree(TINY, export_dir)
    compiled = export_dir / "model_int8_edgetpu.tflite"
    other = tmp_path / "other_int8.tflite"  # another calibration of the same graph: the same shapes
    other.write_bytes(_rescaled_output((export_dir / "model_int8.tflite").read_bytes()))
    for bad, why in ((b"", "not a readable TFLite file"),
                     ((export_dir / "model_int8.tflite").read_bytes(), "it has no edgetpu-custom-op"),
                     (edgetpu_stand_in(other), "quantisation differs")):
        compiled.write_bytes(bad)  # an empty file, a copy: shipped as the primary model with the int8 verdict
        with pytest.raises(TledgeError, match=why):
            make_bundle(export_dir, "coral-usb", tmp_path / "c.tar.gz")
        assert not (tmp_path / "c.tar.gz").exists()
    compiled.write_bytes(edgetpu_stand_in(export_dir / "model_int8.tflite"))  # stands in for the compiler's output
    res = make_bundle(export_dir, "coral-usb", tmp_path / "c.tar.gz")
    assert (res.model, res.fallback) == ("model_int8_edgetpu.tflite", "model_int8.tflite")
    assert any("compiled outside tledge, unverified" in n for n in res.notes) and not any("not in" in n for n in res.notes)
    manifest = json.loads(member_text(res.path, "c/model/manifest.json"))
    assert "model_int8_edgetpu.tflite" in {e["file"] for e in manifest["files"]}
    os.utime(compiled, (0, 0))  # older than the int8 file: compiled from another export, not used
    res = make_bundle(export_dir, "coral-usb", tmp_path / "d.tar.gz")
    assert res.model == "model_int8.tflite"


def test_coral_bundle_check_without_the_edge_tpu_runtime_is_exit_2(tmp_path, monkeypatch, capsys):
    """On a board without libedgetpu, `run.sh --check` (parity --golden --device coral-usb) failed the compiled file
    as "the board disagrees" (exit 1): the runtime is missing, which is exit 2, and nothing is compared."""
    from tiny import TINY

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    if shutil.which("edgetpu_compiler"):
        pytest.skip("a real edgetpu_compiler is installed here")
    export = tmp_path / "e"
    shutil.copytree(TINY, export)
    from tiny import edgetpu_stand_in

    (export / "model_int8_edgetpu.tflite").write_bytes(edgetpu_stand_in(export / "model_int8.tflite"))  # "compiled"
    res = make_bundle(export, "coral-usb", tmp_path / "c.tar.gz")
    assert res.model == "model_int8_edgetpu.tflite"
    with tarfile.open(res.path) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    with pytest.warns(TledgeWarning, match="Edge TPU runtime libedgetpu.so.1 not found"):
        rc = main(["parity", "--golden", str(tmp_path / "x" / "c"), "--device", "coral-usb"])
    err = capsys.readouterr().err
    assert rc == 2 and "model_int8_edgetpu.tflite needs the Edge TPU runtime, which is not installed" in err, err


def test_not_an_export_folder(tmp_path):
    with pytest.raises(TledgeError, match="not a tledge export folder"):
        make_bundle(tmp_path, "rpi4", tmp_path / "x.tar.gz")


def test_failure_leaves_no_file(export_dir, tmp_path, monkeypatch):
    out = tmp_path / "dist" / "b.tar.gz"

    def boom():
        raise RuntimeError("disk full")

    monkeypatch.setattr(bundle_mod, "vendored_sources", boom)
    with pytest.raises(RuntimeError):
        make_bundle(export_dir, "rpi4", out)
    assert list(out.parent.iterdir()) == []


def test_cli_bundle(export_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bundle", str(export_dir), "--device", "rpi-zero2w"]) == 0
    assert (tmp_path / "export-rpi-zero2w.tar.gz").is_file()
    assert "model/model_int8.tflite" in capsys.readouterr().out
    assert main(["bundle", str(export_dir), "--device", "jetson-nano", "--out", "j.tar.gz", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "model_fp32.onnx"
    readme = member_text(tmp_path / "j.tar.gz", "j/README.md")  # JetPack 4's python3 is 3.6: pyenv's makes .venv
    install = readme.split("## Install (once)")[1].split("## ")[0]
    assert "pyenv install 3.11 && ~/.pyenv/versions/3.11*/bin/python -m venv .venv" in install
    assert "python3 -m venv" not in install and "(3.9)" not in readme
    # that venv sees nothing of JetPack's: OpenCV and onnxruntime (CPU) come from PyPI, as run.sh's hint says
    reqs = member_text(tmp_path / "j.tar.gz", "j/requirements.txt")
    assert "\nopencv-python-headless" in reqs and "\nonnxruntime" in reqs and "onnxruntime-gpu" not in reqs, reqs
    run_sh = member_text(tmp_path / "j.tar.gz", "j/run.sh")
    assert "~/.pyenv/versions/3.11*/bin/python -m venv .venv && .venv/bin/pip install -r" in run_sh
    assert "python3 -m venv" not in run_sh and "come from JetPack" not in run_sh
    assert "numpy<2" not in reqs.replace(" ", "")  # pip's OpenCV 4.11+ needs numpy 2: the two could not install
    assert main(["bundle", str(export_dir), "--device", "nope"]) == 2
    assert "unknown device" in capsys.readouterr().err


def test_out_names_that_unpack_to_no_folder_are_refused(export_dir, tmp_path):
    """--out .tar.gz / ...tgz / ..tgz made members /model/..., ../model/... (outside the folder) or ./model/..."""
    for name in (".tar.gz", "...tgz", "..tgz"):
        with pytest.raises(TledgeError, match="is no folder name"):
            make_bundle(export_dir, "rpi4", tmp_path / name)
        assert not (tmp_path / name).exists()


def test_cli_says_when_the_profiles_best_file_is_missing(export_dir, tmp_path, capsys):
    """The note "rpi4's best file ... ships instead" reached library callers only: the CLI passes every option
    (unset = None), which counted as an explicit choice."""
    (export_dir / "model_int8.tflite").unlink()
    m = json.loads((export_dir / "manifest.json").read_text())
    m["files"] = [f for f in m["files"] if f["file"] != "model_int8.tflite"]
    (export_dir / "manifest.json").write_text(json.dumps(m))
    assert main(["bundle", str(export_dir), "--device", "rpi4", "--out", str(tmp_path / "b.tar.gz")]) == 0
    out, err = capsys.readouterr()
    assert "rpi4's best file, model_int8.tflite, is not in the export" in out + err


def test_coral_bundle_of_an_int8_file_with_float_layers_says_so(export_dir, tmp_path, monkeypatch):
    """A coral-usb bundle of a CPU export shipped an int8 file with a float stem of 6 convolutions (the repair's):
    the Edge TPU runs only the ops before the first float one, and nothing said so."""
    pytest.importorskip("tensorflow")
    from tiny import TINY

    from tledge.devices.edgetpu import float_notes
    from tledge.export.metadata import embed_tflite
    from tledge.metadata import read_tflite_contract

    data = (TINY / "model_int8.tflite").read_bytes()
    assert float_notes(TINY / "model_int8.tflite") == []  # an all-int8 file: nothing to say
    c = read_tflite_contract(data)
    (export_dir / "model_int8.tflite").write_bytes(
        embed_tflite(data, c.replace(extra={**c.extra, "float_layers": ["conv1", "conv_dw_1"]})))
    artifacts.write(export_dir, artifacts.build(export_dir, tmp_path / "model.keras",
                                                {n: (True, {}) for n in MODEL_FILES}))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    if shutil.which("edgetpu_compiler"):
        pytest.skip("a real edgetpu_compiler is installed here")
    res = make_bundle(export_dir, "coral-usb", tmp_path / "c.tar.gz")
    assert any(n.startswith("model_int8.tflite keeps 2 float layers (int8 repair) float: on the Edge TPU only")
               for n in res.notes), res.notes
    # the stem repair names a count, not layers (`float_convolutions`): the note was missing for it
    (export_dir / "model_int8.tflite").write_bytes(embed_tflite(data, c.replace(extra={**c.extra,
                                                                                   "float_convolutions": 6})))
    assert float_notes(export_dir / "model_int8.tflite") and float_notes(export_dir / "model_int8.tflite")[0] \
        .startswith("model_int8.tflite keeps a float stem of 6 convolutions (int8 repair) float: a float stem is at "
                    "the input, so none of it runs on the Edge TPU")  # (it said "the ops before the first float one")


def test_readme_installs_the_system_packages_before_making_the_venv(export_dir, tmp_path):
    """The Pi README made the venv first and said `apt install python3-venv` afterwards: on a board without
    python3-venv, following it from the top failed at its first line."""
    for device, apt in (("rpi5", "sudo apt install -y python3-venv"), ("coral-usb", "sudo apt-get install -y")):
        out = tmp_path / f"{device}.tar.gz"
        make_bundle(export_dir, device, out)
        install = member_text(out, f"{device}/README.md").split("## Install (once)")[1].split("## ")[0]
        assert install.index(apt) < install.index("-m venv") < install.index("pip install -r requirements.txt")
    out = tmp_path / "orin.tar.gz"  # and what goes into the venv after it is made
    make_bundle(export_dir, "jetson-orin", out)
    install = member_text(out, "orin/README.md").split("## Install (once)")[1].split("## ")[0]
    assert install.index("-m venv") < install.index(".venv/bin/pip install onnxruntime-gpu")


def test_a_jetson_nano_bundle_asks_for_an_onnxruntime_its_glibc_has(export_dir, tmp_path):
    """JetPack 4 is Ubuntu 18.04 (glibc 2.27): PyPI's aarch64 onnxruntime 1.29+ wheels need glibc 2.28, and the
    bundle pinned this machine's 1.31 (`No matching distribution found for onnxruntime==1.31.1` on the board)."""
    out = tmp_path / "nano.tar.gz"
    make_bundle(export_dir, "jetson-nano", out)
    lines = [ln for ln in member_text(out, "nano/requirements.txt").splitlines() if ln.startswith("onnxruntime")]
    assert lines and all(ln.split("#")[0].strip() == "onnxruntime>=1.20,<1.29" for ln in lines), lines


def test_run_sh_without_a_home_keeps_its_bytecode_in_the_temporary_folder(export_dir, tmp_path):
    """No HOME (a service, `env -i`): run.sh used /nonexistent/.cache/tledge, which root can create."""
    out = tmp_path / "pi.tar.gz"
    make_bundle(export_dir, "rpi4", out)
    text = member_text(out, "pi/run.sh")
    part = text[text.index('if [ -z "${PYTHONPYCACHEPREFIX:-}" ]'):text.index("export PYTHONPYCACHEPREFIX")]
    tmp = tmp_path / "t"
    tmp.mkdir()
    env = {"PATH": os.environ["PATH"], "TMPDIR": str(tmp)}
    got = subprocess.run(["sh", "-c", part + 'echo "$PYTHONPYCACHEPREFIX"'], capture_output=True, text=True,
                         env=env, check=True).stdout.strip()
    assert got == f"{tmp}/tledge-pycache-{os.getuid()}", got
    home = tmp_path / "home"
    got = subprocess.run(["sh", "-c", part + 'echo "$PYTHONPYCACHEPREFIX"'], capture_output=True, text=True,
                         env={**env, "HOME": str(home)}, check=True).stdout.strip()
    assert got == f"{home}/.cache/tledge/pycache", got


def test_run_sh_run_by_the_tests_keeps_its_bytecode_out_of_the_users_cache(export_dir, tmp_path):
    """The bundles the tests run, run.sh given the tests' environment, kept their compiled code in the user's
    ~/.cache/tledge/pycache: a tree of each session's pytest folders (45 MB in a day). The tests give run.sh a cache
    of the session's own (tests/conftest.py: XDG_CACHE_HOME in its temporary folder)."""
    if os.environ.get("PYTHONPYCACHEPREFIX"):
        pytest.skip("PYTHONPYCACHEPREFIX is set: run.sh uses it, as the user asked")
    out = tmp_path / "pi.tar.gz"
    make_bundle(export_dir, "rpi4", out)
    text = member_text(out, "pi/run.sh")
    part = text[text.index('if [ -z "${PYTHONPYCACHEPREFIX:-}" ]'):text.index("export PYTHONPYCACHEPREFIX")]
    got = Path(subprocess.run(["sh", "-c", part + 'echo "$PYTHONPYCACHEPREFIX"'], capture_output=True, text=True,
                              env=dict(os.environ), check=True).stdout.strip())
    user_cache = Path(os.path.expanduser("~"), ".cache")
    assert not got.is_relative_to(user_cache), got
    assert got.is_relative_to(os.environ["TMPDIR"]), got  # the session's own folder, removed at its end


def test_profiles_do_not_claim_systems_their_bundles_cannot_install_on():
    """x86-cpu said "Linux, macOS, Windows", but its bundle ships a TFLite file that has no runtime wheels on Windows
    or Intel Macs; coral-usb said any Debian/Ubuntu/Pi OS host, but ai-edge-litert 2.3 needs Python >= 3.10."""
    from tledge.devices.profiles import PROFILES

    x86 = PROFILES["x86-cpu"]
    assert "Windows" not in x86.os.split("(")[0] and "Linux" in x86.os
    assert "Python >= 3.10" in PROFILES["coral-usb"].os
    assert any("ml_dtypes<0.6" in n for n in PROFILES["rpi5"].notes)


def test_readme_comments_go_with_the_command_after_them(export_dir, tmp_path):
    """The Jetson Orin README put the lines explaining the onnxruntime-gpu install before the venv, and the command
    they explain after it."""
    out = tmp_path / "orin.tar.gz"
    make_bundle(export_dir, "jetson-orin", out)
    install = member_text(out, "orin/README.md").split("## Install (once)")[1].split("## ")[0]
    venv = install.index("-m venv")
    why = install.index("# PyPI has no aarch64 onnxruntime-gpu")
    assert venv < why < install.index(".venv/bin/pip install onnxruntime-gpu")
