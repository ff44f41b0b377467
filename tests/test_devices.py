"""Device profiles, resolve(), detection on fake file-system roots, the CLI, the runtime `--device` hook.
(The Edge TPU helpers are in test_devices_edgetpu.py.)"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest

from tledge.cli import main
from tledge.devices import PROFILES, Format, detect, get_profile, resolve
from tledge.devices import edgetpu as edgetpu_mod
from tledge.errors import TledgeError

REQUIRED = ("rpi4", "rpi5", "rpi-zero2w", "jetson-nano", "jetson-orin", "coral-usb", "x86-cpu", "arm64-generic")


# ---- profiles ------------------------------------------------------------------------------------
def test_required_profiles_exist_and_are_consistent():
    assert set(REQUIRED) <= set(PROFILES)
    for name, p in PROFILES.items():
        assert p.name == name and p.targets and p.install and p.pip is not None and p.camera
        json.dumps(p.to_dict())  # serialisable
        for t in p.targets:
            assert t.filename.startswith("model_") and t.filename.endswith(("." + t.format.value))
            assert (t.format is Format.ONNX) == bool(t.providers)


def test_profile_preferences_match_the_brief():
    assert PROFILES["rpi4"].best.filename == "model_int8.tflite"
    assert PROFILES["x86-cpu"].best.filename == "model_int8.tflite"  # LiteRT int8 fastest here
    assert PROFILES["coral-usb"].best.filename == "model_int8_edgetpu.tflite"
    jet = PROFILES["jetson-orin"].best
    assert jet.format is Format.ONNX
    names = [p.name for p in jet.providers]
    assert names == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt = dict(jet.providers[0].options)
    assert trt["trt_fp16_enable"] is True and trt["trt_engine_cache_enable"] is True
    assert "trt_engine_cache_path" in trt
    text = json.dumps([p.to_dict() for p in PROFILES.values()]).lower()
    assert "tensorflow" not in text.replace("tensorflow lite", "")
    assert "jetson_zoo" in text and "3.9" in text  # onnxruntime-gpu source; the pycoral python limit


def test_get_profile_is_lenient_and_suggests():
    assert get_profile("RPI_ZERO2W").name == "rpi-zero2w"
    with pytest.raises(TledgeError, match="did you mean"):
        get_profile("rpi")


# ---- resolve ---------------------------------------------------------------------------------------
def test_resolve_uses_the_profile():
    o = resolve("rpi4")
    assert (o.backend, o.precision, o.threads, o.model_file) == ("tflite", "int8", 4, "model_int8.tflite")
    assert o.providers == () and o.delegates == ()
    assert ("tflite", "int8") == o.pairs[0] and not o.compile_edgetpu
    c = resolve("coral-usb")
    assert c.delegates == (edgetpu_mod.edgetpu_library(),) and c.compile_edgetpu and c.pairs == (("tflite", "int8"),)


def test_explicit_values_win_over_the_profile():
    o = resolve("jetson-orin", threads=2, backend="tflite", precision="fp32")
    assert (o.backend, o.precision, o.threads, o.model_file) == ("tflite", "fp32", 2, "model_fp32.tflite")
    assert o.providers == ()  # a TFLite target has no ONNX providers
    o = resolve("jetson-orin", providers=["CPUExecutionProvider"])
    assert o.providers == ("CPUExecutionProvider",)
    assert resolve("coral-usb", delegates=[]).delegates == ()
    assert resolve("rpi4", threads=None).threads == 4  # None means "not given"
    assert resolve("rpi4", format="onnx").model_file == "model_int8.onnx"  # alias of backend
    o = resolve("rpi4", formats=["onnx"])
    assert o.pairs == (("onnx", "int8"), ("onnx", "fp32")) and o.formats == ("onnx",)
    assert resolve("rpi4", precisions=["fp16"]).pairs == (("tflite", "fp16"), ("onnx", "fp16"))


def test_resolve_without_profile_and_bad_values():
    o = resolve(None, backend="onnx")
    assert (o.device, o.backend, o.precision, o.providers) == (None, "onnx", "fp32", ("CPUExecutionProvider",))
    assert resolve(None).model_file == "model_int8.tflite"
    with pytest.raises(TledgeError, match="precision"):
        resolve("rpi4", precision="int4")
    with pytest.raises(TledgeError, match="threads"):
        resolve("rpi4", threads=0)
    with pytest.raises(TypeError, match="colour"):
        resolve("rpi4", colour="red")


def test_resolve_against_available_files():
    assert resolve("rpi4", available=["model_fp32.tflite", "model_fp32.onnx"]).model_file == "model_fp32.tflite"
    assert resolve("jetson-orin", available=["model_int8.tflite"]).model_file == "model_int8.tflite"
    with pytest.raises(TledgeError, match="no usable model file"):
        resolve("rpi4", available=["model_fp16.onnx"])


def test_trt_cache_path_is_expanded():
    trt = resolve("jetson-nano").providers[0]
    assert trt[0] == "TensorrtExecutionProvider"
    assert not trt[1]["trt_engine_cache_path"].startswith("~")
    kw = resolve("jetson-nano").load_kwargs()
    assert kw["threads"] == 4 and kw["providers"][1] == "CUDAExecutionProvider"


def test_device_argument_helpers():
    import argparse

    from tledge.devices import add_device_argument, device_from_args

    p = argparse.ArgumentParser()
    add_device_argument(p)
    assert device_from_args(p.parse_args([])) is None
    assert device_from_args(p.parse_args(["--device", "rpi5"])).name == "rpi5"
    assert device_from_args(p.parse_args(["--device", "auto"])).name in PROFILES


# ---- detection on fake roots -----------------------------------------------------------------------
PI4_CPUINFO = ("processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n\nprocessor\t: 1\nCPU part\t: 0xd08\n\n"
               "processor\t: 2\nCPU part\t: 0xd08\n\nprocessor\t: 3\nCPU part\t: 0xd08\n\n"
               "Revision\t: c03114\nSerial\t\t: 10000000abcdef01\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n")


def fake_root(tmp_path: Path, files: dict[str, str | bytes]) -> Path:
    root = tmp_path / "root"
    for rel, content in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(content if isinstance(content, bytes) else content.encode())
    root.mkdir(parents=True, exist_ok=True)
    return root


def usb(dev: str, vid: str, pid: str) -> dict[str, str]:
    return {f"sys/bus/usb/devices/{dev}/idVendor": vid + "\n", f"sys/bus/usb/devices/{dev}/idProduct": pid + "\n"}


@pytest.mark.parametrize("model, expected", [
    (b"Raspberry Pi 4 Model B Rev 1.4\x00", "rpi4"),
    (b"Raspberry Pi 400 Rev 1.0\x00", "rpi4"),
    (b"Raspberry Pi Compute Module 4 Rev 1.0\x00", "rpi4"),
    (b"Raspberry Pi 5 Model B Rev 1.0\x00", "rpi5"),
    (b"Raspberry Pi Zero 2 W Rev 1.0\x00", "rpi-zero2w"),
    (b"NVIDIA Jetson Nano Developer Kit\x00", "jetson-nano"),
    (b"NVIDIA Jetson Orin Nano Developer Kit\x00", "jetson-orin"),
    (b"Jetson AGX Orin\x00", "jetson-orin"),
])
def test_detect_from_device_tree_model(tmp_path, model, expected):
    root = fake_root(tmp_path, {"proc/device-tree/model": model, "proc/sys/kernel/arch": "aarch64\n"})
    det = detect(root)
    assert det.profile.name == expected and det.host == expected and det.confident
    assert det.arch == "aarch64"
    assert any(e.source == "proc/device-tree/model" for e in det.evidence)


def test_detect_pi4_from_cpuinfo_only(tmp_path):
    root = fake_root(tmp_path, {"proc/cpuinfo": PI4_CPUINFO})
    det = detect(root, machine="aarch64")
    assert det.profile.name == "rpi4"
    ev = [e for e in det.evidence if e.source == "proc/cpuinfo"][0]
    assert "Cortex-A72" in ev.meaning and "4 cores" in ev.meaning


def test_detect_pi_on_32_bit_os_keeps_the_board_and_says_why_it_hurts(tmp_path):
    root = fake_root(tmp_path, {"proc/device-tree/model": b"Raspberry Pi Zero 2 W Rev 1.0\x00"})
    det = detect(root, machine="armv7l")
    assert det.profile.name == "rpi-zero2w" and not det.confident  # its profile is the 64-bit OS's: a guess
    assert any("32-bit" in e.meaning and "no ai-edge-litert" in e.meaning for e in det.evidence)


def test_detect_32_bit_pi_os_on_a_64_bit_kernel(tmp_path):
    """32-bit Pi OS boots a 64-bit kernel on a Pi 4: the kernel's aarch64 made it a confident rpi4, for a userland
    PyPI has no ai-edge-litert or onnxruntime wheels for. The shell's ELF class says what the userland is."""
    files = {"proc/device-tree/model": b"Raspberry Pi 4 Model B Rev 1.4\x00", "proc/sys/kernel/arch": "aarch64\n",
             "bin/sh": b"\x7fELF\x01\x01\x01" + bytes(40)}
    det = detect(fake_root(tmp_path, files))
    assert (det.profile.name, det.arch, det.confident) == ("rpi4", "armv7l", False)
    assert any(e.source == "ELF class of bin/sh" for e in det.evidence)
    files["bin/sh"] = b"\x7fELF\x02\x01\x01" + bytes(40)  # 64-bit Pi OS
    det = detect(fake_root(tmp_path / "b", files))
    assert (det.profile.name, det.arch, det.confident) == ("rpi4", "aarch64", True)


