"""tledge doctor: the environment report and the per-file model checks. No TensorFlow needed."""
from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tledge.cli import main
from tledge.runtime import doctor

pytestmark = pytest.mark.runtime_only
TINY = Path(__file__).parent / "assets" / "tiny"

X86 = "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni f16c\n"
PI5 = ("processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp "
       "asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU part\t: 0xd0b\n")
PI4 = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU part\t: 0xd08\n"


def test_cpu_features_read_from_cpuinfo():
    x86, pi5, pi4 = doctor.cpu_info(X86), doctor.cpu_info(PI5), doctor.cpu_info(PI4)
    assert x86["model"] == "AMD EPYC 9R14"
    assert {"avx2", "avx512_vnni", "avx512f", "fma", "f16c"} <= set(x86["features"])
    assert "asimddp" not in x86["features"] and "avx_vnni" not in x86["features"]
    assert {"asimd", "asimddp", "asimdhp"} <= set(pi5["features"])
    assert "asimd" in pi4["features"] and "asimddp" not in pi4["features"]  # Cortex-A72: no dot product


def test_wheels_match_installed_distributions():
    w = doctor.wheels()
    assert w["numpy"] == metadata.version("numpy")
    for dist in ("tensorflow", "ai-edge-litert", "tflite-runtime"):
        try:
            expected = metadata.version(dist)
        except metadata.PackageNotFoundError:
            expected = None
        assert w[dist] == expected


def test_tflite_choice_follows_backend_order(monkeypatch):
    monkeypatch.setattr(doctor, "importable", lambda name: "/x" if name == "tflite_runtime" else None)
    c = doctor.tflite_choice({"tflite-runtime": "2.14.0", "numpy": "2.1.0"})
    assert c["interpreter"] == "tflite_runtime" and "numpy<2" in c["why"] and "slower" in c["why"]
    assert "numpy<2" not in doctor.tflite_choice({"tflite-runtime": "2.14.0", "numpy": "1.26.4"})["why"]
    monkeypatch.setattr(doctor, "importable", lambda name: "/x")
    assert doctor.tflite_choice({"ai-edge-litert": "2.3.0"})["interpreter"] == "ai_edge_litert"
    monkeypatch.setattr(doctor, "importable", lambda name: None)
    none = doctor.tflite_choice({"tensorflow": "2.21.0"})
    assert none["interpreter"] is None and "already imported TensorFlow" in none["why"]


def test_fake_root_devices_and_cameras(tmp_path):
    (tmp_path / "dev").mkdir()
    for name in ("video0", "video2", "apex_0"):
        (tmp_path / "dev" / name).write_text("")
    usb = tmp_path / "sys/bus/usb/devices/2-1"
    usb.mkdir(parents=True)
    (usb / "idVendor").write_text("18d1\n")
    (usb / "idProduct").write_text("9302\n")
    assert doctor.cameras(tmp_path)["v4l2_devices"] == [str(tmp_path / "dev/video0"), str(tmp_path / "dev/video2")]
    d = doctor.delegates(tmp_path)
    assert d["edgetpu_pcie"] == [str(tmp_path / "dev/apex_0")]
    assert d["coral_usb"] and "firmware loaded" in d["coral_usb"][0]
    assert d["nvidia_devices"] == [] and d["tegra"] is False


