"""EdgeModel: a loaded .tflite / .onnx file plus its contract. No TensorFlow.

`predict(batch)` takes what `contract.prepare` makes and returns float32 outputs (quantisation at
the boundary). `to_input(image)` is the runtime's fast way to the tensor the backend takes: when
preparation is per-channel elementwise after resizing (normalise, then quantise), it is one 256-entry
look-up table computed *with* `contract.prepare`'s own functions, so it is bit-identical to
`quantize(contract.prepare(image))` at a fraction of the cost.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, overload

import numpy as np

from tledge.artifacts import CONTRACT_FILE
from tledge.contract import DECISION, METADATA_KEY, Contract, Layout
from tledge.errors import ArgumentError, ContractError, ModelLoadError, ModelRunError, warnings_held
from tledge.runtime.backends import MAX_THREADS, open_backend
from tledge.runtime.scores import scores_of
from tledge.runtime.lookup import IDENTITY_TABLE, lookup_table  # noqa: F401 (re-exported)
from tledge.runtime.foreign import (STANDARD_ORIGIN, check_fits, check_integer_input,  # noqa: F401
                                    class_count, complete, infer_contract, infer_for_file, labels_option, read_standard)


CLASSIFY_BATCH = 32  # images per backend call in classify(): 1000 paths at once took 1.2-2.4 GB


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    score: float

    def to_dict(self) -> dict:
        return {"label": self.label, "index": self.index, "score": round(self.score, 6)}


@dataclass
class LoadInfo:
    contract_origin: str  # embedded / tledge.json / inferred / given
    load_ms: float
    notes: list[str] = field(default_factory=list)


class EdgeModel:
    def __init__(self, path: Path, backend, contract: Contract, origin: str = "given", load_ms: float = 0.0):
        self.path, self.backend, self.contract = Path(path), backend, contract
        self.load_info = LoadInfo(origin, load_ms, list(getattr(backend, "notes", [])))
        inp = backend.inp
        self._in_quant = inp.quant
        if inp.quant is not None and contract.baked and contract.input_dtype == inp.dtype and \
                inp.quant.scale == 1.0 and inp.quant.zero_point == 0:
            self._in_quant = None  # prepared raw pixels are the tensor's values already
        self._out_quant = backend.out.quant
        self._lut = lookup_table(contract, inp, self._in_quant)
        self._closed = False
        batch = inp.shape[0] if inp.shape else -1
        self.fixed_batch = int(batch) if isinstance(batch, int) and batch > 0 else None
        if self.fixed_batch and self.fixed_batch > 1:
            self.load_info.notes.append(f"the file takes batches of exactly {self.fixed_batch} images: "
                                        "smaller batches are padded, larger ones split")
        elif self.fixed_batch is None and getattr(backend, "format", "") == "onnx" and origin not in (
                "embedded", "tledge.json"):  # (1-5 ms of graph reading: a tledge export quantises statically)
            from tledge.runtime.onnxgraph import op_types

            if "DynamicQuantizeLinear" in op_types(self.path):  # its scale is the whole batch's: an image's label
                self.fixed_batch = 1  # depended on the images beside it (1 of 153 changed in batches of 32)
                self.load_info.notes.append("dynamic quantisation (DynamicQuantizeLinear): one image per call, as its "
                                            "scale comes from the whole batch")

    def close(self) -> None:
        """Release the interpreter or session (and the model file it holds); later calls raise ModelRunError."""
        self.backend.close()
        self._closed = True

    def __enter__(self) -> "EdgeModel":
        return self

    def __reduce__(self):
        """Pickled as what loaded it (multiprocessing, ProcessPoolExecutor): the other process loads the file again,
        with the same checks. Delegates (native objects) cannot cross processes."""
        how = getattr(self, "loaded_with", None)
        if how is None or how[1].get("delegates"):
            raise TypeError("this EdgeModel cannot be pickled (made with delegates, or not by tledge.runtime.load): "
                            "pass the path to the other process and load it there")
        return _reload, how

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def format(self) -> str:
        return self.backend.format

    @property
    def provider(self) -> str:
        return self.backend.provider

    # ---- inputs -----------------------------------------------------------------------------------
    def prepare(self, image: Any) -> np.ndarray:
        """The reference preprocessing (`contract.prepare`): what `predict` takes."""
        return self.contract.prepare(image)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Prepared values -> the input tensor's dtype (quantised when the tensor is)."""
        if self._in_quant is not None:
            return self._in_quant.quantize(x)
        # dtype objects: `>f4` has the name float32, and its bytes were read as little-endian (66 of 153 labels
        # changed); raw pixels into a uint8 tensor: 256.0 wrapped to 0 (black), 255.6 was truncated
        want = np.dtype(self.backend.inp.dtype)
        if x.dtype == want:
            return x
        if want.kind in "iu" and x.dtype.kind in "fiu":  # rounded and clipped, as quantising does
            info = np.iinfo(want)
            if x.dtype.kind == "f":
                if np.isnan(x).any():
                    raise ArgumentError("the input holds NaN values")
                x = np.rint(x)
            return np.clip(x, info.min, info.max).astype(want)
        return x.astype(want)

    def to_input(self, image: Any) -> np.ndarray:
        """One raw image (path or array) -> one backend-ready input; == quantize(prepare(image))."""
        if self._lut is None:
            return self.quantize(self.contract.prepare(image))
        from tledge import images

        c = self.contract
        rgb = images.as_rgb(image)
        x = c.colors(c.geometry(rgb))
        if self._lut is not IDENTITY_TABLE:
            import cv2

            x = cv2.LUT(x, self._lut).reshape(x.shape)
        if c.layout is Layout.NCHW:
            x = np.ascontiguousarray(x.transpose(2, 0, 1))
        return x

    def from_nhwc(self, batch: np.ndarray) -> np.ndarray:
        """Prepared NHWC images (an export's reference layout) -> this file's layout."""
        x = np.asarray(batch)
        if self.contract.layout is Layout.NCHW and x.ndim == 4:
            return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return x

    # ---- inference --------------------------------------------------------------------------------
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Prepared inputs (as `contract.prepare` makes them, with a batch axis) -> float32 outputs."""
        try:  # (numpy < 1.24 made a list of arrays of different shapes an object array, with a warning)
            shapes = {np.shape(b) for b in batch} if isinstance(batch, (list, tuple)) else set()
            if len(shapes) > 1:
                raise ValueError(f"got shapes {sorted(shapes)}")
            x = np.asarray(batch)
        except ValueError as exc:  # a list of arrays of different shapes
            raise ModelRunError(f"predict() takes prepared images of one shape: {exc}") from None
        if x.dtype.kind not in "biuf":
            raise ModelRunError(f"predict() takes prepared images as numbers (contract.prepare's output with a batch "
                                f"axis), got an array of {x.dtype} (images go through classify())")
        if x.dtype.kind == "f" and not np.isfinite(x).all():  # a float ONNX input quantised NaN to a number
            raise ArgumentError("the input holds NaN or infinite values")
        if x.ndim == 3:
            x = x[None]
        return self.run_inputs(self.quantize(x))

    def run_inputs(self, x: np.ndarray) -> np.ndarray:
        """Backend-ready inputs (from `to_input`, with a batch axis) -> float32 outputs."""
        if x.ndim == 3:
            x = x[None]
        want = self.backend.inp.shape
        if x.ndim != len(want) or any(0 < w != g for w, g in zip(want[1:], x.shape[1:])):
            raise ModelRunError(f"{self.path.name} takes inputs of shape {('N', *want[1:])}, got {x.shape} (images "
                                "go through classify() or to_input(); predict() takes contract.prepare's output)")
        if len(x) == 0:  # no images: no outputs (the runtimes refuse an empty batch)
            return np.zeros((0, *(d if d > 0 else 1 for d in self.backend.out.shape[1:])), np.float32)
        b = self.fixed_batch
        if b is not None and 0 < len(x) != b:  # a fixed-batch file: pad the last chunk, drop its outputs
            n = len(x)
            if n % b:
                x = np.concatenate([x, np.zeros((b - n % b,) + x.shape[1:], x.dtype)])
            return np.concatenate([self.run_inputs(x[i:i + b]) for i in range(0, len(x), b)])[:n]
        y = self.backend.run(x if x.flags.c_contiguous else np.ascontiguousarray(x))
        if self._out_quant is not None:
            return self._out_quant.dequantize(y)
        return y if y.dtype == np.float32 else y.astype(np.float32)

    @overload
    def classify(self, images: str | os.PathLike | bytes, top_k: int | None = None,
                 batch: int = CLASSIFY_BATCH) -> list[Prediction]: ...
    @overload
    def classify(self, images: list | tuple, top_k: int | None = None,
                 batch: int = CLASSIFY_BATCH) -> list[list[Prediction]]: ...
    @overload
    def classify(self, images: Any, top_k: int | None = None,
                 batch: int = CLASSIFY_BATCH) -> list[Prediction] | list[list[Prediction]]: ...

    def classify(self, images: Any, top_k: int | None = None, batch: int = CLASSIFY_BATCH):
        """Raw images -> top-k predictions per image (`top`: top_k None is 1, or every label given for a multi-label
        file). `images` is a sequence of images (paths, encoded bytes, PIL images, RGB arrays) and gives a list per
        image; one image gives its own list. Run `batch` at a time, so a long list does not become one huge tensor."""
        from tledge import images as im

        for name, v in (("top_k", top_k), ("batch", batch)):  # batch=0 or 1.5 was taken, None a TypeError
            if name == "top_k" and v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ArgumentError(f"{name} must be an integer >= 1, got {v!r}")
        if im.one_image(images):  # (nested lists: one array, a grey HxW one too)
            return self.classify([np.asarray(images) if isinstance(images, (list, tuple)) else images], top_k,
                                 batch)[0]
        from itertools import islice

        it, out, step = iter(images), [], int(batch)  # run_inputs pads the last chunk of a fixed-batch file
        # read `batch` at a time: list(images) read a whole generator of frames before the first ran (+166 MB)
        while chunk := [self.to_input(x) for x in islice(it, step)]:
            out += [self.top(row, top_k) for row in self.scores(self.run_inputs(np.stack(chunk)))]
        return out

    @property
    def score_threshold(self) -> float | None:
        """The default score threshold of a file made elsewhere (its standard metadata's ScoreThresholdingOptions,
        which MediaPipe and the Task Library apply), else None. `classify` and `top` do not apply it."""
        t = self.contract.extra.get("score_threshold") if self.load_info.contract_origin == STANDARD_ORIGIN else None
        return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None

    def scores(self, outputs: np.ndarray) -> np.ndarray:
        """Model outputs -> per-class scores, one row per input (softmax when the model gives logits). A
        one-score model (a sigmoid, or its logit) gives `[1 - p, p]`: p is the probability of the second
        label, as Keras' binary classifiers and tledge's exported files have it (tledge.runtime.scores)."""
        return scores_of(outputs, self.contract, self.load_info.contract_origin, self.path.name)

    def top(self, scores: np.ndarray, k: int | None = None) -> list[Prediction]:
        """The k best labels; k None: 1, or for a multi-label file (independent scores) every label over DECISION, as
        its clients decide (the argmax printed `always 0.996` for every photo and never the labels that differ)."""
        s = np.asarray(scores).reshape(-1)
        if k is None and self.contract.independent:
            idx = [i for i in np.argsort(-s, kind="stable") if s[i] > DECISION]
            return [Prediction(int(i), self.contract.label(int(i)), float(s[i])) for i in idx]
        k = max(1, min(int(k or 1), s.size))
        idx = np.argsort(-s, kind="stable")[:k]  # equal scores: the lower index first, as argmax (and parity)
        return [Prediction(int(i), self.contract.label(int(i)), float(s[i])) for i in idx]

    # ---- description ------------------------------------------------------------------------------
    def info(self) -> dict:
        if self._closed:  # as every other call (the ONNX session's metadata raised, a TFLite file's did not)
            raise ModelRunError(f"{self.path.name} is closed")
        b = self.backend
        from tledge.runtime.onnxgraph import size_with_data

        d = {"path": str(self.path), "format": self.format, "size_bytes": size_with_data(self.path),
             "backend": {"tflite": "tflite", "onnx": "onnxruntime"}[self.format], "provider": b.provider,
             "threads": b.threads, "load_ms": round(self.load_info.load_ms, 2),
             "contract_origin": self.load_info.contract_origin, "contract": self.contract.to_dict(),
             "labels": len(self.contract.labels), "inputs": [t.to_dict() for t in b.inputs],
             "outputs": [t.to_dict() for t in b.outputs], "notes": self.load_info.notes,
             "fast_input_path": self._lut is not None}
        if hasattr(b, "describe"):
            d.update(b.describe())
        return d

    def __repr__(self) -> str:
        c = self.contract
        return f"EdgeModel({self.path.name}, {self.format}/{self.provider}, {c.height}x{c.width})"


# ---- loading ---------------------------------------------------------------------------------------

def _read_contract(path: Path, backend) -> tuple[Contract | None, str]:
    try:
        raw = backend.metadata().get(METADATA_KEY)
    except ContractError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot read the metadata of {path}: {exc}") from None
    if raw:
        try:
            return Contract.from_json(raw), "embedded"
        except ContractError as exc:
            raise ContractError(f"the contract embedded in {path.name}: {exc}") from None
    from tledge.metadata import sidecar_contract

    beside = sidecar_contract(path)
    return (beside, "tledge.json") if beside is not None else (None, "inferred")


def load(path: str | Path, *, threads: int | None = None, contract: Contract | None = None,
         providers: Sequence | None = None, delegates: Sequence = (), device: str | None = None,
         **contract_options: Any) -> EdgeModel:
    """Open a .tflite / .onnx file with its embedded contract (or an inferred one), or the best file
    of an export folder that its manifest.json vouches for. A file listed in the manifest beside it
    must still match its sha256 (ModelLoadError otherwise).

    contract_options (for files made elsewhere): labels (names or a labels file), preprocess (mode or
    backbone), mean, std, layout, resize, crop, fit, color, input_size (h, w), logits.
    `device` asks tledge.devices for threads / providers / delegates; explicit arguments win.
    """
    from tledge.trust import check_file

    delegates = () if delegates is None else delegates  # as providers=None: none given
    _check_arguments(path, threads, providers, delegates, contract, contract_options.get("labels"))
    p = Path(path)
    # an export folder: the best file its manifest vouches for; a file: refused if changed since export
    if p.is_dir():
        from tledge.runtime.folder import model_in_folder

        p, trust = model_in_folder(p, device, providers=providers, delegates=delegates)
    else:
        trust = check_file(p) if p.is_file() else []
    if not p.is_file():
        raise ModelLoadError(f"model file not found: {p}" if not p.is_dir() else
                             f"{p} is a folder: pass a .tflite or .onnx file")
    if device:
        from tledge.runtime.device import with_device

        p, trust, threads, providers, delegates = with_device(device, p, trust, threads, providers, delegates)
    if "labels" in contract_options:
        contract_options["labels"] = labels_option(contract_options["labels"])
    how = (str(Path(path).absolute()),  # unpickled after a chdir: "model file not found: tiny/model_int8.tflite"
           dict(threads=threads, contract=contract, providers=providers, delegates=tuple(delegates), device=device,
                **contract_options))
    start = time.perf_counter()
    backend = open_backend(p, threads=threads, providers=providers, delegates=delegates)
    trust = trust + _io_counts(p, backend)
    with warnings_held():  # ("feeding raw 0..255 pixels" before an error made it two lines)
        contract, origin, said = _resolve_contract(p, backend, contract, contract_options)
    trust = trust + said
    model = EdgeModel(p, backend, contract, origin, 1000 * (time.perf_counter() - start))
    model.load_info.notes[:0] = trust
    model.loaded_with = how
    return model


def _check_arguments(path, threads, providers, delegates, contract, labels) -> None:
    """load()'s arguments, before anything is opened: ModelLoadError / ArgumentError in one line."""
    if not isinstance(path, (str, os.PathLike)):
        raise ModelLoadError(f"load() takes the path of a .tflite / .onnx file or an export folder, got "
                             f"{type(path).__name__}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or
                                not 1 <= threads <= MAX_THREADS):
        raise ArgumentError(f"threads must be an integer in [1, {MAX_THREADS}] (None: TLEDGE_THREADS or the cores), "
                            f"got {threads!r}")
    if isinstance(delegates, (str, bytes)) or isinstance(providers, (str, bytes)):
        raise ArgumentError("delegates and providers take a list (of library or provider names), not one string")
    if contract is not None and not isinstance(contract, Contract):
        raise ArgumentError(f"contract takes a tledge.Contract (Contract.load('tledge.json')), got "
                            f"{type(contract).__name__}: use preprocess=, labels=... for files made elsewhere")
    if labels is not None and not isinstance(labels, (str, os.PathLike, list, tuple)):
        raise ArgumentError(f"labels takes a labels file or a list of names, got {type(labels).__name__}")


