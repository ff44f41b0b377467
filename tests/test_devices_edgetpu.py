"""Edge TPU helpers: the delegate (present / missing), edgetpu_compile with a fake compiler that prints
the real compiler's log format, parsing that log, and the Edge TPU -> CPU file fallback."""
from __future__ import annotations

import json
import os
import stat
import warnings

import pytest

from tledge.devices import edgetpu_compile, load_edgetpu_delegate
from tledge.devices import edgetpu as edgetpu_mod
from tledge.devices.edgetpu import parse_compiler_log
from tledge.errors import TledgeError, TledgeWarning


# ---- Edge TPU ----------------------------------------------------------------------------------------
def test_edgetpu_delegate_missing_warns_and_returns_none():
    with pytest.warns(TledgeWarning, match="libedgetpu1-std"):
        assert load_edgetpu_delegate() is None  # no Edge TPU runtime on this machine


def test_edgetpu_delegate_loaded_when_present(monkeypatch):
    calls = []

    def fake_load(lib, options):
        calls.append((lib, options))
        return "DELEGATE"

    monkeypatch.setattr(edgetpu_mod, "delegate_loaders", lambda: [("fake", fake_load)])
    monkeypatch.setattr(edgetpu_mod, "missing_library", lambda lib: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_edgetpu_delegate("usb:0") == "DELEGATE"
    assert calls == [(edgetpu_mod.edgetpu_library(), {"device": "usb:0"})]

    def failing_load(lib, options):
        raise ValueError("Failed to load delegate from libedgetpu.so.1\n")

    monkeypatch.setattr(edgetpu_mod, "delegate_loaders", lambda: [("fake", failing_load)])
    with pytest.warns(TledgeWarning, match="fake: Failed to load delegate"):
        assert load_edgetpu_delegate() is None
    monkeypatch.setattr(edgetpu_mod, "delegate_loaders", lambda: [])
    with pytest.warns(TledgeWarning, match="pip install ai-edge-litert"):
        assert load_edgetpu_delegate() is None


PARTIAL_LOG = """Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 1170 ms.

Input model: {src}
Input size: 3.39MiB
Output model: {out}
Output size: 3.88MiB
On-chip memory used for caching model parameters: 3.70MiB
On-chip memory remaining for caching model parameters: 4.25MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 32
Operation log: {log}

Model successfully compiled but not all operations are supported by the Edge TPU. A percentage of the model will instead run on the CPU, which is slower. If possible, consider updating your model to use only operations supported by the Edge TPU. For details, visit g.co/coral/model-reqs.
Number of operations that will run on Edge TPU: 30
Number of operations that will run on CPU: 2

Operator                       Count      Status

CONV_2D                        20         Mapped to Edge TPU
DEPTHWISE_CONV_2D              8          Mapped to Edge TPU
MEAN                           1          Mapped to Edge TPU
FULLY_CONNECTED                1          Mapped to Edge TPU
SOFTMAX                        1          Operation is working on an unsupported data type
DEQUANTIZE                     1          Operation is working on an unsupported data type
Compilation child process completed within timeout period.
Compilation succeeded!
"""

FAKE_COMPILER = """#!/bin/sh
# stands in for edgetpu_compiler: same arguments, same output file name, the real log format
out=.
model=
while [ $# -gt 0 ]; do
  case "$1" in
    -o|--out_dir) out=$2; shift 2 ;;
    -*) shift ;;
    *) model=$1; shift ;;
  esac
done
if [ "${FAKE_EDGETPU_FAIL:-}" = 1 ]; then
  echo "Edge TPU Compiler version 16.0.384591198"
  echo "ERROR: Attempting to use a delegate that only supports static-sized tensors"
  echo "Compilation failed!"
  exit 1
fi
base=$(basename "$model" .tflite)
cp "$model" "$out/${base}_edgetpu.tflite"
sed -e "s|{src}|$model|" -e "s|{out}|$out/${base}_edgetpu.tflite|" -e "s|{log}|$out/${base}_edgetpu.log|" <<'EOF'
@LOG@EOF
"""


def install_fake_compiler(tmp_path, monkeypatch):
    """The stand-in edgetpu_compiler first on PATH (also for other test modules)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "edgetpu_compiler"
    script.write_text(FAKE_COMPILER.replace("@LOG@", PARTIAL_LOG))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return script


@pytest.fixture
def fake_compiler(tmp_path, monkeypatch):
    return install_fake_compiler(tmp_path, monkeypatch)


def test_edgetpu_compile_without_compiler_says_how(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    src = tmp_path / "model_int8.tflite"
    src.write_bytes(b"0000TFL3")
    res = edgetpu_compile(src)
    assert not res.compiled and res.output is None
    assert res.command_line == f"edgetpu_compiler -s -o {tmp_path} {src}"
    assert "x86-64" in res.message and "apt-get install edgetpu-compiler" in res.message
    assert res.command_line in res.summary()


def test_edgetpu_compile_with_fake_compiler(tmp_path, fake_compiler):
    src = tmp_path / "model_int8.tflite"
    src.write_bytes(b"0000TFL3 fake model")
    res = edgetpu_compile(src, tmp_path / "compiled")
    assert res.compiled, res.message
    assert res.output == tmp_path / "compiled" / "model_int8_edgetpu.tflite" and res.output.is_file()
    assert (res.ops_total, res.ops_on_tpu, res.ops_on_cpu, res.subgraphs) == (32, 30, 2, 1)
    assert not res.fully_mapped and "30 of 32 ops on the Edge TPU" in res.summary()


def test_edgetpu_compile_failure(tmp_path, fake_compiler, monkeypatch):
    monkeypatch.setenv("FAKE_EDGETPU_FAIL", "1")
    src = tmp_path / "model_int8.tflite"
    src.write_bytes(b"0000TFL3")
    res = edgetpu_compile(src)
    assert not res.compiled and "exit 1" in res.message and "Compilation failed" in res.message


def test_parse_compiler_log_variants():
    full = ("Model compiled successfully in 900 ms.\nNumber of Edge TPU subgraphs: 1\n"
            "Total number of operations: 66\nOperation log: m_edgetpu.log\nSee the operation log file "
            "for individual operation details.\nCompilation succeeded!\n")
    assert parse_compiler_log(full)["ops_on_tpu"] == 66 and parse_compiler_log(full)["ops_on_cpu"] == 0
    table_only = ("Operator                       Count      Status\n\n"
                  "CONV_2D                        5          Mapped to Edge TPU\n"
                  "LOGISTIC                       1          More than one subgraph is not supported\n")
    info = parse_compiler_log(table_only)
    assert (info["ops_on_tpu"], info["ops_on_cpu"], info["ops_total"]) == (5, 1, 6)


def test_edgetpu_file_falls_back_to_the_cpu_file(tmp_path):
    from conftest import shared_asset

    from tledge.devices import load_for_device

    src = shared_asset("coral_tflite_classifiers", "mobilenet_v1_0.25_128_quant.tflite")
    (tmp_path / "model_int8.tflite").write_bytes(src.read_bytes())
    (tmp_path / "model_int8_edgetpu.tflite").write_bytes(src.read_bytes())
    with pytest.warns(TledgeWarning, match="Edge TPU runtime .* not found"):
        m = load_for_device(tmp_path / "model_int8_edgetpu.tflite", "coral-usb")
    assert m.path.name == "model_int8.tflite"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a plain file does not try the Edge TPU
        assert load_for_device(tmp_path / "model_int8.tflite", "coral-usb").path.name == "model_int8.tflite"


def test_run_with_the_coral_profile_falls_back_as_the_library_does(tmp_path, capsys):
    """`tledge run model_int8_edgetpu.tflite --device coral-usb` without libedgetpu warned "Running on the CPU
    instead" and then failed (exit 2); load_for_device fell back. The CLI (and a Coral bundle's run.sh) now do too."""
    from tiny import TINY

    from tledge.cli import main
    from tledge.runtime import load

    (tmp_path / "model_int8.tflite").write_bytes((TINY / "model_int8.tflite").read_bytes())
    (tmp_path / "model_int8_edgetpu.tflite").write_bytes((TINY / "model_int8.tflite").read_bytes())
    image = TINY / "images" / "circle_circle_000.jpg"
    with pytest.warns(TledgeWarning, match="Edge TPU runtime .* not found"):
        assert main(["run", str(tmp_path / "model_int8_edgetpu.tflite"), "--device", "coral-usb", "--source",
                     str(image), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["top"][0]["label"] == "circle"
    assert "model_int8.tflite, the same model for the CPU, runs instead" in err
    (tmp_path / "model_int8.tflite").unlink()
    with pytest.warns(TledgeWarning, match="Edge TPU runtime"), pytest.raises(TledgeError, match="no model_int8.tflite"):
        load(tmp_path / "model_int8_edgetpu.tflite", device="coral-usb")
