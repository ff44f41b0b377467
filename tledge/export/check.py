"""Parity of existing exported files against a reference Keras model (`tledge parity`).

Each file gets the input its own contract asks for: the embedded one (or tledge.json beside it), or
for a file made elsewhere the contract `tledge run` would infer from its input tensor, completed by
`--mean/--std` or `--preprocess`. The reference gets its own. A file's precision comes from its tensors, not its
name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tledge.artifacts import PRECISIONS
from tledge.errors import DataError, TledgeError
from tledge.export.check_load import file_normalisation, foreign_notes, load_file, refuse_unused
from tledge.export.parity import ParityReport, ParityResult, Thresholds, compare, independent_scores
from tledge.runtime.bench import one_image_ms

_SUFFIX_KIND = {".tflite": "tflite", ".onnx": "onnx"}


def exported_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files, or every .tflite / .onnx in the given folders, in a stable order."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix.lower() in _SUFFIX_KIND)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"exported file or folder not found: {p}")
    if not out:
        raise DataError(f"no .tflite or .onnx files in {', '.join(map(str, paths))}")
    seen: set[Path] = set()
    unique = []
    for f in out:  # a folder and a file in it, or one file named twice: checked once
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def display_names(files: Sequence[Path]) -> list[str]:
    """How each file is named in the report: its name, or, where two files share one (two export folders), the
    shortest tail of its path that tells them apart."""
    names = []
    for f in files:
        parts = f.resolve().parts
        k = 1
        while k < len(parts) and sum(g.resolve().parts[-k:] == parts[-k:] for g in files) > 1:
            k += 1
        names.append("/".join(parts[-k:]))
    return names


# ---- precision from the file -------------------------------------------------------------------------

def exported_precision(path: Path) -> str | None:
    """The precision the export that wrote `path` judged it at (its folder's manifest, when the file is unchanged),
    so `tledge parity` and `tledge export` give one verdict: a QAT model's fp32 TFLite file has int8 weights (the
    converter keeps its fake-quant), failed at export as fp32 and passed here as dynamic. None for other files."""
    from tledge import artifacts

    try:
        manifest = artifacts.read(path.parent)
        entry = manifest.entry(path.name) if manifest is not None else None
        if entry is None or entry.role != "model" or not entry.precision or entry.sha256 != artifacts.sha256_of(path):
            return None
    except Exception:  # noqa: BLE001 - an unreadable manifest: the file is judged by its tensors
        return None
    return str(entry.precision)


def precision_of(model) -> str:
    """fp32 / fp16 / dynamic / int8 from a loaded EdgeModel's tensors and operators."""
    found = _tflite_precision(model.backend.interpreter) if model.format == "tflite" else \
        _onnx_precision(model.path, model.backend)
    # float16 pixels in: fp16's budget (a float16-input ONNX file failed fp32's max abs on the input's rounding)
    return "fp16" if found == "fp32" and model.backend.inp.dtype == "float16" else found


def _tflite_precision(interpreter) -> str:
    counts: dict[str, int] = {}
    io = {d["index"] for d in interpreter.get_input_details() + interpreter.get_output_details()}
    for d in interpreter.get_tensor_details():
        if d["index"] in io:  # a float file taking uint8 pixels is not a dynamic-range file
            continue
        name = np.dtype(d["dtype"]).name
        counts[name] = counts.get(name, 0) + 1
    ints = counts.get("int8", 0) + counts.get("uint8", 0) + counts.get("int16", 0)
    if ints > counts.get("float32", 0):
        return "int8"  # integer activations (full-integer file, whatever its I/O types)
    if ints:
        return "dynamic"  # integer weights, float activations
    return "fp16" if counts.get("float16") else "fp32"