def test_detect_says_why_a_board_it_knows_is_a_guess(tmp_path, capsys):
    """An Orin on JetPack 5 (Python 3.8, where the profile's JetPack 6 install fails) was a confident jetson-orin;
    a 32-bit Pi OS was "a guess: no known board found" for a board it had found; a Coral on that Pi was confident."""
    from tledge.cli import main

    orin = {"proc/device-tree/model": b"Jetson AGX Orin Developer Kit\x00",
            "etc/nv_tegra_release": "# R35 (release), REVISION: 4.1, GCID: 1, BOARD: t186ref\n"}
    det = detect(fake_root(tmp_path / "jp5", orin), machine="aarch64")
    assert det.profile.name == "jetson-orin" and not det.confident and "JetPack 5" in det.why
    orin["etc/nv_tegra_release"] = "# R36 (release), REVISION: 3.0, GCID: 1, BOARD: generic\n"
    assert detect(fake_root(tmp_path / "jp6", orin), machine="aarch64").confident
    pi32 = {"proc/device-tree/model": b"Raspberry Pi 4 Model B Rev 1.4\x00", "proc/sys/kernel/arch": "aarch64\n",
            "bin/sh": b"\x7fELF\x01\x01\x01" + bytes(40), **usb("1-1", "18d1", "9302")}
    det = detect(fake_root(tmp_path / "pi32", pi32))
    assert (det.profile.name, det.host, det.confident) == ("coral-usb", "rpi4", False) and "32-bit" in det.why
    assert main(["devices", "detect", "--root", str(tmp_path / "pi32" / "root")]) == 0
    out = capsys.readouterr().out
    assert "(a guess: a 32-bit userland" in out and "no known board" not in out, out


