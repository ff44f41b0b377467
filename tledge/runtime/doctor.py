"""What the runtime will use on this machine and why: the text a user pastes into a bug report.

`environment()` -> a dict (JSON-ready): Python and platform, installed wheels (read with
importlib.metadata: TensorFlow is never imported), which TFLite interpreter and ONNX providers the
runtime will pick, delegates present (Edge TPU, GPU), CPU features that decide kernel speed (AVX2,
AVX-512 VNNI, AVX-VNNI; NEON, dot product, i8mm), camera backends and the detected device profile.

`model_files(target)` lists the model files under a path and `check_model(path)` loads one with the runtime
and runs it once (`tledge doctor` calls both). The per-file checks
are a table (`MODEL_CHECKS`): "load" and "one inference" here; a golden-output check registers
itself with `register_check` (it receives the loaded model and the file's path).
"""
from __future__ import annotations

import importlib.util
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# distribution name -> import name; what decides how models run
WHEELS = (
    ("ai-edge-litert", "ai_edge_litert"), ("tflite-runtime", "tflite_runtime"),
    ("onnxruntime", "onnxruntime"), ("onnxruntime-gpu", "onnxruntime"),
    ("onnxruntime-openvino", "onnxruntime"), ("onnxruntime-directml", "onnxruntime"),
    ("numpy", "numpy"), ("opencv-python-headless", "cv2"), ("opencv-python", "cv2"),
    ("opencv-contrib-python-headless", "cv2"), ("opencv-contrib-python", "cv2"), ("flatbuffers", "flatbuffers"),
    ("picamera2", "picamera2"),
    # present only on a workstation; reported, never imported
    ("tensorflow", "tensorflow"), ("tensorflow-cpu", "tensorflow"), ("keras", "keras"), ("tf-keras", "tf_keras"),
    ("tf2onnx", "tf2onnx"), ("onnx", "onnx"),
)
# CPU flags (x86 /proc/cpuinfo "flags", ARM "Features") -> what they mean for inference
CPU_FEATURES = {
    "avx2": "AVX2 (XNNPACK/onnxruntime fast paths on x86)",
    "fma": "FMA", "avx512f": "AVX-512", "avx512_vnni": "AVX-512 VNNI (fast int8 dot products)",
    "avx_vnni": "AVX-VNNI (fast int8 dot products on 256-bit units)", "amx_int8": "AMX int8",
    "avx512_bf16": "AVX-512 BF16", "f16c": "F16C (fp16 conversion)",
    "asimd": "NEON (Advanced SIMD)", "asimddp": "NEON dot product (fast int8: Cortex-A55/A76 and later)",
    "i8mm": "int8 matrix multiply (Armv8.6)", "asimdhp": "NEON fp16 arithmetic", "sve": "SVE", "sve2": "SVE2",
    "bf16": "BF16",
}
EDGETPU_LIBS = ("libedgetpu.so.1", "libedgetpu.1.dylib", "edgetpu.dll")
GPU_DELEGATE_LIBS = ("libtensorflowlite_gpu_delegate.so", "libLiteRtGpuAccelerator.so")


# ---- facts -----------------------------------------------------------------------------------------

def wheels() -> dict[str, str | None]:
    """Installed distributions that matter, with their versions (None when absent); nothing imported."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for dist, _mod in WHEELS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def importable(name: str) -> str | None:
    """Where module `name` would be imported from, without importing it (None when it would not)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    return spec.origin or (list(spec.submodule_search_locations or [""])[0]) or "?"


def _os_release() -> str | None:
    for p in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            for line in Path(p).read_text().splitlines():
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
        except OSError:
            continue
    return None


def python_info() -> dict:
    libc = platform.libc_ver()
    return {"version": platform.python_version(), "implementation": platform.python_implementation(),
            "executable": sys.executable, "venv": sys.prefix != sys.base_prefix,
            "system": platform.system(), "release": platform.release(), "machine": platform.machine(),
            "os": _os_release(), "libc": " ".join(x for x in libc if x) or None,
            "bits": 64 if sys.maxsize > 2**32 else 32}