_ONNX_DYNAMIC_OPS = {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul"}
_ONNX_INT8_OPS = {"QuantizeLinear", "QLinearConv", "QLinearMatMul", "QGemm"}


def _onnx_precision(path: Path, backend) -> str:
    from tledge._deps import available

    if not available("onnx"):  # the runtime alone: uint8 pixels in are most likely an int8 file
        return "int8" if backend.inp.dtype in ("uint8", "int8") else "fp32"
    import onnx  # the graph decides: an fp32 file made with --onnx-input uint8 takes uint8 pixels too

    graph = onnx.load(str(path), load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    if ops & _ONNX_DYNAMIC_OPS:
        return "dynamic"
    if ops & _ONNX_INT8_OPS:
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer):
        return "fp16"
    return "fp32"


# ---- the reference ---------------------------------------------------------------------------------

def _reference_contract(lm, base, preprocess: str | None, labels: tuple[str, ...] = (), labels_from: str = "",
                        *, mean_std_given: bool = False):
    """The reference's own contract (raw pixels in; normalisation added in front when it does not bake
    it): from the model, a tledge.json beside it, the exported files' embedded contract, or --preprocess.
    `labels` (read from `labels_from`) name its outputs instead of `base`'s. `mean_std_given`: --mean/--std
    normalise the files without a contract, so a --preprocess the reference does not take is used by nothing."""
    from tledge.export import resolve

    embedded = "the exported files' embedded contract"
    if not labels:
        labels, labels_from = (base.labels if base else ()), embedded
    if lm.baked_mode is not None:
        mode, mode_from = None, None
    elif base is not None:
        mode, mode_from = base.norm.value, embedded  # what the export put in front of the model
    elif lm.contract is not None:
        mode, mode_from = None, None  # the tledge.json beside the model
    else:
        mode, mode_from = preprocess, "--preprocess"
    if preprocess and mean_std_given and mode_from != "--preprocess":  # (tledge run refuses the two together)
        said = "it bakes its normalisation" if lm.baked_mode is not None else \
            f"{mode_from or 'the tledge.json beside it'} says its normalisation"
        raise TledgeError(f"--preprocess {preprocess}: the reference does not take it ({said}) and --mean/--std "
                          "normalise the files without a contract: it is used by nothing: drop --preprocess")
    contract, add = resolve.resolve_contract(lm, preprocess=mode, input_size=None,  # the size comes from `base`
                                            labels=labels, labels_from=labels_from,
                                            preprocess_from=mode_from or "--preprocess",
                                            base=base, base_from=embedded if base is not None else None,
                                            auto=False)  # (parity has no --preprocess auto)
    if base is not None:  # the same geometry as the exported files
        contract = contract.replace(resize=base.resize, fit=base.fit, crop_fraction=base.crop_fraction,
                                    pad_value=base.pad_value)
    return contract.replace(layout="nhwc"), add  # the traced reference takes NHWC (an NCHW ONNX file's contract
    # fed it NCHW pixels: `tledge parity` failed on every --layout nchw export)


def _prep_key(c) -> tuple:
    """Contracts with equal keys prepare identical values (dtype aside; quantisation is the model's)."""
    norm = None if c.baked else (c.norm.value, tuple(c.mean_std()[0].tolist()), tuple(c.mean_std()[1].tolist()))
    return (c.height, c.width, c.channels, c.color, c.layout, c.resize, c.fit, c.crop_fraction, c.pad_value, norm)


class _Inputs:
    """Images prepared once per distinct contract."""

    def __init__(self, paths: list[Path]):
        self.paths, self._cache = paths, {}

    def for_contract(self, contract) -> np.ndarray:
        key = _prep_key(contract)
        if key not in self._cache:
            c = contract if not contract.baked else contract.replace(input_dtype="float32")
            self._cache[key] = np.stack([c.prepare(p) for p in self.paths]).astype(np.float32)
        return self._cache[key]


def _images(images, labels: tuple[str, ...], contract, limit: int):
    """Readable image paths (skipping the unreadable, with a warning) and labels or None."""
    from tledge.export.imagesets import load_images

    _, y, files = load_images(images, contract, limit, labels)
    return files, y


def _folder_truth(images, contract, ref: np.ndarray, y) -> tuple:
    """(labels, notes): without label names, folder i is output i only when there is one folder per output (as
    export's): 41 ImageNet folders against a 1000-class model gave accuracy 0.000 for both, and passed."""
    from tledge.images import class_folders

    if y is None or contract.labels:
        return y, []
    n = len(class_folders(images))  # every folder is numbered, an empty one too (as export's folder_truth)
    if n == ref.shape[-1]:
        return y, []
    return None, [f"accuracy not measured: {n} class folders in {images} for {ref.shape[-1]} outputs and no labels "
                  "in the reference's contract to match them by name (pass --labels FILE)"]


# ---- one file ----------------------------------------------------------------------------------------

def _failed(name: str, kind: str, precision: str, n: int, message: str) -> ParityResult:
    return ParityResult(name, kind, precision, n, float("inf"), float("inf"), float("inf"), 0.0, None, None,
                        False, [message])


def check_file(path: Path, has_contract: bool, reference: np.ndarray, inputs: _Inputs, *, labels,
               thresholds: dict[str, Thresholds], normalisation: dict, size, threads=None,
               name: str | None = None, geometry: dict | None = None, raw_fed: list[Path] | None = None
               ) -> ParityResult:
    """Load `path`, feed it its own prepared inputs, compare with the reference outputs; the result is `name`d
    (default: the file's name). `normalisation`, `raw_fed`: tledge.export.check_load.load_file's."""
    kind = _SUFFIX_KIND.get(path.suffix.lower(), path.suffix)
    name = name or path.name
    try:
        model = load_file(path, has_contract, normalisation, size, threads, geometry, raw_fed)
        precision = exported_precision(path) or precision_of(model)
        x = inputs.for_contract(model.contract)
        out = np.concatenate([model.predict(x[i:i + 32]) for i in range(0, len(x), 32)])
        if out.ndim == 2 and out.shape[1] == 1 and reference.shape[-1] == 2:
            out = model.scores(out)  # one score made elsewhere, widened to [1 - p, p] as the reference and `tledge
            # run` do (its raw (N, 1) output was called "not an export" of its own Keras model)
        latency = one_image_ms(model.predict, x)
    except Exception as exc:  # a broken file is a parity failure, reported with the others
        return _failed(name, kind, "?", len(reference), f"could not run: {exc.__class__.__name__}: {exc}")
    t = Thresholds.lookup(thresholds, path.name, precision)
    r = compare(reference, out, file=name, format=kind, precision=precision, thresholds=t, labels=labels,
                independent=independent_scores(model.contract))
    r.latency_ms, r.size_bytes = latency, path.stat().st_size
    return r


def _labels_for(own, labels, labels_from):
    """(given, labels, labels_from) for a group: no labels where its file carries its own (they score it); a callable
    `labels` is read now, once (a group needs them)."""
    if own is not None and own.labels:
        return (), labels, labels_from
    if callable(labels):
        labels, labels_from = labels()
    return tuple(labels), labels, labels_from


def parity(reference: str | Path, exported: Sequence[str | Path], images: str | Path, *,
           thresholds: dict[str, Thresholds] | None = None, preprocess: str | None = None,
           unsafe: bool = False, limit: int = 1000, threads: int | None = None,
           signature: str | None = None, binary_output: str | None = None,
           labels: Sequence[str] | Callable[[], tuple[Sequence[str], str]] = (),
           labels_from: str = "--labels", mean=None, std=None) -> ParityReport:
    """Run each exported file and the reference on the same images, each prepared by its own contract;
    collect every failure. `preprocess` completes the contract of files without one (and of the
    reference when nothing else says how it normalises); `mean`/`std` (as tledge.runtime.load takes them), when
    given, complete those files' instead, and `preprocess` is then the reference's only. `signature`: a reference
    SavedModel's KEY[:OUTPUT], `binary_output`: what its one output is; each by default what the export recorded in
    its manifest. `labels` (from `labels_from`) name the reference's outputs for files without embedded labels; a
    callable giving (labels, labels_from) is called only when such a file is checked (the reference's own labels.txt,
    read and refused when nothing used it)."""
    from tledge.export import float32, loader

    files = exported_files(exported)
    contracts, unreadable = _contracts(files)
    known = [c for c in contracts if c is not None]
    labels = labels if callable(labels) else tuple(labels)  # (a numpy array has no truth value)
    normalisation = file_normalisation(preprocess, mean, std)
    refuse_unused(files, contracts, {**({"preprocess": preprocess} if preprocess else {}), **normalisation}, labels,
                  labels_from)
    groups = _reference_groups(reference, files, contracts, signature)
    results, loaded = [None] * len(files), {}  # (a ParityResult per file; a LoadedModel per signature)
    paths = truth = lm = None
    unmatched: list[str] = []
    raw_fed: list[Path] = []
    for (sig, *_), members in groups.items():
        if sig not in loaded:
            with float32.policy():  # a caller's mixed_float16 loaded a float32 reference as mixed
                loaded[sig] = loader.load_model(reference, unsafe=unsafe, signature=sig,
                                                binary_output=binary_output or _recorded(files, "binary_output"))
        lm = loaded[sig]
        own = next((contracts[i] for i in members if contracts[i] is not None), None)
        base = own or (known[0] if known else None)
        given, labels, labels_from = _labels_for(own, labels, labels_from)
        contract, add = _reference_contract(lm, base, preprocess, given, labels_from,
                                            mean_std_given=(mean, std) != (None, None))
        serve, _ = loader.trace(lm, contract, add)
        if paths is None:
            paths, truth = _images(images, contract.labels, contract, limit)
            inputs, truth_labels = _Inputs(paths), contract.labels
        y, said = (truth, []) if contract.labels == truth_labels else _relabelled(images, paths, contract.labels)
        ref = loader.run_reference(serve, inputs.for_contract(contract))
        y, more = _folder_truth(images, contract, ref, y)
        unmatched += said + more
        geometry = _geometry(contract)
        for i in members:
            results[i] = check_file(files[i], contracts[i] is not None, ref, inputs, labels=y,
                                    thresholds=thresholds or {}, normalisation=normalisation, size=contract.size,
                                    threads=threads, name=display_names(files)[i], geometry=geometry,
                                    raw_fed=raw_fed)
            _refuse_reordered_labels(results[i], contracts[i], lm)
    report = ParityReport(images=len(paths), results=results, reference=str(reference))
    report.notes += unmatched + _misnamed(results)
    report.notes += foreign_notes(files, display_names(files), contracts, unreadable, raw_fed, normalisation, contract)
    report.notes += loader.report_notes(lm)
    return report


def _contracts(files: list[Path]) -> tuple[list, set[Path]]:
    """(each file's embedded contract or None, the files whose metadata could not be read)."""
    from tledge.metadata import read_contract

    unreadable: set[Path] = set()

    def contract_of(f: Path):
        try:
            return read_contract(f)
        except Exception:  # noqa: BLE001 - a corrupt file is that file's failure (check_file reports it), not all
            unreadable.add(f)
            return None
    return [contract_of(f) for f in files], unreadable


def _geometry(contract) -> dict:
    """The reference's resize, as a file without a contract is run with it."""
    if contract.fit.value == "crop":
        return {"resize": contract.resize.value, "crop": contract.crop_fraction}
    return {"resize": contract.resize.value, "fit": contract.fit.value}


def _reference_groups(reference, files: list[Path], contracts: list, signature: str | None) -> dict[tuple, list[int]]:
    """One reference per export the files come from: its recorded signature and its contract's geometry (several
    export folders of one model at two sizes, or of two signatures, were all checked against the first one's)."""
    groups: dict[tuple, list[int]] = {}
    for i, (f, c) in enumerate(zip(files, contracts)):
        sig = signature or (_recorded([f], "signature") if Path(reference).is_dir() else None)
        key = (sig, _prep_key(c.replace(layout="nhwc")) if c is not None else None, c.labels if c is not None else ())
        groups.setdefault(key, []).append(i)  # (and its labels: each file's accuracy by its own labels)
    return groups or {(signature, None, ()): []}


def _relabelled(images, paths: list[Path], labels: tuple[str, ...]) -> tuple:
    """(the true output index of each of `paths` by `labels`, notes): files of one parity run with other labels were
    all scored by the first file's (a file with its labels reversed got the right file's accuracy, and passed)."""
    from tledge.images import labelled_images

    try:
        files, ys, _ = labelled_images(images, labels or None)
    except TledgeError as exc:
        return None, [f"accuracy not measured for the files labelled {', '.join(labels[:3])}...: {exc}"]
    if ys is None:
        return None, []
    index = dict(zip(files, ys.tolist()))
    return np.asarray([index[p] for p in paths], np.int64), []


def _refuse_reordered_labels(result, contract, lm) -> None:
    """A file naming the reference's own labels (its tledge.json) in another order names every answer wrongly, and its
    accuracy by those names matched the reference's run with them: a failure of that file."""
    from tledge.labels import reordered_at

    own = lm.contract.labels if lm.contract is not None else ()
    i = reordered_at(contract.labels, own) if contract is not None and own else None
    if i is not None and result is not None:
        result.failures.append(f"its labels are the reference's {len(own)} labels in another order (output {i}: "
                               f"{contract.labels[i]!r} here, {own[i]!r} in the reference's tledge.json)")
        result.passed = False


def _misnamed(results) -> list[str]:
    """A note for each file named for one precision (model_int8.tflite) whose tensors are another."""
    notes = []
    for r in results:
        named = r.file.rsplit("/", 1)[-1].rsplit(".", 1)[0].rsplit("_", 1)[-1]
        if named in PRECISIONS and r.precision not in (named, "?"):
            notes.append(f"{r.file}: named {named}, but its tensors are {r.precision}; checked as {r.precision}")
    return notes


def _recorded(files: Sequence[Path], key: str) -> str | None:
    """How the export of these files loaded the model (manifest source: `signature`, `binary_output`), if said."""
    from tledge import artifacts

    for folder in dict.fromkeys(Path(f).parent for f in files):
        try:
            manifest = artifacts.read(folder)
        except Exception:  # noqa: BLE001 - an unreadable manifest is the file checks' business, not the reference's
            continue
        found = manifest.source.get(key) if manifest is not None else None
        if isinstance(found, str) and found:
            return found
    return None