def test_detect_a_jetson_that_is_neither_nano_nor_orin_is_a_guess(tmp_path):
    """A Xavier NX on JetPack 5 was `jetson-orin`, confident, though its own device-tree model said Xavier."""
    root = fake_root(tmp_path, {"proc/device-tree/model": b"NVIDIA Jetson Xavier NX Developer Kit\x00",
                                "etc/nv_tegra_release": "# R35 (release), REVISION: 4.1, GCID: 1, BOARD: t186ref\n"})
    det = detect(root, machine="aarch64")
    assert det.profile.name == "jetson-orin" and not det.confident


@pytest.mark.parametrize("release, expected", [
    ("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, DATE: Sat Feb 19 2022",
     "jetson-nano"),
    ("# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64, DATE: Fri Jul 19 2024",
     "jetson-orin"),
])
def test_detect_jetson_from_tegra_release(tmp_path, release, expected):
    root = fake_root(tmp_path, {"etc/nv_tegra_release": release + "\n# KERNEL_VARIANT: oot\n"})
    det = detect(root, machine="aarch64")
    assert det.profile.name == expected
    ev = [e for e in det.evidence if e.source == "etc/nv_tegra_release"][0]
    assert ("JetPack 4" if expected == "jetson-nano" else "JetPack 6") in ev.meaning


