"""Converting one rung of the int8 fidelity loop (tledge.export.fidelity), with what rungs share kept once.

Issue 11: the loop was most of an int8 export (245 of 265 s on MobileNet 0.25 at 224 px), and much of it
repeated. `Shared` keeps, for one export:
- the repaired Keras model per float stem (`repair.apply` runs once per stem, for TFLite and ONNX alike);
- the float ONNX graph of each repaired model (one tf2onnx conversion per stem);
- the quantised ONNX file of each (graph, calibration, float nodes) choice, so `repaired+bias` starts
  from the `repaired` rung's file instead of quantising again;
- onnxruntime's calibration ranges per pre-processed graph (`quantize_int8(calib_cache=...)`);
- the calibrated float TFLite model per stem (calibrate once, quantise many).
`runs` counts what was computed and `hits` what was reused (the tests check both).
"""
from __future__ import annotations

import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tledge.artifacts import filename_of
from tledge._deps import require
from tledge.contract import Contract
from tledge.errors import TledgeError


# TFLite graph techniques (tledge.quant.registry names the module): the contract key of each one's log line
TFLITE_GRAPH_KEY = {"tflite-bias": "tflite_bias_correction", "tflite-rounding": "tflite_rounding"}


@dataclass
class Shared:
    model: object  # the Keras 3 pixel model the repairs work on, or None
    contract: Contract
    calib: np.ndarray
    out: Path  # the export's staging folder (model_fp32.onnx, model_int8.onnx, .fidelity/)
    repaired: dict = field(default_factory=dict)  # stem -> repaired Keras model
    onnx_fp32: dict = field(default_factory=dict)  # stem -> float ONNX graph (bytes) of the repaired model
    qdq_files: dict = field(default_factory=dict)  # (stem, method, float nodes, scheme) -> (QDQ bytes, Scheme)
    tflite_calibrated: dict = field(default_factory=dict)  # stem -> calibrated float TFLite
    tflite_files: dict = field(default_factory=dict)  # (key, stem) -> int8 TFLite bytes (no contract yet)
    mixed: dict = field(default_factory=dict)  # sensitivity choices and float-weight models (tledge.export.mixed)
    originals: dict = field(default_factory=dict)  # path -> the plain int8 file's bytes (graph rungs start there)
    trace: object = None  # () -> (serve, concrete): the export's traced function (loader.trace), or None
    stop: object = None  # () -> why a running repair must stop (tledge.export.repair_budget.stopper), or None
    float_ops: tuple = ()  # op types every int8 TFLite file keeps float (tledge.export.tflite.CPU_FLOAT_OPS)
    runs: Counter = field(default_factory=Counter)
    hits: Counter = field(default_factory=Counter)

    @property
    def scratch(self) -> Path:
        path = self.out / ".fidelity"
        path.mkdir(exist_ok=True)
        return path

    def _get(self, table: dict, key, what: str, make):
        if key in table:
            self.hits[what] += 1
        else:
            self.runs[what] += 1
            table[key] = make()
        return table[key]

    # ---- Keras ------------------------------------------------------------------------------
    def repaired_model(self, stem: int, keep: tuple[str, ...] = (), ranges: str = "minmax"):
        """The weight repair with a float stem of `stem` convolutions and, beyond it, the layers around the chosen
        activations `keep` float (repair.apply), its activation grids' `ranges` (tledge.quant.ranges), cached per
        (stem, keep, ranges)."""
        from tledge.quant import repair

        def make():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return repair.apply(self.model, self.calib, stem=stem, keep=keep, errors=False,  # (no log read)
                                    stop=self.stop, ranges=ranges)[0]
        key = (stem, tuple(keep)) if keep else stem
        return self._get(self.repaired, key if ranges == "minmax" else (key, ranges), "repair", make)

    # ---- TFLite -----------------------------------------------------------------------------
    def tflite(self, model, stem: int, applied: dict, *, dynamic: bool = False, key=None, layers=(),
               ranges: str = "minmax") -> bytes:
        """int8 (or dynamic-range) TFLite of a repaired model with the file's contract embedded. `key`:
        the calibrated model is cached under it (None: calibrated for this call only). `layers`: chosen
        activations whose producers and consumers stay float (tledge.export.mixed). `ranges="mse"`: the recorded
        activation ranges cut as the repair assumed (tledge.quant.ranges)."""
        from tledge.export import mixed
        from tledge.quant import ranges as act
        from tledge.quant import selective

        try:
            if dynamic:  # the repaired kernels sit on the int8 grid, so dynamic-range keeps them exactly
                data = selective.tflite_fp32(model, optimize=True)
            else:
                def calibrate():
                    cal = selective.calibrate_tflite(model, self.calib)
                    return cal if ranges == "minmax" else act.tflite_ranges(cal, self.calib)[0]
                cal = calibrate() if key is None else self._get(self.tflite_calibrated, key, "tflite-calibration",
                                                                calibrate)
                keep = list(selective.tflite_stem(cal, stem)) if stem else []
                if layers:
                    more, applied["layers_left_int8"] = mixed.tflite_keep(cal, layers)
                    mixed.left_int8(applied, applied["layers_left_int8"])
                    keep += more
                def convert():
                    return selective.quantize_tflite(cal, keep_float=keep, float_ops=self.float_ops)
                data = convert() if key is None or layers else self._get(self.tflite_files, (key, stem),
                                                                         "tflite-quantize", convert)
        except Exception as exc:
            reason = str(exc).splitlines()[-1][:300]
            raise TledgeError(f"TFLite conversion of the rung's model failed: {reason}") from None
        return self.embed_tflite(data, applied)

    def has_tflite(self, stem: int, ranges: str = "minmax") -> bool:
        """Whether the int8 TFLite file of a repair rung (stem, ranges) is built (`tflite` with its key)."""
        return ((stem if ranges == "minmax" else (stem, ranges)), stem) in self.tflite_files

    def embed_tflite(self, data: bytes, applied: dict) -> bytes:
        from tledge.export.formats import tflite_io, with_float_ops
        from tledge.export.metadata import embed_tflite

        qin, qout, dtype = tflite_io(data)
        contract = with_float_ops(self.contract.for_file(input_dtype=dtype, input_quant=qin, output_quant=qout), data)
        return embed_tflite(data, contract.replace(extra={**contract.extra, **applied}))

    def original(self, path: Path) -> bytes:
        """The bytes `path` had when first asked for: the plain int8 file, before a rung replaced it."""
        if path not in self.originals:
            self.originals[path] = path.read_bytes()
        return self.originals[path]

    def tflite_graph(self, technique: str, int8: bytes, fp32: bytes, applied: dict) -> bytes:
        """The int8 TFLite file `int8` repaired in place by a graph technique against the float file `fp32`
        (its `tledge.quant.registry` module: tflite_bias / tflite_rounding), contract embedded again with the
        technique's log line."""
        import importlib

        from tledge.quant.registry import TECHNIQUES

        self.runs[technique] += 1
        try:
            module = importlib.import_module(f"tledge.quant.{TECHNIQUES[technique].module}")
            data, log = module.correct(int8, fp32, self.calib)
        except Exception as exc:  # a file this technique cannot read: the rung fails, the export goes on
            reason = str(exc).splitlines()[-1][:300] if str(exc) else repr(exc)
            raise TledgeError(f"{technique} failed: {reason}") from None
        if not log.layers:
            raise TledgeError(f"nothing to change: {log.summary()}")
        applied[TFLITE_GRAPH_KEY[technique]] = log.summary()
        return self.embed_tflite(data, applied)

    # ---- ONNX -------------------------------------------------------------------------------
    def onnx_float(self, model, stem: int | None, ranges: str = "minmax") -> bytes:
        """The float graph a rung quantises: the fp32 file's (stem None: no repair), else the repaired
        model's, converted once per stem. Float input in the export's layout. Without an fp32 file (a
        TFLite-only export) the traced function is converted once. Cached per (stem, `ranges`): the repair
        differs with its activation ranges."""
        from tledge.export import onnx as onnx_export

        if stem is None:
            fp32 = self.out / filename_of("onnx", "fp32")
            if fp32.is_file():
                return onnx_export.float_input(fp32.read_bytes())
            if self.trace is None:
                raise TledgeError("no fp32 ONNX graph to measure on (the export wrote none, and nothing traced)")
            return self._get(self.onnx_fp32, None, "onnx-float",  # a TFLite-only export: converted here
                             lambda: onnx_export.convert_fp32(self.trace()[0], self.contract).SerializeToString())

        def convert():
            return onnx_export.convert_fp32(serve(model, self.contract), self.contract).SerializeToString()
        return self._get(self.onnx_fp32, stem if ranges == "minmax" else (stem, ranges), "onnx-float", convert)

    def onnx_qdq(self, src: Path, dst: Path, *, key=None, method: str = "minmax", exclude=(), scheme=None,
                 overrides: dict | None = None, ranges: str = "minmax"):
        """quantize_int8 of `src` into `dst` with the shared calibration ranges (`ranges="mse"`: cut, see
        tledge.quant.ranges); with `key`, the file is kept and reused for the same key (never with `overrides`).
        Returns the Scheme."""
        from tledge.export import onnx as onnx_export

        calib = onnx_export.Conventions.of(self.contract).calib(self.calib)
        cache = self.scratch / "ranges"

        def quantize():
            used = onnx_export.quantize_int8(src, dst, calib, method=method, nodes_to_exclude=exclude,
                                             scheme=scheme, calib_cache=cache, overrides=overrides,
                                             act_ranges=ranges)
            return dst.read_bytes(), used
        if key is None or overrides:
            self.runs["onnx-quantize"] += 1
            return quantize()[1]
        data, used = self._get(self.qdq_files, (key, method, tuple(exclude), scheme, ranges), "onnx-quantize",
                               quantize)
        dst.write_bytes(data)
        return used

    def onnx(self, model, rung, applied: dict, overrides: dict | None = None) -> bytes:
        """The int8 ONNX file of one rung (rung: a fidelity.Rung), contract embedded. `overrides`:
        TensorQuantOverrides of the rung (int16 activations chosen by tledge.quant.sensitivity)."""
        from tledge.export import onnx as onnx_export
        from tledge.quant.selective import onnx_stem, with_activations

        onnx = require("onnx", extra="export")
        conv = onnx_export.Conventions.of(self.contract)
        stem = rung.stem if rung.repair and model is not None else None
        with tempfile.TemporaryDirectory(prefix="tledge-onnx-rung-") as tmp:
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            src.write_bytes(self.onnx_float(model, stem, rung.ranges))
            exclude, scheme = (), None
            if rung.stem:
                raw = src.read_bytes()
                exclude = with_activations(raw, onnx_stem(raw, rung.stem))
            if rung.graph == "onnx-bias":  # the weights (and scheme) of the file without the correction
                base = Path(tmp) / "base.onnx"
                plain = self.out / filename_of("onnx", "int8")
                if stem is None and plain.is_file():  # the plain file as the export wrote it: a better rung's file
                    base.write_bytes(self.original(plain))  # may have replaced it since (its node names are not the
                else:  # float graph's: nothing was corrected, and the row gave the plain file's figures as its own)
                    self.onnx_qdq(src, base, key=stem, exclude=exclude)
                scheme = onnx_export.scheme_of(base)
                applied["onnx_bias_correction"] = self.onnx_bias(src, scheme, base)
                key = None  # a corrected graph: not shared
            else:
                key = stem
            scheme = self.onnx_qdq(src, dst, key=key, method=rung.calibrate, exclude=exclude, scheme=scheme,
                                   overrides=overrides, ranges=rung.ranges)
            per_file = conv.file_contract(self.contract, onnx_quant=scheme.describe(), **applied)
            return onnx_export.finish(onnx.load(str(dst)), per_file, conv).SerializeToString()

    def onnx_translated(self, model, rung, applied: dict, key) -> bytes:
        """The int8 ONNX file of a rung translated from its int8 TFLite file (the same file the TFLite ladder builds
        under `key`; tledge.export.onnx_translate), in the export's ONNX conventions, contract embedded."""
        from tledge.export import onnx as onnx_export
        from tledge.export import onnx_translate

        conv = onnx_export.Conventions.of(self.contract)
        tfl = self.tflite(model, rung.stem, {}, key=key, ranges=rung.ranges)
        self.runs["onnx-translate"] += 1
        translated, scheme = onnx_translate.from_tflite(tfl, conv.layout, self.calib)
        per_file = conv.file_contract(self.contract, onnx_quant=scheme.describe(), **applied)
        return onnx_export.finish(translated, per_file, conv).SerializeToString()

    def onnx_bias(self, src: Path, scheme, qdq: Path) -> str:
        """Replace the float graph at `src` by its bias-corrected version (tledge.quant.onnx_bias)."""
        import functools

        from tledge.export import onnx as onnx_export
        from tledge.quant import onnx_bias

        calib = onnx_export.Conventions.of(self.contract).calib(self.calib)
        pre = onnx_export.preprocess(src, src.with_name("pre.onnx"))
        log = onnx_bias.correct(pre, src, calib, functools.partial(onnx_export.quantize_int8, scheme=scheme),
                                qdq=qdq)
        if not log.layers:  # the plain file again, measured as if it were a repair
            raise TledgeError(f"nothing to change: {log.summary()}")
        return log.summary()


def serve(model, contract: Contract):
    """A tf.function taking float32 pixels NHWC, for the converters."""
    tf = require("tensorflow", extra="export")
    spec = tf.TensorSpec([None, contract.height, contract.width, contract.channels], tf.float32, name="pixels")

    @tf.function(input_signature=[spec])
    def serve(pixels):
        return tf.cast(model(pixels, training=False), tf.float32)

    return serve
