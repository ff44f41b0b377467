"""tledge export MODEL [--out DIR] [--int8] [--fp16] [--dynamic] [--formats tflite,onnx] ..."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from tledge.artifacts import KINDS
from tledge.cli.model_options import FITS, LAYOUTS, RESIZES
from tledge.errors import TledgeError
from tledge.safejson import finite
from tledge.export.repair_budget import REPAIR_SECONDS


def add_arguments(p) -> None:
    p.add_argument("model", help=".keras, .h5 (Keras 3 or Keras 2 era) or a SavedModel folder")
    p.add_argument("--out", type=Path, help="output folder (default: <model stem>_export/ beside the model)")
    p.add_argument("--int8", action="store_true", help="also full-integer int8 TFLite (uint8 I/O) and ONNX QDQ")
    p.add_argument("--fp16", action="store_true", help="also fp16 TFLite")
    p.add_argument("--dynamic", action="store_true", help="also dynamic-range TFLite")
    p.add_argument("--formats", default=None, help="comma list of tflite, onnx (default both)")
    p.add_argument("--calib", help="calibration images folder for int8 (or 'random' for smoke tests); parity's images "
                   "too when there is no --val")
    p.add_argument("--val", help="labelled validation images (class folders) for parity and accuracy")
    p.add_argument("--labels", help="labels file: one per line, or Teachable Machine '0 name' lines")
    p.add_argument("--preprocess", help="mode (tf, caffe, torch, scale, raw), backbone name, or auto")
    p.add_argument("--input-size", help="HxW, for models with a dynamic input size")
    g = p.add_argument_group("image preparation (as `tledge run` takes them; recorded in the contract)")
    g.add_argument("--resize", choices=RESIZES,
                   help="resize method (default: warp-linear, MediaPipe's, when the image is stretched, the model's "
                        "contract says area or nothing and at least 35 labelled --val images show it changes Keras's "
                        "answers little (README); else the model's, or area; linear = cv2.dnn's)")
    g.add_argument("--fit", choices=FITS, help="how the image fits the input "
                                                                         "(default stretch)")
    g.add_argument("--crop", type=float, metavar="FRACTION",
                   help="resize the short side to size/FRACTION then centre-crop (ImageNet: 0.875 = 256 -> 224)")
    o = p.add_argument_group("ONNX files (TFLite files stay NHWC)")
    o.add_argument("--layout", choices=LAYOUTS, default="nhwc",
                   help="input layout of the ONNX files (nchw: for cv2.dnn.blobFromImage and NCHW pipelines)")
    o.add_argument("--onnx-input", choices=("float32", "uint8"), default="float32",
                   help="input dtype of the ONNX files (uint8: raw pixels, a Cast inside)")
    p.add_argument("--thresholds", help="JSON/TOML file of parity thresholds per precision or file")
    p.add_argument("--calib-limit", type=int, default=256, help="max calibration images (default 256)")
    p.add_argument("--fidelity", type=float, metavar="AGREEMENT",
                   help="int8 agreement target with the Keras model: top-1 (default 0.98), and top-5 from 20 "
                        "classes on (default 0.99); failing int8 files "
                        "go through the repair loop (calibration, weight rounding repair, float stem, fallback)")
    p.add_argument("--no-repair", dest="repair", action="store_false",
                   help="report failing int8 files as they are, without the repair loop")
    p.add_argument("--repair-time", type=float, metavar="SECONDS",
                   help=f"no new repair rung starts after this many seconds of the repair loop, shared by the "
                        f"failing int8 files (default {REPAIR_SECONDS:g}; inf: no limit); the rung running then "
                        f"finishes (and the graph rungs it was run ahead of still start), the best file so far is "
                        f"judged as usual, parity.md lists the rungs not started")
    p.add_argument("--int8-only", action="store_true",
                   help="keep every op of the int8 files int8: no float stem, no ops kept float for the CPU "
                        "delegate, no float fallback (for NPU delegates that run int8 ops only, e.g. NNAPI, "
                        "Ethos-U, i.MX VX; --device coral-usb implies it)")
    p.add_argument("--explain", action="store_true",
                   help="per-layer int8 error table in parity.md (always there when an int8 file still "
                        "fails after the repairs; with --no-repair only with --explain)")
    p.add_argument("--force", action="store_true",
                   help="--preprocess auto: export even when the best mode scores near chance")
    p.add_argument("--unsafe", action="store_true", help="allow code inside the model file (Lambda layers)")
    from tledge.cli.parity import add_loading_options  # (parity's module: deploy bundles carry it, not this one)

    add_loading_options(p, "a SavedModel's signature to export, and its output when it has several (default "
                           "serving_default, else its only signature; its only output)", "")
    p.add_argument("--json", action="store_true", help="print the parity report as JSON")
    from tledge.devices.options import add_device_argument

    add_device_argument(p, wins="--formats, --int8, --fp16 and --dynamic")


def _plan(args) -> tuple[tuple[str, ...], set[str], object]:
    """Formats and precisions to write: explicit flags win over a --device profile."""
    formats = tuple(s.strip() for s in args.formats.split(",") if s.strip()) if args.formats else None
    flags = {p for p in ("int8", "fp16", "dynamic") if getattr(args, p)}
    if not args.device:
        return formats or KINDS, flags, None
    from tledge.devices.options import device_from_args, resolve

    opts = resolve(device_from_args(args), formats=list(formats) if formats else None,
                   precisions=sorted(flags | {"fp32"}) if flags else None)
    return formats or opts.formats, flags or (set(opts.precisions) - {"fp32"}), opts


def _validate(args, notes: list[str]):
    """Every path and option, before TensorFlow or the model is loaded. Returns the output folder; `notes` gets what
    to say once everything is checked (a refused command prints its one error line only)."""
    from tledge.cli import validate as V
    from tledge.export.unit import not_an_export
    from tledge.runtime.backends import default_threads

    default_threads()  # TLEDGE_THREADS (parity runs the files) refused now, not after minutes of converting
    model = V.keras_model(args.model, "MODEL")
    out = Path(args.out) if args.out else model.with_name(model.stem + "_export")
    if not args.calib:  # a model `tledge train` wrote: the images it trained (and validated) on
        _training_images(args, model, notes)
    if args.signature is not None:
        from tledge.cli.parity import check_signature

        check_signature(args.signature, model)
    V.output_dir(out, "--out")
    for flag, images in (("--calib", args.calib), ("--val", args.val)):  # its files among the labelled photos
        if images and images != "random" and Path(images).is_dir() and \
                (out.resolve() == Path(images).resolve() or out.resolve().is_relative_to(Path(images).resolve())):
            raise TledgeError(f"--out {out} is inside the {flag} folder {images}: write the export elsewhere")
    foreign = not_an_export(out)  # someone else's files of the names export writes: never replaced
    if foreign:
        raise TledgeError(foreign)
    if args.calib and args.calib != "random":
        V.image_dir(args.calib, "--calib")
    if args.val:
        V.image_dir(args.val, "--val")
    if args.labels:
        V.labels_file(args.labels)
    V.preprocess(args.preprocess, allow_auto=True)
    V.in_range(args.calib_limit, "--calib-limit", 1)
    V.in_range(args.fidelity, "--fidelity", 0.0, 1.0, lo_open=True)
    V.in_range(args.repair_time, "--repair-time", 0.0, lo_open=True)
    if args.repair_time is not None and not args.repair:
        raise TledgeError("--repair-time limits the repair loop, and --no-repair turns it off (drop one)")
    V.geometry(args.fit, args.crop)
    _check_formats(args)
    if args.preprocess == "auto" and not args.val:  # it chooses by accuracy on labelled images
        raise TledgeError("--preprocess auto needs labelled --val images (class folders) to choose by")
    if args.force and args.preprocess != "auto":
        raise TledgeError("--force only applies to --preprocess auto")
    return out


def _training_images(args, model: Path, notes: list[str]) -> None:
    """No --calib: a model `tledge train` wrote calibrates on its training images (and, without --val, checks
    parity on its held-out ones), read from the symbolic links the run left beside it."""
    from tledge.export.imagesets import split_is_dangling, training_split
    from tledge.images import TRAINING_SPLIT

    found = training_split(model)
    if found and args.val:  # calibrate on the training images, not on the images parity checks
        if found[0]:
            args.calib = found[0]
            notes.append(f"images: --calib {args.calib}, the training run's training images (symbolic links it "
                         "left beside the model)")
    elif found:
        args.calib, args.val = found
        notes.append(f"images: --calib {args.calib or '(the validation images)'} and --val {args.val}, the "
                     "training run's training and held-out images (symbolic links it left beside the model)")
    elif not args.val and split_is_dangling(model):
        raise TledgeError(f"the training run's {model.parent / TRAINING_SPLIT}/ no longer leads to its images "
                          "(the data folder moved or was deleted): pass --calib DIR and --val DIR")


def _check_formats(args) -> None:
    """--formats names known formats, at least one, and a TFLite file when --fp16 / --dynamic ask for one."""
    from tledge.export.formats import FORMATS

    kinds = sorted({f.kind for f in FORMATS.values()})
    named = [s.strip() for s in (args.formats or "").split(",") if s.strip()]
    listed = set(named)
    for f in named:
        if f not in kinds:
            raise TledgeError(f"--formats: unknown format {f!r}; known: {', '.join(kinds)}")
    if args.formats is not None and not listed:  # `--formats ,` meant every format
        raise TledgeError(f"--formats {args.formats!r} names no format: pass tflite, onnx or both")
    wrong = [f for f in ("fp16", "dynamic") if getattr(args, f)]
    if wrong and listed and "tflite" not in listed:
        raise TledgeError(f"{' and '.join('--' + f for f in wrong)}: TFLite precisions, and --formats "
                          f"{args.formats} writes no TFLite file (ONNX files are fp32 and int8)")


def run(args) -> int:
    from tledge.cli import validate as V
    from tledge.export.parity import load_thresholds

    from tledge import log

    notes: list[str] = []
    out = _validate(args, notes)
    input_size = V.size(args.input_size)
    thresholds = load_thresholds(args.thresholds) if args.thresholds else {}
    _one_agreement(args, thresholds)
    formats, precisions, device = _plan(args)
    for flag, given, about in (("--int8-only", args.int8_only, {"int8"}), ("--fidelity", args.fidelity is not None,
                               {"int8"}), ("--explain", args.explain, {"int8"}),
                               ("--repair-time", args.repair_time is not None, {"int8", "dynamic"})):
        if given and not about & set(precisions):  # accepted and ignored: the user believed it did something
            raise TledgeError(f"{flag} is about {' and '.join(sorted(about))} files, and this export writes none: "
                              "add --int8")
    if args.int8_only and "onnx" in formats:  # it was applied to the TFLite writer only, without a word
        raise TledgeError("--int8-only is for TFLite int8 delegates (NPUs, the Edge TPU); an int8 ONNX file keeps "
                          "float ops at its input and output: add --formats tflite")
    if device is not None and device.compile_edgetpu and "onnx" in formats:  # (int8-only as --int8-only is)
        raise TledgeError(f"--device {args.device} runs compiled TFLite int8 files only (the Edge TPU): an ONNX file "
                          "is nothing it can run; drop --formats onnx, or pick another --device")
    _check_onnx_options(args, formats)
    labels = _labels(args, notes)
    for note in notes:  # everything checked: what export chose for the user
        _note(note)
    log.keep_log(out / "export.log")  # TensorFlow's and the converters' own messages (shown with -v)
    from tledge.export.pipeline import ExportConfig, export

    cfg = ExportConfig(
        out=out, formats=formats, int8="int8" in precisions, fp16="fp16" in precisions,
        dynamic="dynamic" in precisions, calib=args.calib, val=args.val,
        labels=labels, preprocess=args.preprocess, input_size=input_size, unsafe=args.unsafe,
        signature=args.signature, binary_output=args.binary_output,
        calib_limit=args.calib_limit, thresholds=thresholds, fidelity=args.fidelity, repair=args.repair,
        repair_time=REPAIR_SECONDS if args.repair_time is None else args.repair_time,
        explain=args.explain, int8_only=args.int8_only or bool(device is not None and device.compile_edgetpu),
        force=args.force,
        # a device profile without precision flags: exactly its files (plus fp32 of each format)
        pairs=device.pairs if device is not None and not (args.int8 or args.fp16 or args.dynamic) else (),
        compile_edgetpu=bool(device is not None and device.compile_edgetpu),
        resize=args.resize, fit=args.fit, crop=args.crop, onnx_layout=args.layout, onnx_input=args.onnx_input)
    _say_unmatched(args.thresholds, thresholds, cfg)
    result = export(args.model, cfg)  # staging folder, lock and manifest: tledge.export.unit
    _print(result, args)
    return 0 if result.passed else 1


def _one_agreement(args, thresholds: dict) -> None:
    """--fidelity replaced the agreement a --thresholds file set for int8 files, without a word."""
    from tledge.artifacts import Thresholds

    given, default = thresholds.get("int8"), Thresholds.for_precision("int8")
    keys = {"min_agreement", "min_topk_agreement"}  # set by the file (Thresholds.given), a default's value too
    if args.fidelity is not None and given is not None and (keys & given.given if given.given is not None else (
            given.min_agreement, given.min_topk_agreement) != (default.min_agreement, default.min_topk_agreement)):
        raise TledgeError(f"--fidelity and --thresholds {args.thresholds} ([int8]) both set the int8 agreement: "
                          "drop one")


def _say_unmatched(path, thresholds: dict, cfg) -> None:
    """A misspelt file name in --thresholds left that file on its precision's defaults, silently (parity says it)."""
    from tledge.artifacts import BY_FILENAME
    from tledge.export.pipeline import plan

    names = {f.filename for f in plan(cfg)}
    if cfg.compile_edgetpu:
        names |= {n for n in BY_FILENAME if "edgetpu" in n}
    unmatched = sorted(k for k in thresholds if "." in k and k not in names)
    if unmatched:
        from tledge import log

        log.warn(f"--thresholds {path}: {', '.join(unmatched)} match no file this export writes "
                 f"({', '.join(sorted(names))})")