@pytest.mark.parametrize("ids", [("1a6e", "089a"), ("18d1", "9302")])
def test_detect_coral_usb_before_and_after_firmware(tmp_path, ids):
    files = {"proc/sys/kernel/arch": "x86_64\n", **usb("1-1", "1d6b", "0002"), **usb("2-1", *ids)}
    det = detect(fake_root(tmp_path, files))
    assert det.profile.name == "coral-usb" and det.host == "x86-cpu"
    ev = [e for e in det.evidence if e.source.startswith("sys/bus/usb")]
    assert len(ev) == 1 and ev[0].value == ":".join(ids) and "Coral" in ev[0].meaning


def test_detect_coral_on_a_pi(tmp_path):
    files = {"proc/device-tree/model": b"Raspberry Pi 5 Model B Rev 1.0\x00", **usb("3-1", "18d1", "9302")}
    det = detect(fake_root(tmp_path, files), machine="aarch64")
    assert (det.profile.name, det.host) == ("coral-usb", "rpi5")


def test_detect_falls_back_on_the_architecture(tmp_path):
    assert detect(fake_root(tmp_path, {}), machine="x86_64").profile.name == "x86-cpu"
    det = detect(fake_root(tmp_path, {}), machine="arm64")
    assert det.profile.name == "arm64-generic" and det.arch == "aarch64"
    old_pi = detect(fake_root(tmp_path, {"proc/device-tree/model": b"Raspberry Pi 3 Model B Rev 1.2\x00"}),
                    machine="aarch64")
    assert old_pi.profile.name == "arm64-generic" and not old_pi.confident
    # a board the device tree names without a profile (Coral Dev Board: Mendel's Python 3.7) is a guess, not a match
    mendel = detect(fake_root(tmp_path / "mendel", {"proc/device-tree/model": b"Freescale i.MX8MQ Phanbell\x00"}),
                    machine="aarch64")
    assert mendel.profile.name == "arm64-generic" and not mendel.confident
    nothing = detect(fake_root(tmp_path / "empty", {}))
    assert not nothing.confident and nothing.evidence
    # riscv64 was "the generic profile for the architecture": x86-cpu is no profile for it
    riscv = detect(fake_root(tmp_path / "riscv", {}), machine="riscv64")
    assert not riscv.confident and "no profile is for riscv64" in riscv.why and "for the architecture" not in riscv.why


def test_detect_this_machine_runs():
    det = detect()
    assert det.profile.name in PROFILES and det.evidence


