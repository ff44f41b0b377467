"""Reading the contract embedded in exported files, without TensorFlow.

TFLite: a `Model.metadata` entry named `tledge_contract` whose buffer holds the contract JSON, and the
standard TFLite metadata (`TFLITE_METADATA`, tledge.std_metadata) that files made elsewhere may carry;
both read by tledge.flatbuf with no dependency. ONNX: `metadata_props` key `tledge_contract`.
Writing lives in tledge.export.metadata.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tledge.contract import METADATA_KEY, Contract
from tledge.flatbuf import tflite_metadata_entries

if TYPE_CHECKING:  # the standard metadata is parsed only for files made elsewhere (cold start of tledge run)
    from tledge.std_metadata import StandardMetadata


def tflite_metadata(data: bytes) -> dict[str, bytes]:
    """All metadata entries of a TFLite flatbuffer: name -> raw bytes (read with tledge.flatbuf: no
    TFLite runtime, TensorFlow or flatbuffers package needed)."""
    return dict(tflite_metadata_entries(bytes(data)))


def read_standard_metadata(path_or_bytes) -> StandardMetadata | None:
    """The standard TFLite metadata (TFLITE_METADATA entry + packed associated files) of a .tflite file,
    or None when it has none (or the path is not a .tflite file)."""
    from tledge.std_metadata import ENTRY_NAME, packed_files, parse

    if isinstance(path_or_bytes, (bytes, bytearray)):
        data = bytes(path_or_bytes)
    else:
        p = Path(path_or_bytes)
        if p.suffix.lower() != ".tflite":
            return None
        data = p.read_bytes()
    raw = tflite_metadata(data).get(ENTRY_NAME)
    if not raw:
        return None
    return parse(raw, packed_files(data))


def read_tflite_contract(path_or_bytes) -> Contract | None:
    data = path_or_bytes if isinstance(path_or_bytes, (bytes, bytearray)) else Path(path_or_bytes).read_bytes()
    raw = tflite_metadata(bytes(data)).get(METADATA_KEY)
    return Contract.from_json(raw) if raw else None


def read_onnx_contract(path) -> Contract | None:
    """From an ONNX file's metadata_props (with onnxruntime, or onnx when that is what is installed)."""
    try:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        from tledge.paths import loadable

        sess = ort.InferenceSession(loadable(path), opts, providers=["CPUExecutionProvider"])
        raw = sess.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    except ImportError:
        from tledge._deps import require

        onnx = require("onnx", extra="runtime", purpose="reading ONNX metadata")
        model = onnx.load(str(path), load_external_data=False)
        raw = {p.key: p.value for p in model.metadata_props}.get(METADATA_KEY)
    return Contract.from_json(raw) if raw else None


def read_contract(path) -> Contract | None:
    """The contract embedded in a .tflite or .onnx file, else the tledge.json beside it, else None."""
    p = Path(path)
    c = None
    if p.suffix == ".tflite":
        c = read_tflite_contract(p)
    elif p.suffix == ".onnx":
        c = read_onnx_contract(p)
    if c is None and (p.parent / "tledge.json").is_file():
        c = Contract.load(p.parent / "tledge.json")
    return c
