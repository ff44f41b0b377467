"""Embedding the contract in exported files by each format's own mechanism.

TFLite: a `Model.metadata` entry `tledge_contract` pointing at a buffer with the contract JSON,
plus `labels` (one per line) for tools that look for a label list. ONNX: `metadata_props`.
"""
from __future__ import annotations

from tledge.contract import METADATA_KEY, Contract


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def embed_tflite(data: bytes, contract: Contract) -> bytes:
    """A TFLite flatbuffer with the contract (and labels) added as metadata entries."""
    import flatbuffers

    schema = _schema()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(bytes(data), 0))
    entries = {METADATA_KEY: contract.to_json(indent=None).encode("utf-8")}
    if contract.labels:
        entries["labels"] = ("\n".join(contract.labels) + "\n").encode("utf-8")
    model.metadata = [m for m in (model.metadata or []) if (m.name or b"").decode() not in entries]
    for name, payload in entries.items():
        buf = schema.BufferT()
        buf.data = list(payload)
        model.buffers.append(buf)
        md = schema.MetadataT()
        md.name = name
        md.buffer = len(model.buffers) - 1
        model.metadata.append(md)
    builder = flatbuffers.Builder(len(data) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def embed_onnx(model, contract: Contract):
    """Set `metadata_props[tledge_contract]` (and `labels`) on an onnx.ModelProto, in place."""
    props = {METADATA_KEY: contract.to_json(indent=None)}
    if contract.labels:
        props["labels"] = "\n".join(contract.labels)
    keep = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    return model
