"""Device profiles as data: one frozen table entry per board. No TensorFlow, no heavy imports.

A profile lists its model *targets* in order of preference (format, precision, accelerator and
how to reach it: ONNX Runtime execution providers with their options, or TFLite delegates), the
thread count, and how to install the runtime on that board, with the limits stated plainly.
Wheel facts were checked against PyPI with `pip index versions --platform ... --python-version`.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from tledge.artifacts import KINDS, PRECISIONS, Artifact, lookup
from tledge.errors import TledgeError
from tledge._deps import WHEEL


class Arch(str, Enum):
    AARCH64 = "aarch64"
    X86_64 = "x86_64"
    ANY = "any"  # an accelerator that plugs into an x86-64 or aarch64 host


class Family(str, Enum):
    RPI = "raspberry-pi"
    JETSON = "jetson"
    CORAL = "coral"
    X86 = "x86"
    GENERIC = "generic"


# the formats and precisions of tledge.artifacts' table, as enums (classes, not Enum("Format", ...): type checkers
# saw no members in the functional form)
class Format(str, Enum):
    TFLITE = "tflite"
    ONNX = "onnx"


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    DYNAMIC = "dynamic"
    INT8 = "int8"


assert tuple(f.value for f in Format) == KINDS and tuple(p.value for p in Precision) == PRECISIONS  # one table


class Accel(str, Enum):
    CPU = "cpu"  # onnxruntime CPU execution provider
    XNNPACK = "xnnpack"  # LiteRT's default CPU path (no delegate to load)
    EDGETPU = "edgetpu"
    TENSORRT = "tensorrt"
    CUDA = "cuda"


TRT_CACHE_DIR = "~/.cache/tledge/tensorrt"  # expanded when options are resolved


@dataclass(frozen=True)
class Provider:
    """One ONNX Runtime execution provider and its options (as onnxruntime takes them)."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    def to_ort(self):
        """The form `InferenceSession(providers=...)` takes: a name, or (name, {options})."""
        return (self.name, dict(self.options)) if self.options else self.name

    def to_dict(self) -> dict:
        return {"name": self.name, "options": dict(self.options)}


@dataclass(frozen=True)
class Target:
    """One model file a board can run, and how: the unit of a profile's preference list."""

    format: Format
    precision: Precision
    accel: Accel
    why: str
    providers: tuple[Provider, ...] = ()  # ONNX only, in order of preference
    delegates: tuple[str, ...] = ()  # TFLite delegates to load by name ("edgetpu")
    compiled_for: str | None = None  # "edgetpu": the file is edgetpu_compiler's output

    @property
    def artifact(self) -> Artifact:
        """The file's entry in tledge.artifacts' table (TledgeError if export cannot make it)."""
        return lookup(self.format.value, self.precision.value, self.compiled_for)

    @property
    def filename(self) -> str:
        """The file's name in an export folder (`model_int8.tflite`, `model_int8_edgetpu.tflite`)."""
        return self.artifact.filename

    @property
    def needs_accelerator(self) -> bool:
        return bool(self.delegates) or self.accel in (Accel.TENSORRT, Accel.CUDA, Accel.EDGETPU)

    def to_dict(self) -> dict:
        return {"file": self.filename, "format": self.format.value, "precision": self.precision.value,
                "accel": self.accel.value, "providers": [p.to_dict() for p in self.providers],
                "delegates": list(self.delegates), "compiled_for": self.compiled_for, "why": self.why}


@dataclass(frozen=True, repr=False)
class Profile:
    name: str
    title: str
    family: Family
    arch: Arch
    cores: int | None  # None: depends on the host
    memory_mb: int | None
    threads: int | None  # None: tledge's default (all cores, at most 4)
    targets: tuple[Target, ...]  # ordered: the first one whose file exists is used
    os: str  # the OS and default Python the install lines assume
    install: tuple[str, ...]  # shell lines, comments allowed
    pip: tuple[str, ...]  # PyPI packages of the runtime on this board (bundle requirements)
    camera: str
    notes: tuple[str, ...] = ()  # known limits
    constraints: tuple[str, ...] = ()  # requirement lines that replace the bundle's exact pins

    def __repr__(self) -> str:
        return f"Profile({self.name!r})"

    @property
    def best(self) -> Target:
        return self.targets[0]

    def to_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "family": self.family.value,
                "arch": self.arch.value, "cores": self.cores, "memory_mb": self.memory_mb,
                "threads": self.threads, "targets": [t.to_dict() for t in self.targets],
                "os": self.os, "install": list(self.install), "pip": list(self.pip),
                "camera": self.camera, "notes": list(self.notes), "constraints": list(self.constraints)}


