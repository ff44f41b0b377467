"""Command-line options shared by `tledge run`, `info` and `bench` (and --mean/--std by `parity`): how to open a
model file.

Imports nothing heavy (the CLI builds every subcommand's parser at start-up).
"""
from __future__ import annotations

import os
from pathlib import Path

from tledge.cli import validate as V
from tledge.contract import Fit, Layout, Resize
from tledge.errors import TledgeError

RESIZES = tuple(r.value for r in Resize)  # the contract's choices, in its order
FITS = tuple(f.value for f in Fit)
LAYOUTS = tuple(v.value for v in Layout)


def check_model_options(args, models=()) -> None:
    """Ranges and files of the options above, before anything is loaded (TledgeError, exit 2). `models`: the model
    paths given; an option for the other runtime only (--providers for TFLite files, --delegate for ONNX ones) is
    refused rather than ignored."""
    from tledge.runtime.backends import MAX_THREADS, default_threads

    V.in_range(args.threads, "--threads", 1, MAX_THREADS)
    if args.threads is None:
        default_threads()  # a TLEDGE_THREADS out of range is refused here, before the model is loaded
    kinds = {Path(m).suffix.lower() for m in models}
    if models and kinds <= {".tflite"} and getattr(args, "providers", None):
        raise TledgeError("--providers chooses onnxruntime execution providers and has no effect on .tflite "
                          "files (for TFLite: --delegate LIB or --device)")
    if models and kinds <= {".onnx"} and args.delegate:
        raise TledgeError("--delegate loads a TFLite delegate and has no effect on .onnx files (for ONNX: "
                          "--providers or --device)")
    _check_providers(getattr(args, "providers", None))
    for lib in args.delegate or ():
        if os.sep in lib and not os.path.isfile(lib):
            raise TledgeError(f"--delegate {lib}: file not found")
    V.delegates(args.delegate)  # opens, and is a TFLite delegate library
    V.device(getattr(args, "device", None))
    if getattr(args, "input_size", None):
        V.size(args.input_size)
    if not hasattr(args, "preprocess"):
        return
    if args.labels:
        V.labels_file(args.labels)
    V.preprocess(args.preprocess)
    check_mean_std(args)
    V.geometry(getattr(args, "fit", None), args.crop)  # as export: --crop means --fit crop


def add_model_options(p) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--threads", type=int, help="inference threads (default: usable cores, at most 4, or "
                                               "TLEDGE_THREADS; tledge run on several files or a video: half "
                                               "of them, the other half prepares the images)")
    g.add_argument("--device", help="device profile from tledge.devices (threads, providers, delegates)")
    g.add_argument("--providers", help="onnxruntime providers in order, comma separated "
                                       "(default TensorRT,CUDA,CPU: the unavailable ones are skipped)")
    g.add_argument("--delegate", action="append", default=[], metavar="LIB",
                   help="TFLite delegate library to load (e.g. libedgetpu.so.1); repeatable")
    f = p.add_argument_group("files made elsewhere (no tledge metadata)")
    f.add_argument("--labels", help="labels file: one per line (a leading 'background' line is kept), "
                                    "or Teachable Machine '0 name' lines numbered from 0")
    f.add_argument("--preprocess", help="normalisation: tf, caffe, torch, scale, raw, or a backbone name "
                                        "(mobilenet_v2, resnet50, ...)")
    add_mean_std(f)
    f.add_argument("--layout", choices=LAYOUTS, help="input layout (default: guessed from the shape)")
    f.add_argument("--resize", choices=RESIZES, help="resize method (default: the file's contract; a file made elsewhere: warp-linear "
                   "for TFLite, area for ONNX)")
    f.add_argument("--crop", type=float, metavar="FRACTION",
                   help="resize the short side to size/FRACTION then centre-crop (e.g. 0.875)")
    f.add_argument("--fit", choices=FITS, help="how the image fits the input")
    f.add_argument("--color", choices=("rgb", "bgr"), help="channel order the model wants (default rgb)")
    f.add_argument("--input-size", help="HxW, for models with a dynamic input size")
    f.add_argument("--logits", action="store_true", help="the model outputs logits: softmax them for scores")


def add_mean_std(group) -> None:
    """--mean/--std: how a file made elsewhere takes pixels (run, info, bench; parity for the files it checks)."""
    group.add_argument("--mean", help="per-channel mean in 0..255 pixel units, e.g. 123.7,116.3,103.5")
    group.add_argument("--std", help="per-channel std in 0..255 pixel units, e.g. 58.4,57.1,57.4")


def check_mean_std(args) -> None:
    """--mean/--std are 1 or 3 finite numbers, the std's > 0, in 0..255 pixel units (TledgeError, exit 2): refused
    before any model is loaded (parity reported values for 0..1 pixels as a file that could not run, exit 1)."""
    V.numbers(args.mean, "--mean")
    V.numbers(args.std, "--std", positive=True)
    if args.mean is not None or args.std is not None:
        from tledge.runtime.foreign import pixel_units

        pixel_units(args.mean, args.std)


def load_kwargs(args) -> dict:
    """Keyword arguments for tledge.runtime.load from parsed options."""
    kw: dict = {"threads": args.threads, "device": args.device,
                "providers": [s.strip() for s in args.providers.split(",") if s.strip()] if args.providers else None,
                "delegates": tuple(args.delegate or ())}
    if hasattr(args, "preprocess"):
        kw.update(labels=args.labels, preprocess=args.preprocess, mean=args.mean, std=args.std,
                  layout=args.layout, resize=args.resize, crop=args.crop, fit=args.fit, color=args.color,
                  logits=args.logits)
    if getattr(args, "input_size", None):
        kw["input_size"] = V.input_size(args.input_size)
    if kw["providers"]:
        kw["providers"] = [_provider_name(s) for s in kw["providers"]]
    return {k: v for k, v in kw.items() if v is not None}


def _check_providers(text: str | None) -> None:
    """--providers names onnxruntime knows (available here or not: a Jetson's TensorRT is skipped on a laptop, a
    misspelt name is a mistake, exit 2)."""
    if not text:
        return
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return  # said when an .onnx file is loaded
    import onnxruntime as ort

    known = ort.get_all_providers()
    for name in (_provider_name(s.strip()) for s in text.split(",") if s.strip()):
        if name not in known:
            raise TledgeError(f"--providers: {name!r} is not an onnxruntime execution provider (short names: "
                              "tensorrt, cuda, cpu, openvino, coreml, dml, rocm; or a full name such as "
                              "CPUExecutionProvider)")


def _provider_name(s: str) -> str:
    short = {"tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
             "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider", "openvino": "OpenVINOExecutionProvider",
             "coreml": "CoreMLExecutionProvider", "dml": "DmlExecutionProvider", "rocm": "ROCMExecutionProvider"}
    return short.get(s.lower(), s)