def cpu_info(cpuinfo: str | None = None) -> dict:
    """Model name, usable cores and the inference-relevant flags from /proc/cpuinfo (or the text given)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    name = None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):
            flags.update(value.split())
        elif key in ("model name", "hardware", "cpu model") and name is None:
            name = value.strip()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    found = {f: CPU_FEATURES[f] for f in CPU_FEATURES if f in flags}
    return {"model": name or platform.processor() or None, "usable_cores": cores, "features": sorted(found),
            "feature_notes": found}


def _find_library(names) -> str | None:
    import ctypes.util

    for n in names:
        for d in ("/usr/lib", "/usr/local/lib", "/usr/lib/aarch64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
                  "/usr/lib/arm-linux-gnueabihf"):
            if (Path(d) / n).exists():
                return str(Path(d) / n)
        short = n[3:].split(".so")[0] if n.startswith("lib") else n.split(".")[0]
        found = ctypes.util.find_library(short)
        if found:
            return found
    return None


def delegates(root: Path = Path("/")) -> dict:
    """Accelerator runtimes that are present (files only; nothing is loaded)."""
    usb = []
    try:
        from tledge.devices.detect import CORAL_USB_IDS, usb_ids

        usb = [CORAL_USB_IDS[(v, p)] for _d, v, p in usb_ids(root) if (v, p) in CORAL_USB_IDS]
    except ImportError:
        pass
    nvidia = sorted(str(p) for p in (root / "dev").glob("nvidia[0-9]*")) if (root / "dev").is_dir() else []
    return {"edgetpu_library": _find_library(EDGETPU_LIBS),
            "edgetpu_pcie": sorted(str(p) for p in (root / "dev").glob("apex_*")) if (root / "dev").is_dir() else [],
            "coral_usb": usb, "tflite_gpu_delegate": _find_library(GPU_DELEGATE_LIBS),
            "nvidia_devices": nvidia, "tegra": (root / "etc/nv_tegra_release").is_file()}


def cameras(root: Path = Path("/")) -> dict:
    dev = root / "dev"
    videos = sorted(str(p) for p in dev.glob("video*")) if dev.is_dir() else []
    return {"v4l2_devices": videos, "picamera2": importable("picamera2") is not None,
            "libcamera": importable("libcamera") is not None}


def device_profile() -> dict:
    try:
        from tledge.devices.detect import detect
        from tledge.devices.options import resolve
    except ImportError as exc:  # a vendored copy without tledge.devices
        return {"error": f"tledge.devices not available: {exc}"}
    d = detect()
    out = d.to_dict()
    opts = resolve(d.profile)
    out["prefers"] = {"file": opts.model_file, "backend": opts.backend, "precision": opts.precision,
                      "threads": opts.threads}
    return out


# ---- what the runtime will pick, and why ------------------------------------------------------------

def _major(version: str | None) -> int | None:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return None


def tflite_choice(w: dict[str, str | None], probe: bool = True) -> dict:
    """The interpreter tledge.runtime.backends will use for .tflite files (same order), and why (probe: importing
    ai-edge-litert to see that it loads)."""
    broken = None
    if importable("ai_edge_litert"):
        from tledge.runtime.litert import litert_module  # (what the runtime asks: before, the doctor named it the
        # runtime in use from its wheel alone, while `tledge run` fell through to the next interpreter or failed)
        broken = litert_module()[1] if probe else None
        if broken is None:
            return {"interpreter": "ai_edge_litert", "version": w.get("ai-edge-litert"),
                    "why": "ai-edge-litert is installed: the preferred TFLite runtime (XNNPACK, current op versions)"}
    if importable("tflite_runtime"):
        why = (f"{broken or 'ai-edge-litert is not installed'}: tflite_runtime is used, 10-40x slower for int8 and "
               "unable to load files with newer op versions" + ("" if broken else ". Fix: pip install ai-edge-litert"))
        ver = w.get("tflite-runtime")
        if (_major(w.get("numpy")) or 0) >= 2:  # the last tflite-runtime (2.14) was built against numpy 1
            why += f"; tflite-runtime {ver} was built for numpy<2 and numpy {w['numpy']} is installed: " \
                   "pip install 'numpy<2'"
        return {"interpreter": "tflite_runtime", "version": ver, "why": why}
    why = broken or "no TFLite interpreter installed: pip install ai-edge-litert (tledge[runtime])"
    if w.get("tensorflow") or w.get("tensorflow-cpu"):
        why += "; tensorflow.lite is used only when the calling program has already imported TensorFlow"
    return {"interpreter": None, "version": None, "why": why}


def onnx_choice(w: dict[str, str | None], probe: bool = True) -> dict:
    """onnxruntime's version and execution providers (importing onnxruntime when probe), in the
    order tledge tries them."""
    if not importable("onnxruntime"):
        return {"onnxruntime": None, "providers": [], "why": "onnxruntime is not installed: .onnx files cannot run "
                                                            "(pip install onnxruntime)"}
    version = next((w[d] for d in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino",
                                   "onnxruntime-directml") if w.get(d)), None)
    out: dict = {"onnxruntime": version, "providers": [], "why": ""}
    if not probe:
        return out
    try:
        import onnxruntime as ort

        have = list(ort.get_available_providers())
        out["onnxruntime"] = getattr(ort, "__version__", version)
    except Exception as exc:  # a broken wheel raises anything
        out["why"] = f"onnxruntime is installed but does not import: {exc}"
        return out
    from tledge.runtime.backends import OnnxBackend

    order = [p for p in OnnxBackend.DEFAULT_PROVIDERS if p in have]
    out["providers"] = have
    out["why"] = f"tledge tries {', '.join(order) or 'CPUExecutionProvider'} in that order" + \
        ("" if len(order) > 1 else " (no GPU provider in this onnxruntime build)")
    return out


def _imports_ok(names=("numpy", "cv2")) -> dict[str, str]:
    """Import the light modules the runtime always needs; 'ok <version>' or the error (e.g. libGL missing)."""
    out = {}
    for name in names:
        try:
            mod = importlib.import_module(name)
            out[name] = f"ok {getattr(mod, '__version__', '')}".strip()
        except Exception as exc:
            out[name] = f"FAILS: {type(exc).__name__}: {exc}"
    return out


def emulation(machine: str | None = None, kernel_arch: str | None = None) -> str | None:
    """A note when this userland's architecture is not the kernel's (qemu-user: /proc shows the host)."""
    norm = {"amd64": "x86_64", "arm64": "aarch64"}
    machine = norm.get((machine or platform.machine()).lower(), (machine or platform.machine()).lower())
    if kernel_arch is None:
        try:
            kernel_arch = Path("/proc/sys/kernel/arch").read_text().strip()
        except OSError:
            return None
    kernel_arch = norm.get(kernel_arch.lower(), kernel_arch.lower())
    if not kernel_arch or kernel_arch == machine:
        return None
    return (f"{machine} userland on a {kernel_arch} kernel: emulated (qemu-user?); the CPU features and the "
            "device detected are the host's, and speed means nothing")


def threads() -> dict:
    from tledge.errors import ArgumentError
    from tledge.runtime.backends import default_threads

    try:
        default, error = default_threads(), None
    except ArgumentError as exc:  # the doctor says so; the commands refuse to run with it
        default, error = None, str(exc)  # (an int or null, as --json's readers expect; the reason beside it)
    return {"default": default, "TLEDGE_THREADS": os.environ.get("TLEDGE_THREADS") or None,
            **({"error": error} if error else {})}


def environment(probe: bool = True) -> dict:
    """Everything above in one dict. probe=False skips importing numpy/cv2/onnxruntime."""
    import tledge

    w = wheels()
    return {"tledge": tledge.__version__, "tledge_path": str(Path(tledge.__file__).parent),
            "python": python_info(), "wheels": {k: v for k, v in w.items() if v},
            "imports": _imports_ok() if probe else {}, "tflite": tflite_choice(w, probe), "onnx": onnx_choice(w, probe),
            "threads": threads(), "cpu": cpu_info(), "delegates": delegates(), "cameras": cameras(),
            "device": device_profile(), "emulation": emulation(),
            "tensorflow_imported": "tensorflow" in sys.modules}


# ---- model files ------------------------------------------------------------------------------------

@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str
    ms: float | None = None

    def to_dict(self) -> dict:
        return {"check": self.name, "ok": self.ok, "detail": self.detail,
                "ms": None if self.ms is None else round(self.ms, 2)}


@dataclass(frozen=True)
class ModelCheck:
    name: str
    run: Callable  # (model: EdgeModel, path: Path) -> CheckResult


def _one_inference(model, path: Path) -> CheckResult:
    import numpy as np

    c = model.contract
    rgb = np.random.default_rng(0).integers(0, 256, (c.height, c.width, 3), dtype=np.uint8)
    t = time.perf_counter()
    y = model.run_inputs(model.to_input(rgb)[None])
    ms = 1000 * (time.perf_counter() - t)
    if not np.all(np.isfinite(y)):
        return CheckResult("one inference", False, "non-finite outputs", ms)
    top = model.top(model.scores(y)[0], 1)[0]
    return CheckResult("one inference", True, f"output {tuple(y.shape)}, top-1 on a noise image: "
                                              f"{top.label} {top.score:.3f}", ms)


MODEL_CHECKS: list[ModelCheck] = [ModelCheck("one inference", _one_inference)]


def register_check(check: ModelCheck) -> None:
    """Add a per-file check (e.g. golden outputs shipped beside the file); replaces one of the same name."""
    MODEL_CHECKS[:] = [c for c in MODEL_CHECKS if c.name != check.name] + [check]


@dataclass
class ModelReport:
    path: str
    backend: str | None = None
    provider: str | None = None
    contract: str | None = None
    load_ms: float | None = None
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def to_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "backend": self.backend, "provider": self.provider,
                "contract": self.contract, "load_ms": None if self.load_ms is None else round(self.load_ms, 2),
                "checks": [c.to_dict() for c in self.checks]}


def model_files(target: "str | Path") -> list[Path]:
    """The model files of an export folder (top level), or the one file given."""
    from tledge.errors import TledgeError
    from tledge.runtime.backends import MODEL_SUFFIXES

    p = Path(target)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise TledgeError(f"not found: {p}")
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in MODEL_SUFFIXES and f.is_file())
    if not files:
        raise TledgeError(f"{p} holds no .tflite or .onnx file")
    return files


def check_model(path: Path, threads: int | None = None) -> ModelReport:
    from tledge.errors import TledgeError
    from tledge.runtime.model import load

    rep = ModelReport(str(path))
    try:
        model = load(path, threads=threads)
    except TledgeError as exc:
        rep.checks.append(CheckResult("load", False, str(exc)))
        return rep
    except (OSError, MemoryError) as exc:  # a runtime's library that does not load (the report had none at all)
        rep.checks.append(CheckResult("load", False, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"))
        return rep
    rep.backend, rep.provider = model.format, model.provider
    rep.contract, rep.load_ms = model.load_info.contract_origin, model.load_info.load_ms
    rep.checks.append(CheckResult("load", True, f"{model.format} via {model.provider}", model.load_info.load_ms))
    for check in MODEL_CHECKS:
        try:
            rep.checks.append(check.run(model, path))
        except Exception as exc:  # a check failing is a finding, not a crash of the report
            rep.checks.append(CheckResult(check.name, False, f"{type(exc).__name__}: {exc}"))
    return rep
