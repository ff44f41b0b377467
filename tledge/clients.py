"""Clients other than tledge on exported files: MediaPipe Tasks ImageClassifier and OpenCV's dnn module, measured
against `tledge run`.

`mediapipe_scores` runs MediaPipe on raw photos (MediaPipe resizes them itself); `measure` is the "clients"
section of an export's parity report: per .tflite, MediaPipe's top-1 agreement with the tledge runtime and
with the Keras reference on the parity photos, or why it was not measured and how to measure it. mediapipe
is never a tledge dependency (it pulls opencv-contrib-python, a second `cv2`): it is used when importable.
Per .onnx, `cv2.dnn` (OpenCV is tledge's own dependency, so this is always measured) fed the input `tledge run`
feeds: it loads the file or not, and its top-1 agreement with `tledge run` (its own int8 kernels).
No TensorFlow here.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tledge.contract import decision_name, same_decision
from tledge.paths import utf8_name

HOW_TO_MEASURE = ("in a venv with `pip install -e '.[runtime,clients]'` (in the checkout; mediapipe brings its own cv2: "
                  "keep it out of the export venv), run `python benchmarks/mediapipe_resize.py EXPORT_DIR VAL_DIR` from a "
                  "tledge source checkout (benchmarks/ is not in the wheel); "
                  "CI: ci/clients_venv.sh")


def mediapipe_available() -> bool:
    return importlib.util.find_spec("mediapipe") is not None


def mediapipe_scores(model: str | Path, images: Sequence[Any]) -> np.ndarray:
    """MediaPipe Tasks ImageClassifier's scores (one row per image, columns in output order) for raw images
    (paths or HxWx3 uint8 RGB arrays), each resized by MediaPipe itself."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    from tledge.images import load as load_image

    base = BaseOptions(model_asset_path=str(model)) if utf8_name(model) else \
        BaseOptions(model_asset_buffer=Path(model).read_bytes())
    opts = vision.ImageClassifierOptions(base_options=base, max_results=-1)
    rows = []
    with vision.ImageClassifier.create_from_options(opts) as classifier:
        for item in images:
            rgb = load_image(item) if isinstance(item, (str, Path)) else item
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb, np.uint8))
            cats = classifier.classify(image).classifications[0].categories
            row = np.zeros(max(c.index for c in cats) + 1, np.float32)
            for c in cats:
                row[c.index] = c.score
            rows.append(row)
    return np.stack(rows)


def measure(folder: Path, files: Sequence[str], pixels: np.ndarray, reference: np.ndarray,
            photos: Sequence[Path] | None, threads: int | None = None) -> dict:
    """The clients section: MediaPipe on the raw `photos` (whose contract-prepared `pixels` gave the Keras
    `reference`) for each .tflite among `files` (names relative to `folder`); OpenCV (`opencv`) for each .onnx."""
    section = _mediapipe(folder, files, pixels, reference, photos, threads)
    cv = opencv(folder, files, pixels, threads)
    return {**section, "opencv": cv} if cv else section


# the first onnxruntime release implementing each ONNX opset / IR version (onnxruntime's docs/Versioning.md); NVIDIA's
# onnxruntime-gpu builds for JetPack 5/6 are 1.16-1.20, OpenCV's dnn parses tledge's opset 17 files from 4.7 on
# (measured: 4.5.5 and 4.6 refuse Clip with three inputs and DequantizeLinear) and int16 tensors from 5.0 on; an int8
# file with int8 weights loads in OpenCV 5.1 because tledge writes an int8-weight Gemm's bias as a float constant
# (tledge.quant.constadds.float_gemm_biases; tests/test_onnx_gemm_bias.py) and an int16 activation that an int8-weight
# Conv writes or reads as a float Clip (5.1 fuses that Conv as 8-bit whatever its activations: it refused such a file or,
# int16 between two Convs, ran it with top-1 = onnxruntime on 29 of 64 photos; tledge.quant.int16convs,
# tests/test_onnx_int16_opencv.py). Such a file keeps opset 21 (onnxruntime >= 1.18) but, with no int16 tensor left,
# ran in OpenCV 4.8 and 4.10 (measured); int16 files left (uint8 weights, int16 between other ops) need 5.0
ORT_FOR_OPSET = {17: "1.13", 18: "1.14", 19: "1.15", 20: "1.17", 21: "1.18", 22: "1.21"}
ORT_FOR_IR = {8: "1.13", 9: "1.15", 10: "1.18"}