def _resolve_contract(p: Path, backend, contract: Contract | None, options: dict) -> tuple[Contract, str, list[str]]:
    """The contract a file runs with, where it came from (given, embedded, tledge.json, inferred, standard metadata)
    and what to say of it; checked against the file's tensors, an error naming the contract at fault."""
    said: list[str] = []
    origin = "given"
    if contract is None:
        contract, origin = _read_contract(p, backend)
    if contract is None:
        standard = read_standard(p)  # files made elsewhere: labels and normalisation from standard metadata
        contract = infer_for_file(p, backend, standard, options)
        origin = STANDARD_ORIGIN if standard is not None else origin
        if "score_threshold" in contract.extra:
            said.append(f"scores under {contract.extra['score_threshold']:g} are not reported, as MediaPipe and the "
                        "Task Library do (the file's ScoreThresholdingOptions; --threshold 0 shows them)")
    else:
        own = contract.labels
        contract = complete(contract, options, embedded=origin != "given")
        if origin != "given" and own and contract.labels != own:  # allowed (a translation), but said; the same
            from tledge.labels import refuse_reordered  # names in another order named every answer wrongly, exit 0

            where = f"the contract embedded in {p.name}" if origin == "embedded" else str(p.parent / CONTRACT_FILE)
            refuse_reordered(contract.labels, None, own, where)
            said.append(f"labels given replace the file's own ({', '.join(own[:3])}{', ...' if len(own) > 3 else ''})")
    try:
        check_fits(contract, backend.inp, class_count(backend.out))
        if origin not in ("inferred", STANDARD_ORIGIN):  # (inferred ones are checked as they are made)
            check_integer_input(contract, backend.inp)  # an edited baked=false / int8 contract gave class 0 for all
    except ContractError as exc:  # which contract is wrong: the file's own, its tledge.json, or options
        where = {"embedded": f"the contract embedded in {p.name}", "tledge.json": str(p.parent / CONTRACT_FILE)}
        mine = origin in where and not any(v is not None and v is not False and v != () for v in options.values())
        raise ContractError(f"{where[origin]}: {exc}" if mine else str(exc)) from None
    return contract, origin, said


def _io_counts(path: Path, backend) -> list[str]:
    """tledge feeds one image input and reads the first output. A second input was left at zeros (every score 0.0,
    exit 0) or failed on every image: refused. Other outputs are said."""
    ins = [getattr(t, "name", "?") for t in backend.inputs]
    if len(ins) > 1:
        raise ModelLoadError(f"{path.name} has {len(ins)} inputs ({', '.join(ins[:4])}): tledge feeds one image input")
    outs = [getattr(t, "name", "?") for t in backend.outputs]
    return [f"{path.name} has {len(outs)} outputs: tledge reads the first ({outs[0]})"] if len(outs) > 1 else []


def _reload(path: str, kwargs: dict) -> EdgeModel:
    return load(path, **kwargs)