def _check_onnx_options(args, formats) -> None:
    given = [f for f, v, d in (("--layout", args.layout, "nhwc"), ("--onnx-input", args.onnx_input, "float32"))
             if v != d]
    if given and "onnx" not in formats:
        raise TledgeError(f"{' and '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} to ONNX files, "
                          f"and this export writes "
                          f"{', '.join(formats)} only (TFLite files stay NHWC)")


def _labels(args, notes: list[str]) -> str | None:
    """--labels, else the model's own labels.txt; refuses class folders that contradict the model's labels."""
    from tledge.cli.export_labels import export_labels

    return export_labels(args.model, args.labels, {"--val": args.val, "--calib": args.calib}, note=notes.append)


def _note(message: str) -> None:
    from tledge import log

    log.note(message)


def _print(result, args) -> None:
    if args.json:
        print(json.dumps(finite({**result.report.to_dict(), "out": str(result.out),
                                 "files": [str(f) for f in result.files], "seconds": result.seconds}), indent=2,
                         allow_nan=False))
        return
    print(result.report.table())
    for note in result.report.notes:  # on stderr with tledge's other notes, not with -q (all are in parity.md)
        _note(note)
    print(f"\n{wrote_line(result)}")
    for r in result.report.results:
        for f in r.failures:
            print(f"tledge export: parity: {r.file}: {f}", file=sys.stderr)
    print("parity: " + ("PASSED" if result.passed else "FAILED"))


def wrote_line(result) -> str:
    """`wrote 4 model files to export/: model_fp32.tflite, ... (+ manifest.json, parity.md, ...)`."""
    from tledge import artifacts, log

    names = [f.name for f in result.files]
    side = [n for n in (artifacts.MANIFEST, "parity.md", "parity.json", artifacts.CONTRACT_FILE, artifacts.LABELS_FILE,
                        "golden.npz") if (result.out / n).is_file()]
    if log.kept_log() is not None and log.kept_log().parent == result.out:
        side.append(log.kept_log().name)
    return (f"wrote {len(names)} model file{'s' if len(names) != 1 else ''} to {result.out}/: "
            f"{', '.join(names) or 'none'} (+ {', '.join(side)})")