def onnx_readers(path: Path) -> dict:
    """What loading the ONNX file at `path` takes: its opset and IR version, the oldest onnxruntime implementing
    them (None above the table: the newest), and the oldest OpenCV dnn that reads tledge's files of its kind."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    opset = max((o.version for o in m.opset_import if (o.domain or "") in ("", "ai.onnx")), default=0)
    int16 = any(t.data_type in (onnx.TensorProto.INT16, onnx.TensorProto.UINT16) for t in m.graph.initializer)
    need = [v for v in (ORT_FOR_OPSET.get(opset), ORT_FOR_IR.get(m.ir_version)) if v]
    ort = max(need, key=lambda v: tuple(map(int, v.split(".")))) if len(need) == 2 else None
    return {"opset": opset, "ir": m.ir_version, "onnxruntime": ort, "opencv": "5.0" if int16 else "4.7"}


def _readers_text(r: dict) -> str:
    ort = f"onnxruntime >= {r['onnxruntime']}" if r.get("onnxruntime") else "a recent onnxruntime"
    cv = f"OpenCV dnn >= {r['opencv']}" if r.get("opencv") else f"OpenCV dnn {r.get('opencv_refused')} refused it"
    return f"{ort} (opset {r['opset']}, IR {r['ir']}), {cv}"


OPENCV_IMAGES = 64  # cv2.dnn runs image by image: an even sample of the parity images bounds its cost


def opencv(folder: Path, files: Sequence[str], pixels: np.ndarray, threads: int | None = None) -> dict:
    """cv2.dnn.readNetFromONNX on each .onnx among `files`, fed the prepared input `tledge run` feeds on up to
    OPENCV_IMAGES of the parity images: top-1 agreement (label sets for independent scores) with tledge run and the largest score difference, or
    OpenCV's error. {} without an .onnx file."""
    names = [f for f in files if f.endswith(".onnx") and (folder / f).is_file()]
    if not names:
        return {}
    import cv2

    from tledge.runtime import load

    pick = np.unique(np.linspace(0, len(pixels) - 1, min(len(pixels), OPENCV_IMAGES)).round().astype(int))
    section: dict = {"version": cv2.__version__, "images": len(pick), "files": []}
    for name in names:
        try:
            section.setdefault("readers", {})[name] = onnx_readers(folder / name)
        except Exception as exc:  # noqa: BLE001 - parity has reported an unreadable file already
            section.setdefault("readers", {})[name] = {"error": type(exc).__name__}
        try:
            model = load(folder / name, threads=threads)
            x = model.from_nhwc(pixels[pick])
            ours = np.asarray(model.predict(x), np.float32).reshape(len(x), -1)
        except Exception as exc:  # noqa: BLE001 - parity has reported it already: nothing to compare with
            section["files"].append({"file": name, "error": f"tledge run cannot run it ({type(exc).__name__})"})
            continue
        try:
            path = folder / name  # by its bytes when its name is not UTF-8 (OpenCV crashed on such a name)
            net = cv2.dnn.readNetFromONNX(str(path) if utf8_name(path) else np.fromfile(path, np.uint8))
            theirs = []
            for one in x:
                net.setInput(np.ascontiguousarray(one[None]))
                theirs.append(np.asarray(net.forward(), np.float32).reshape(-1))
        except cv2.error as exc:  # OpenCV refusing a file is a finding, not a crash
            section["files"].append({"file": name, "error": " ".join(str(exc).split())[-200:]})
            if "opencv" in section["readers"][name]:  # by opset it would read: this version refused it
                section["readers"][name]["opencv"] = None
                section["readers"][name]["opencv_refused"] = cv2.__version__
            continue
        theirs_a = np.stack(theirs)
        section["agreement_of"] = decision_name(model.contract.independent)
        section["files"].append({"file": name, "tledge": int(same_decision(theirs_a, ours,
                                                                              model.contract.independent).sum()),
                                 "max_abs": float(np.abs(theirs_a - ours).max()) if theirs_a.shape == ours.shape
                                 else None})
    return section