# ---- reusable targets ------------------------------------------------------------------------
def _trt() -> Provider:
    return Provider("TensorrtExecutionProvider", (
        ("trt_fp16_enable", True), ("trt_engine_cache_enable", True),
        ("trt_engine_cache_path", TRT_CACHE_DIR), ("trt_timing_cache_enable", True)))


_GPU_PROVIDERS = (_trt(), Provider("CUDAExecutionProvider"), Provider("CPUExecutionProvider"))
_CPU_PROVIDERS = (Provider("CPUExecutionProvider"),)

TFLITE_INT8 = Target(Format.TFLITE, Precision.INT8, Accel.XNNPACK,
                     "int8 kernels on the CPU (LiteRT/XNNPACK): about 3x smaller than fp32 and the fastest CPU path")
TFLITE_FP16 = Target(Format.TFLITE, Precision.FP16, Accel.XNNPACK,
                     "half-size weights; on ARMv8.2 cores XNNPACK can compute in fp16, elsewhere it runs as fp32")
TFLITE_FP32 = Target(Format.TFLITE, Precision.FP32, Accel.XNNPACK,
                     "exact: use it when the int8 parity report is not good enough")
ONNX_INT8_CPU = Target(Format.ONNX, Precision.INT8, Accel.CPU,
                       "onnxruntime int8 (QDQ, uint8 activations): close to LiteRT int8 on x86",
                       providers=_CPU_PROVIDERS)
ONNX_FP32_CPU = Target(Format.ONNX, Precision.FP32, Accel.CPU, "onnxruntime fp32 on the CPU",
                       providers=_CPU_PROVIDERS)
ONNX_FP32_GPU = Target(Format.ONNX, Precision.FP32, Accel.TENSORRT,
                       "TensorRT builds fp16 kernels from the fp32 file (engine cached on disk: the first "
                       "start takes minutes), then CUDA, then the CPU", providers=_GPU_PROVIDERS)
EDGETPU_INT8 = Target(Format.TFLITE, Precision.INT8, Accel.EDGETPU,
                      "full-int8 file compiled by edgetpu_compiler: the mapped ops run on the Edge TPU",
                      delegates=("edgetpu",), compiled_for="edgetpu")

# JetPack's python3-opencv is built against numpy 1.x (numpy 2 in the venv breaks `import cv2`)
_JETSON_NUMPY = ("numpy>=1.23,<2",)
# JetPack 4 is Ubuntu 18.04, glibc 2.27: PyPI's aarch64 onnxruntime wheels for it end at 1.28 (manylinux_2_27)
_NANO_ONNXRUNTIME = ("onnxruntime>=1.20,<1.29",)
_PIP_TFLITE = ("numpy", "opencv-python-headless", "ai-edge-litert")
_PIP_ALL = ("numpy", "opencv-python-headless", "ai-edge-litert", "onnxruntime")
_PI_INSTALL = (
    "sudo apt install -y python3-venv python3-picamera2   # picamera2 comes from apt, not PyPI",
    "python3 -m venv --system-site-packages ~/tledge-venv  # system site packages: to see picamera2",
    f"~/tledge-venv/bin/pip install './{WHEEL}[runtime]'   # `make wheel`; ai-edge-litert, onnxruntime: aarch64 wheels",
)
_PI_CAMERA = ("picamera2 (apt: python3-picamera2) for the CSI camera on Pi OS Bookworm; USB webcams "
              "open with OpenCV as camera 0. The legacy raspistill/V4L2 stack is gone on Bookworm.")
_PI_NOTES = (
    "64-bit Pi OS only: PyPI has no armv7l wheels of ai-edge-litert, onnxruntime or opencv-python-headless.",
    "ai-edge-litert 2.3 needs Python >= 3.10 on aarch64 (3.9 stops at 2.1); onnxruntime 1.31 needs >= 3.11.",
    "apt's picamera2/simplejpeg are built against Debian's numpy 1.x; if the venv's numpy 2 breaks them "
    "(\"numpy.dtype size changed\"), pip install 'numpy<2' 'opencv-python-headless<4.11' 'ml_dtypes<0.6' in that "
    "venv (ml_dtypes 0.6+, which ai-edge-litert brings, needs numpy 2).",
)

PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile(
        "rpi4", "Raspberry Pi 4 / 400 / CM4 (4x Cortex-A72, 64-bit Pi OS)", Family.RPI, Arch.AARCH64,
        cores=4, memory_mb=None, threads=4,
        targets=(TFLITE_INT8, TFLITE_FP32, ONNX_INT8_CPU, ONNX_FP32_CPU),
        os="Raspberry Pi OS Bookworm 64-bit, Python 3.11", install=_PI_INSTALL, pip=_PIP_TFLITE,
        camera=_PI_CAMERA,
        notes=_PI_NOTES + ("The A72 has no fp16 arithmetic: an fp16 file runs as fp32 (only the download "
                           "is smaller), so it is not in the preference list.",)),
    Profile(
        "rpi5", "Raspberry Pi 5 (4x Cortex-A76, 64-bit Pi OS)", Family.RPI, Arch.AARCH64,
        cores=4, memory_mb=None, threads=4,
        targets=(TFLITE_INT8, TFLITE_FP16, TFLITE_FP32, ONNX_INT8_CPU, ONNX_FP32_CPU),
        os="Raspberry Pi OS Bookworm 64-bit, Python 3.11", install=_PI_INSTALL, pip=_PIP_TFLITE,
        camera=_PI_CAMERA,
        notes=_PI_NOTES + ("The A76 has fp16 and dot-product instructions: int8 first, then fp16; "
                           "confirm the order on the board with tledge bench.",
                           "Without active cooling the Pi 5 throttles within minutes of full load.")),
    Profile(
        "rpi-zero2w", "Raspberry Pi Zero 2 W (4x Cortex-A53, 512 MB)", Family.RPI, Arch.AARCH64,
        cores=4, memory_mb=512, threads=4,
        targets=(TFLITE_INT8, TFLITE_FP32),
        os="Raspberry Pi OS Lite Bookworm 64-bit, Python 3.11", install=_PI_INSTALL, pip=_PIP_TFLITE,
        camera=_PI_CAMERA,
        notes=(
            "Flash the 64-bit OS: on the 32-bit OS (armv7l) PyPI has no ai-edge-litert, onnxruntime or "
            "opencv-python-headless wheels. The 32-bit fallback is tflite-runtime 2.14 (armv7l wheels for "
            "Python 3.11, glibc 2.34+: Bookworm) with apt's python3-numpy and python3-opencv in a venv made with "
            "--system-site-packages and tledge's wheel installed with --no-deps; it is many times slower for int8.",
            "512 MB of RAM: keep to int8 TFLite files of a few MB (a bundle for this board installs no "
            "onnxruntime; the whole [runtime] extra does), add swap for pip installs.",
            "ai-edge-litert 2.3 needs Python >= 3.10 on aarch64 (3.9 stops at 2.1).",
        )),
    Profile(
        "jetson-nano", "NVIDIA Jetson Nano (4x Cortex-A57, Maxwell GPU, JetPack 4)", Family.JETSON, Arch.AARCH64,
        cores=4, memory_mb=4096, threads=4,
        targets=(ONNX_FP32_GPU, TFLITE_INT8, TFLITE_FP32),
        os="JetPack 4.6 (L4T R32, Ubuntu 18.04, Python 3.6)",
        install=(
            "# PyPI has no aarch64 CUDA/TensorRT onnxruntime: NVIDIA's onnxruntime-gpu wheels come from the",
            "# Jetson Zoo (https://elinux.org/Jetson_Zoo#ONNX_Runtime). For JetPack 4 they target Python 3.6/3.8,",
            "# older than tledge's minimum (3.10): build onnxruntime-gpu with TensorRT from source for a newer",
            "# Python, or run on the CPU with a Python >= 3.10 you install yourself (e.g. with pyenv).",
            "pyenv install 3.11 && ~/.pyenv/versions/3.11*/bin/python -m venv ~/tledge-venv",
            f"~/tledge-venv/bin/pip install './{WHEEL}[runtime]'   # CPU only: ai-edge-litert + onnxruntime",
        ),
        pip=_PIP_ALL,  # pyenv's Python sees nothing of JetPack's (its OpenCV is built for Python 3.6): all from PyPI
        camera=("CSI camera: OpenCV with GStreamer (JetPack's python3-opencv, not pip's) and the pipeline "
                "'nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 "
                "! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1'"),
        notes=(
            "JetPack 4 is the last release for the Nano: no Python >= 3.10 GPU wheels of onnxruntime exist for it.",
            "Maxwell has no int8 tensor cores: TensorRT runs the fp32 file as fp16 at best.",
            "pip's opencv-python-headless has no GStreamer, and JetPack 4's OpenCV is built for its Python 3.6: "
            "the CSI camera (nvarguscamerasrc) needs an OpenCV built with GStreamer for the pyenv Python; USB "
            "cameras, files and URLs work with pip's.",
            "Ubuntu 18.04's glibc is 2.27: onnxruntime's aarch64 wheels for it stop at 1.28 (1.29+ need glibc 2.28).",
        ), constraints=_NANO_ONNXRUNTIME),  # (no numpy < 2: nothing of JetPack's is imported, and pip's OpenCV 4.11+ needs numpy 2)
    Profile(
        "jetson-orin", "NVIDIA Jetson Orin Nano / NX / AGX (6-12x Cortex-A78AE, Ampere GPU, JetPack 6)",
        Family.JETSON, Arch.AARCH64, cores=6, memory_mb=8192, threads=6,
        targets=(ONNX_FP32_GPU, TFLITE_INT8, TFLITE_FP32),
        os="JetPack 6 (L4T R36, Ubuntu 22.04, Python 3.10, CUDA 12, TensorRT 8.6/10)",
        install=(
            "# PyPI has no aarch64 onnxruntime-gpu (only x86-64 and Windows): install NVIDIA's build for",
            "# your JetPack from the Jetson Zoo (https://elinux.org/Jetson_Zoo#ONNX_Runtime), which links",
            "# the jetson-ai-lab pip index for JetPack 6, e.g. pip install onnxruntime-gpu --index-url <that index>",
            "python3 -m venv --system-site-packages ~/tledge-venv   # system site: JetPack's OpenCV with GStreamer",
            "~/tledge-venv/bin/pip install onnxruntime-gpu --index-url <JetPack 6 index from the Jetson Zoo>",
            f"~/tledge-venv/bin/pip install --no-deps ./{WHEEL} && ~/tledge-venv/bin/pip install 'numpy<2' flatbuffers "
            "ai-edge-litert   # LiteRT: the int8 TFLite CPU fallback",
            "# --no-deps: tledge[runtime]'s onnxruntime (CPU) and pip's OpenCV would shadow the GPU/GStreamer builds",
        ),
        pip=("numpy",),
        camera=("CSI camera: OpenCV with GStreamer (JetPack's python3-opencv) and "
                "'nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 "
                "! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1'"),
        notes=(
            "The first TensorRT start builds an engine (minutes); later starts load it from "
            f"{TRT_CACHE_DIR}, one folder per model file's content. Delete it after changing TensorRT.",
            "onnxruntime from PyPI (CPU) and onnxruntime-gpu both install the `onnxruntime` module: keep one.",
            "Python 3.10 (JetPack 6): onnxruntime from PyPI stops at 1.23 there; numpy 2.3+ needs 3.11.",
            "Cores: Orin Nano 6, NX 8, AGX 12; threads only matter for ops that fall back to the CPU.",
            "int8 through TensorRT needs a QDQ file and trt_int8_enable: not a default here.",
            "No fp16 ONNX file: TensorRT builds fp16 kernels from the fp32 file (trt_fp16_enable), and "
            "tledge export writes no fp16 ONNX.",
            "JetPack's OpenCV is built against numpy 1.x: keep numpy < 2 in a venv that uses it.",
        ), constraints=_JETSON_NUMPY),
    Profile(
        "coral-usb", "Google Coral USB Accelerator (Edge TPU) on a Linux host", Family.CORAL, Arch.ANY,
        cores=None, memory_mb=None, threads=None,
        targets=(EDGETPU_INT8, TFLITE_INT8),
        os="Debian 12 / Ubuntu 22.04+ / Pi OS Bookworm host (x86-64 or aarch64) with Python >= 3.10 "
           "(ai-edge-litert 2.3 has no wheels for 3.9: Debian 11 and Pi OS Bullseye are too old)",
        install=(
            "curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo gpg --dearmor -o /usr/share/keyrings/coral-edgetpu.gpg",
            "echo 'deb [signed-by=/usr/share/keyrings/coral-edgetpu.gpg] https://packages.cloud.google.com/apt coral-edgetpu-stable main' | sudo tee /etc/apt/sources.list.d/coral-edgetpu.list",
            "sudo apt-get update && sudo apt-get install -y libedgetpu1-std   # then unplug and replug the accelerator",
            f"python3 -m venv ~/tledge-venv && ~/tledge-venv/bin/pip install './{WHEEL}[runtime]'   "
            "# (a venv: Debian 12's pip refuses the system Python, PEP 668); libedgetpu.so.1 loads through "
            "ai-edge-litert's load_delegate",
        ),
        pip=_PIP_TFLITE,
        camera="The host's camera: picamera2 on a Pi, OpenCV camera index elsewhere.",
        notes=(
            "Coral's own Python packages (pycoral, its tflite_runtime builds) exist only for Python <= 3.9; "
            "tledge does not need them, but loading libedgetpu into ai-edge-litert is not verified on hardware here.",
            "Only full-int8 files compiled by edgetpu_compiler run on the TPU; the compiler runs on x86-64 "
            "Debian/Ubuntu only (not on a Pi): compile on the workstation, or use Coral's Colab notebook.",
            "Ops the compiler cannot map run on the host CPU, and everything after the first unmapped op too.",
            "USB ids: 1a6e:089a before the runtime loads the firmware, 18d1:9302 after.",
            "libedgetpu1-max runs faster and hotter; the std build is the safe default.",
        )),
    Profile(
        "x86-cpu", "x86-64 CPU (Linux; on Windows and Intel Macs the ONNX files)", Family.X86, Arch.X86_64,
        cores=None, memory_mb=None, threads=None,
        targets=(TFLITE_INT8, ONNX_INT8_CPU, TFLITE_FP32, ONNX_FP32_CPU),
        os="64-bit Linux with Python 3.10-3.13 (a bundle's run.sh and LiteRT; Windows and Intel macOS have no "
           "ai-edge-litert wheels: install the wheel with its [runtime] extra there and run the ONNX int8 file)",
        install=(f"python3 -m venv ~/tledge-venv && ~/tledge-venv/bin/pip install './{WHEEL}[runtime]'   "
                 "# on Windows and Intel Macs the extra brings onnxruntime only (no ai-edge-litert 2.x wheels "
                 "there): use the ONNX int8 file",),
        pip=_PIP_ALL,
        camera="OpenCV camera index (V4L2 on Linux, AVFoundation on macOS, MSMF/DirectShow on Windows).",
        notes=(
            "Measured here (2 cores, AVX-512 VNNI, MobileNetV2-224): LiteRT int8 2.8 ms, onnxruntime int8 "
            "(U8S8) 3.7 ms, LiteRT fp32 4.8 ms, onnxruntime fp32 8.3 ms; dynamic-range TFLite is slower than fp32.",
            "onnxruntime int8 with int8 activations (S8S8) can be slower than fp32 on x86: export U8S8.",
            "tledge's int8 ONNX files use uint8 weights (U8U8) where U8S8 would saturate on AVX2 CPUs without VNNI: "
            "no fast x86 kernel, about the fp32 file's latency (MobileNetV2-224 7.2 against 7.5 ms, AMD EPYC, "
            "2026-12-07); the int8 TFLite file is the fast one.",
            "Small models can be faster in fp32 than in int8 on x86 (MobileNet v1 0.25 1000-class: int8 1.3-1.7x "
            "the fp32 latency on an AVX-512/AMX Xeon): `tledge bench model_int8.tflite model_fp32.tflite` on the "
            "machine decides.",
        )),
    Profile(
        "arm64-generic", "Any other 64-bit ARM Linux board", Family.GENERIC, Arch.AARCH64,
        cores=None, memory_mb=None, threads=None,
        targets=(TFLITE_INT8, TFLITE_FP32, ONNX_INT8_CPU, ONNX_FP32_CPU),
        os="64-bit Linux with glibc >= 2.28 and Python 3.10-3.13",
        install=(f"python3 -m venv ~/tledge-venv && ~/tledge-venv/bin/pip install './{WHEEL}[runtime]'   "
                 "# needs glibc >= 2.27 (ai-edge-litert) / 2.28 (onnxruntime 1.31)",),
        pip=_PIP_TFLITE,
        camera="OpenCV camera index (V4L2).",
        notes=("Boards with an NPU (Rockchip, i.MX, Hailo ...) need their vendor's delegate: not covered.",
               "32-bit ARM userlands (armv7l) have no ai-edge-litert/onnxruntime wheels on PyPI: tflite-runtime "
               "2.14 (armv7l, Python 3.11, glibc 2.34+) is the fallback.")),
)}


def profile_names() -> list[str]:
    return list(PROFILES)


def get_profile(name: "str | Profile") -> Profile:
    """A profile by name (case-insensitive; `_` and `-` alike), or TledgeError listing the names."""
    if isinstance(name, Profile):
        return name
    key = str(name).strip().lower().replace("_", "-")
    if key in PROFILES:
        return PROFILES[key]
    import difflib

    close = difflib.get_close_matches(key, PROFILES, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise TledgeError(f"unknown device {name!r}{hint}; known devices: {', '.join(PROFILES)}")
