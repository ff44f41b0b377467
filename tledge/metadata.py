"""Reading the contract embedded in exported files, without TensorFlow.

TFLite: a `Model.metadata` entry named `tledge_contract` whose buffer holds the contract JSON
(read with the flatbuffer schema that ai-edge-litert ships). ONNX: `metadata_props` key
`tledge_contract`. Writing lives in tledge.export.metadata.
"""
from __future__ import annotations

from pathlib import Path

from tledge.contract import METADATA_KEY, Contract
from tledge.errors import ModelLoadError


def _tflite_schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        try:
            from tensorflow.lite.python import schema_py_generated as schema  # noqa: F401
        except ImportError:
            from tledge._deps import require

            require("ai_edge_litert", purpose="reading TFLite metadata")
            raise
    return schema


def tflite_metadata(data: bytes) -> dict[str, bytes]:
    """All metadata entries of a TFLite flatbuffer: name -> raw bytes."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelLoadError("not a TFLite flatbuffer (missing the TFL3 identifier)")
    schema = _tflite_schema()
    model = schema.Model.GetRootAs(data, 0)
    out = {}
    for i in range(model.MetadataLength()):
        md = model.Metadata(i)
        name = md.Name().decode("utf-8", "replace") if md.Name() else ""
        buf = model.Buffers(md.Buffer())
        if buf.DataLength():
            out[name] = buf.DataAsNumpy().tobytes()
        elif buf.Offset() > 1:  # large models keep buffers after the flatbuffer
            out[name] = data[buf.Offset(): buf.Offset() + buf.Size()]
        else:
            out[name] = b""
    return out


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
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
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