def _mediapipe(folder: Path, files: Sequence[str], pixels: np.ndarray, reference: np.ndarray,
               photos: Sequence[Path] | None, threads: int | None) -> dict:
    tflite = [f for f in files if f.endswith(".tflite") and "_edgetpu" not in f and (folder / f).is_file()]
    section: dict = {"client": "mediapipe", "images": 0, "files": []}
    if not tflite:
        return {**section, "measured": False, "why": "no .tflite file in this export"}
    if not mediapipe_available() or not photos:
        from tledge.metadata import read_contract

        why = "mediapipe is not importable here" if not mediapipe_available() else "the parity images are not photos"
        try:
            contract = read_contract(folder / tflite[0])  # what is known without running it
        except Exception:  # noqa: BLE001 - parity has reported an unreadable file already
            contract = None
        limits = mediapipe_limits(contract) if contract is not None else None
        how = {} if contract is not None and contract.channels == 1 else {"how": HOW_TO_MEASURE}  # (it refuses them)
        return {**section, "measured": False, "why": why, **how, **({"limits": limits} if limits else {})}
    import mediapipe

    from tledge.runtime import load

    section.update(measured=True, images=len(photos), version=getattr(mediapipe, "__version__", "?"))
    for name in tflite:
        model = load(folder / name, threads=threads)
        row: dict = {"file": name, "resize": model.contract.resize.value, "fit": model.contract.fit.value}
        try:
            theirs = mediapipe_scores(folder / name, photos)
        except Exception as exc:  # noqa: BLE001 - MediaPipe refusing a file is a finding, not a crash
            section["files"].append({**row, "error": f"{exc.__class__.__name__}: {exc}"[:200]})
            continue
        ours = np.concatenate([model.predict(model.from_nhwc(pixels[i:i + 32])) for i in range(0, len(pixels), 32)])
        ind = model.contract.independent  # (a label set: MediaPipe's categories over 0.5, as its users threshold)
        section["agreement_of"] = decision_name(ind)
        row.update(tledge=int(same_decision(theirs, ours, ind).sum()),
                   keras=int(same_decision(theirs, reference, ind).sum()))
        section["files"].append(row)
    return section


CLIENT_AGREEMENT = 0.9  # below this top-1 agreement with tledge run, a client's row is also said on the terminal


def mediapipe_limits(contract) -> str | None:
    """What MediaPipe Tasks' ImageClassifier does with files of this contract, known without running it."""
    if contract.channels == 1:
        return ("MediaPipe Tasks' ImageClassifier refuses 1-channel models (\"Only RGB color space is supported\", "
                "mediapipe 1.2.3), and so does the TFLite Task Library's (tflite-support 0.4.4); LiteRT, ONNX Runtime "
                "and tledge run read these files")
    mp = (contract.extra.get("resize_by_client") or {}).get("mediapipe") or {}
    if mp.get("agreement") == "differs":
        return (f"MediaPipe Tasks resizes every image itself ({mp.get('resize')}, {mp.get('fit')}), not as this "
                f"contract says ({contract.resize.value}, {contract.fit.value}: the standard metadata cannot describe "
                "it), so its answers can differ from tledge run's; feed it images the contract's geometry already made "
                f"({contract.resize.value}, {contract.fit.value}, to the input size) and tledge run the raw photos")
    return None


