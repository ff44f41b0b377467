"""onnxruntime's AVX2 int8 kernels, reached on this machine by qemu-user with a Haswell CPUID
(benchmarks/ort_emulation.py), and tledge's ONNX int8 quantisation on them (issue 11).

The slow tests quantise the tiny trained model of tests/conftest.py, whose first convolution's u8 x s8
pair sums exceed int16 on its own calibration images (tledge.quant.saturation), and run it natively
and under `qemu-x86_64 -cpu Haswell`."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"tledge_bench_{name}", REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    sys.path.insert(0, str(REPO / "benchmarks"))  # int8_onnx_kernels imports ort_emulation
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return mod


def host_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}


def test_emulation_refused_without_qemu(monkeypatch):
    emu = load("ort_emulation")
    monkeypatch.setattr(emu.shutil, "which", lambda name: None)
    msg = emu.unavailable()
    assert msg is not None and ("qemu-x86_64" in msg or "x86_64 host" in msg)
    with pytest.raises(RuntimeError, match="qemu"):
        emu.run_emulated([], np.zeros((1, 2), np.float32), "Haswell")


def test_benchmark_bad_inputs_exit_2(tmp_path, capsys):
    kernels = load("int8_onnx_kernels")
    (tmp_path / "model_fp32.onnx").write_bytes(b"x")
    (tmp_path / "tledge.json").write_text("{}")
    cases = [([str(tmp_path / "missing"), "--val", str(tmp_path), "--shipped"], "no model_fp32.onnx"),
             ([str(tmp_path), "--val", str(tmp_path), "--shipped"], "no model_int8.onnx"),
             ([str(tmp_path), "--val", str(tmp_path), "--schemes", "u9s9"], "unknown u9s9"),
             ([str(tmp_path), "--val", str(tmp_path), "--schemes", "u8s8"], "--calib"),
             ([str(tmp_path), "--val", str(tmp_path), "--schemes", ""], "nothing to check"),
             ([str(tmp_path), "--val", str(tmp_path), "--schemes", "u8s8", "--calib", str(tmp_path),
               "--modes", "turbo"], "unknown turbo")]
    for argv, text in cases:
        assert kernels.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert text in err and len(err.splitlines()) == 1, (argv, err)


@pytest.fixture(scope="module")
def emulated_tiny(tiny_model, shapes_dataset, tmp_path_factory):
    """The tiny model's fp32 ONNX, quantised plain U8S8 and as quantize_int8 chooses, run on its val
    images natively and under qemu -cpu Haswell (default and x64quantprecision sessions)."""
    emu = load("ort_emulation")
    if emu.unavailable():
        pytest.skip(emu.unavailable())
    from tledge.export import onnx as onnx_export
    from tledge.export.imagesets import load_pixels
    from tledge.export.pipeline import ExportConfig, export
    from tledge.quant import saturation

    out = tmp_path_factory.mktemp("avx2")
    export(tiny_model["keras"], ExportConfig(out=out / "export", formats=("onnx",), val=str(shapes_dataset / "val")))
    fp32 = out / "export" / "model_fp32.onnx"
    contract = tiny_model["contract"]
    calib = load_pixels(shapes_dataset / "train", contract, 256, contract.labels)[0].astype(np.float32)
    val = load_pixels(shapes_dataset / "val", contract, 1000, contract.labels)[0].astype(np.float32)
    onnx_export.quantize_int8(fp32, out / "plain.onnx", calib, scheme=onnx_export.SCHEMES["u8s8"])
    chosen = onnx_export.quantize_int8(fp32, out / "chosen.onnx", calib)
    jobs = [{"key": f"{name}|{mode}", "path": str(out / f"{name}.onnx"), "mode": mode}
            for name, mode in (("plain", "default"), ("plain", "x64qp"), ("chosen", "default"))]
    native = emu.run_jobs(jobs + [{"key": "plain|reference", "path": str(out / "plain.onnx"), "mode": "reference"}],
                          val)
    return {"native": native, "emulated": emu.run_emulated(jobs, val, "Haswell", timeout=300), "chosen": chosen,
            "saturated": [s for s in saturation.check((out / "plain.onnx").read_bytes(), calib) if s.saturated]}


@pytest.mark.slow
def test_emulated_haswell_reaches_the_saturating_kernels(emulated_tiny):
    if not host_flags() & {"avx512_vnni", "avx_vnni"}:
        pytest.skip("the host has no VNNI: its own default kernels are the AVX2 ones")
    nat, emu_out = emulated_tiny["native"], emulated_tiny["emulated"]
    assert emulated_tiny["saturated"], "the tiny model's plain U8S8 file no longer saturates: pick another case"
    # the fused default session differs between VNNI and the emulated AVX2 CPU ...
    assert np.abs(nat["plain|default"] - emu_out["plain|default"]).max() > 1e-3
    # ... and the emulated one is the one that moved away from the unfused (Dequantize -> float) graph
    unfused = nat["plain|reference"]
    assert np.abs(emu_out["plain|default"] - unfused).max() > 2 * np.abs(nat["plain|default"] - unfused).max()
    # x64quantprecision takes a non-saturating path on both: the emulation itself changes nothing there
    np.testing.assert_allclose(emu_out["plain|x64qp"], nat["plain|x64qp"], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_tledge_choice_same_on_vnni_and_emulated_avx2(emulated_tiny):
    from tledge.export.onnx import ROBUST_SCHEME, SCHEMES

    assert emulated_tiny["saturated"], "the tiny model's plain U8S8 file no longer saturates: pick another case"
    assert emulated_tiny["chosen"] == SCHEMES[ROBUST_SCHEME]
    nat, emu_out = emulated_tiny["native"]["chosen|default"], emulated_tiny["emulated"]["chosen|default"]
    np.testing.assert_array_equal(nat.argmax(1), emu_out.argmax(1))
    np.testing.assert_allclose(emu_out, nat, rtol=0, atol=1e-6)