# ---- CLI -------------------------------------------------------------------------------------------
def test_cli_devices_list_show_detect(capsys, tmp_path):
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in REQUIRED)
    assert main(["devices", "list", "--json"]) == 0
    assert {d["name"] for d in json.loads(capsys.readouterr().out)} >= set(REQUIRED)
    assert main(["devices", "show", "jetson-nano"]) == 0
    out = capsys.readouterr().out
    assert "TensorrtExecutionProvider" in out and "nvarguscamerasrc" in out and "Jetson Zoo" in out
    assert main(["devices", "show", "coral-usb", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["options"]["delegates"] == [edgetpu_mod.edgetpu_library()] and shown["targets"][0]["file"] == "model_int8_edgetpu.tflite"
    root = fake_root(tmp_path, {"proc/device-tree/model": b"Raspberry Pi 5 Model B Rev 1.0\x00"})
    assert main(["devices", "detect", "--root", str(root), "--machine", "aarch64", "--json"]) == 0
    det = json.loads(capsys.readouterr().out)
    assert det["device"] == "rpi5" and det["evidence"][0]["source"] == "proc/device-tree/model"
    assert main(["devices", "detect", "--root", str(root)]) == 0
    assert "rpi5" in capsys.readouterr().out


def test_cli_devices_unknown_name(capsys):
    assert main(["devices", "show", "raspberry"]) == 2
    assert "known devices" in capsys.readouterr().err


def test_devices_package_imports_no_tensorflow():
    import subprocess

    code = ("import sys, tledge.devices, tledge.devices.bundle, tledge.cli.devices, tledge.cli.bundle; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- the runtime's `--device` hook (tledge.runtime.device calls tledge.devices.resolve) -------------------
def test_runtime_load_with_a_device_profile(tmp_path):
    from conftest import shared_asset

    from tledge.runtime import load

    src = shared_asset("coral_tflite_classifiers", "mobilenet_v1_0.25_128_quant.tflite")
    assert load(src, device="rpi4").backend.threads == 4
    assert load(src, device="rpi4", threads=1).backend.threads == 1  # explicit wins
    assert load(src, device="jetson-orin").backend.threads == 6


def test_runtime_load_plain_file_with_the_coral_profile(tmp_path):
    """A plain int8 file does not ask for the Edge TPU delegate, so no libedgetpu is needed."""
    from conftest import shared_asset

    from tledge.runtime import load

    src = shared_asset("coral_tflite_classifiers", "mobilenet_v1_0.25_128_quant.tflite")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load(src, device="coral-usb").contract is not None


def test_quiet_and_verbose_after_a_devices_action(capsys):
    """`tledge devices detect -q` was "unrecognized arguments: -q" (every other verb takes it after itself)."""
    from tledge.cli import main

    for argv in (["devices", "detect", "-q"], ["devices", "show", "rpi4", "-q"], ["devices", "list", "-v"]):
        assert main(argv) == 0, argv
        assert capsys.readouterr().out


def test_load_for_device_on_a_folder_picks_the_profiles_file_and_takes_auto():
    """load_for_device(EXPORT_DIR, "jetson-orin") opened the .tflite (the backend came from the folder's empty
    suffix) where load(EXPORT_DIR, device=...) opens the profile's ONNX file; "auto" was an unknown device."""
    from tiny import TINY

    from tledge.devices import load_for_device
    from tledge.runtime import load

    pytest.importorskip("onnxruntime")
    got = load_for_device(TINY, "jetson-orin").path.name
    assert got.endswith(".onnx") and got == load(TINY, device="jetson-orin").path.name
    assert load_for_device(TINY / "model_int8.tflite", "auto").path.name == "model_int8.tflite"


@pytest.mark.parametrize("key", ["providers", "delegates", "formats"])
def test_one_string_where_a_list_goes_is_refused(key):
    """resolve(..., providers="CPUExecutionProvider") gave providers ('C', 'P', 'U', ...)."""
    from tledge.errors import ArgumentError

    with pytest.raises(ArgumentError, match=f"{key} is a list of names, got one string"):
        resolve("jetson-orin", **{key: "CPUExecutionProvider"})
    with pytest.raises(ArgumentError, match="available is a list of file names"):
        resolve("rpi4", available="model_fp32.onnx")