def test_doctor_never_imports_tensorflow():
    code = ("import sys, json; from tledge.cli import main; rc = main(['doctor', '--json']); "
            "assert rc == 0, rc; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    env = json.loads(r.stdout)
    assert env["python"]["machine"] and env["cpu"]["usable_cores"] >= 1
    assert env["device"]["device"] in env["device"]["title"] or env["device"]["device"]
    assert env["tensorflow_imported"] is False


def test_doctor_text_report(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for part in ("python ", "wheels: ", ".tflite files -> ", ".onnx files -> ", "cpu: ", "delegates: ",
                 "cameras: ", "device: "):
        assert part in out


def test_doctor_bad_target_exits_2(tmp_path, capsys):
    assert main(["doctor", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    assert main(["doctor", str(tmp_path / "empty")]) == 2


def test_doctor_reports_a_corrupt_model(tmp_path, capsys):
    bad = tmp_path / "model_int8.tflite"
    bad.write_bytes(b"\x00" * 64)
    assert main(["doctor", str(bad), "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)["models"][0]
    assert rep["ok"] is False and rep["checks"][0]["check"] == "load" and not rep["checks"][0]["ok"]


def test_doctor_runs_each_model_of_an_export(capsys):
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("onnxruntime")
    assert main(["doctor", str(TINY), "--json", "--threads", "1"]) == 0
    reps = {Path(r["path"]).name: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert set(reps) == {"model_fp32.tflite", "model_fp16.tflite", "model_dynamic.tflite", "model_int8.tflite",
                         "model_fp32.onnx", "model_int8.onnx"}
    for r in reps.values():
        assert r["ok"] and r["contract"] == "embedded"
        assert [c["check"] for c in r["checks"]] == ["load", "one inference"]


def test_registered_check_runs_and_its_failure_counts(capsys):
    pytest.importorskip("ai_edge_litert")
    seen = []

    def golden(model, path):
        seen.append(path.name)
        return doctor.CheckResult("golden", False, "scores differ from golden outputs")

    before = list(doctor.MODEL_CHECKS)
    doctor.register_check(doctor.ModelCheck("golden", golden))
    try:
        assert main(["doctor", str(TINY / "model_int8.tflite")]) == 1
    finally:
        doctor.MODEL_CHECKS[:] = before
    out = capsys.readouterr().out
    assert seen == ["model_int8.tflite"] and "golden: FAILED scores differ" in out


def test_emulation_is_noticed():
    assert doctor.emulation("aarch64", "x86_64").startswith("aarch64 userland on a x86_64 kernel")
    assert doctor.emulation("arm64", "aarch64") is None and doctor.emulation("x86_64", "x86_64") is None


def test_an_installed_litert_that_does_not_import_is_not_named_the_runtime(monkeypatch):
    """Before, the doctor named ai-edge-litert the interpreter in use from its wheel alone, while `run` could not
    import it (out of memory, a broken install) and fell through to the next one."""
    package = pytest.importorskip("ai_edge_litert")
    monkeypatch.setattr(doctor, "importable", lambda name: "/x" if name == "ai_edge_litert" else None)
    monkeypatch.delattr(package, "interpreter", raising=False)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # its import fails
    c = doctor.tflite_choice({"ai-edge-litert": "2.3.0"})
    assert c["interpreter"] is None and "ai_edge_litert is installed but does not import" in c["why"], c
    assert doctor.tflite_choice({"ai-edge-litert": "2.3.0"}, probe=False)["interpreter"] == "ai_edge_litert"
    monkeypatch.setattr(doctor, "importable", lambda name: "/x")
    c = doctor.tflite_choice({})
    assert c["interpreter"] == "tflite_runtime" and "does not import" in c["why"], c
    assert "pip install ai-edge-litert" not in c["why"], c  # it is installed: reinstalling it is the broken text's fix


def test_an_installed_litert_that_fails_with_any_error_is_said_not_a_traceback(monkeypatch):
    """A broken wheel raises anything on import (numpy 2 and `np.float`: AttributeError); the doctor is what people
    paste into bug reports, so it reports, it does not crash."""
    package = pytest.importorskip("ai_edge_litert")
    monkeypatch.setattr(doctor, "importable", lambda name: "/x" if name == "ai_edge_litert" else None)
    monkeypatch.delattr(package, "interpreter", raising=False)

    class Broken:
        def find_spec(self, name, path=None, target=None):
            if name == "ai_edge_litert.interpreter":
                raise AttributeError("module 'numpy' has no attribute 'float'")

    monkeypatch.delitem(sys.modules, "ai_edge_litert.interpreter", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    c = doctor.tflite_choice({"ai-edge-litert": "2.3.0"})
    assert c["interpreter"] is None and "does not import" in c["why"] and "float" in c["why"], c