def notes(section: dict) -> list[str]:
    """Terminal notes for what parity.md's Clients section would otherwise hide: a file a client cannot load or run,
    or one whose top-1 agrees with `tledge run` on under CLIENT_AGREEMENT of the images. A report, not a gate."""
    out = [section["limits"]] if section.get("limits") else []
    for client, sub in (("MediaPipe Tasks", section), (f"OpenCV {(section.get('opencv') or {}).get('version', '')}",
                                                       section.get("opencv") or {})):
        n = sub.get("images") or 0
        for r in sub.get("files", []):
            if "error" in r:
                out.append(f"{r['file']}: {client.strip()} cannot load or run it ({r['error'][-160:]}); see parity.md")
            elif n and r.get("tledge") is not None and r["tledge"] / n < CLIENT_AGREEMENT:
                out.append(f"{r['file']}: {client.strip()} agrees with tledge run on only {r['tledge']}/{n} images; "
                           "see parity.md")
    for f, r in ((section.get("opencv") or {}).get("readers") or {}).items():  # beyond what the usual files take
        if r.get("opset", 0) > 17 or r.get("opencv") not in ("4.7", None):  # None: its refusal is noted above
            out.append(f"{f} takes {_readers_text(r)}: older ones (NVIDIA's onnxruntime-gpu 1.16-1.17 for JetPack, a "
                       "distribution's OpenCV 4.x) cannot load it; see parity.md")
    return out


def markdown(section: dict) -> list[str]:
    """The parity.md lines of a clients section."""
    return ["", "## Clients", ""] + _mediapipe_markdown(section) + _opencv_markdown(section.get("opencv") or {})


def _opencv_markdown(cv: dict) -> list[str]:
    if not cv:
        return []
    n = cv["images"]
    lines = ["", f"OpenCV {cv['version']} (`cv2.dnn.readNetFromONNX`, its own kernels) fed the input `tledge run` "
             f"feeds, on {n} of the parity images:", "", "| file | OpenCV = tledge run | max abs difference |",
             "|---|---|---|"]
    for r in cv["files"]:
        if "error" in r:
            lines.append(f"| {r['file']} | cannot load or run it: {r['error'][-120:]} | - |")
        else:
            diff = "-" if r["max_abs"] is None else f"{r['max_abs']:.3g}"
            lines.append(f"| {r['file']} | {r['tledge']}/{n} ({r['tledge'] / n:.3f}) | {diff} |")
    readers = {f: r for f, r in (cv.get("readers") or {}).items() if "error" not in r}
    if readers:
        lines += ["", "What loading each file takes (other versions: untested or refused):", ""]
        lines += [f"- {f}: {_readers_text(r)}" for f, r in readers.items()]
    return lines


def _mediapipe_markdown(section: dict) -> list[str]:
    lines: list[str] = []
    if not section.get("measured"):
        lines.append(f"MediaPipe Tasks ImageClassifier: not measured ({section.get('why', '?')}).")
        if section.get("limits"):
            lines.append(f"Known without running it: {section['limits']}.")
        if section.get("how"):
            lines.append(f"To measure it: {section['how']}.")
        return lines
    n = section["images"]
    lines += [(f"MediaPipe Tasks ImageClassifier {section.get('version', '')} on the {n} parity photos, each "
               f"resized by MediaPipe itself (its CPU resize is `warp-linear`): {section.get('agreement_of', 'top-1')} "
               "agreement with `tledge run` and with the Keras reference."), "",
              "| file | tledge resize | MediaPipe = tledge run | MediaPipe = Keras |", "|---|---|---|---|"]
    for r in section["files"]:
        if "error" in r:
            lines.append(f"| {r['file']} | {r['resize']} | error: {r['error'][:80]} | - |")
        else:
            lines.append(f"| {r['file']} | {r['resize']} ({r['fit']}) | {r['tledge']}/{n} ({r['tledge'] / n:.3f}) | "
                         f"{r['keras']}/{n} ({r['keras'] / n:.3f}) |")
    return lines
