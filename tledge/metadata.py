"""Reading the contract embedded in exported files, without TensorFlow.

TFLite: a `Model.metadata` entry named `tledge_contract` whose buffer holds the contract JSON, and the
standard TFLite metadata (`TFLITE_METADATA`, tledge.std_metadata) that files made elsewhere may carry;
both read by tledge.flatbuf with no dependency. ONNX: `metadata_props` key `tledge_contract`.
Writing lives in tledge.export.metadata.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tledge.artifacts import CONTRACT_FILE
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
    import dataclasses

    md = parse(raw)
    return dataclasses.replace(md, packed=packed_files(data, md.file_names())) if md.file_names() else md


def read_tflite_contract(path_or_bytes) -> Contract | None:
    data = path_or_bytes if isinstance(path_or_bytes, (bytes, bytearray)) else Path(path_or_bytes).read_bytes()
    raw = tflite_metadata(bytes(data)).get(METADATA_KEY)
    return Contract.from_json(raw) if raw else None


def read_onnx_contract(path) -> Contract | None:
    """From an ONNX file's metadata_props, read from its protobuf (no onnxruntime session: a file it cannot load
    still says what it is)."""
    from tledge.runtime.onnxgraph import metadata_props

    raw = metadata_props(path).get(METADATA_KEY)
    return Contract.from_json(raw) if raw else None


def read_contract(path) -> Contract | None:
    """The contract embedded in a .tflite or .onnx file, else the tledge.json beside it (`sidecar_contract`),
    else None."""
    p = Path(path)
    c = None
    if p.suffix == ".tflite":
        c = read_tflite_contract(p)
    elif p.suffix == ".onnx":
        c = read_onnx_contract(p)
    return c if c is not None else sidecar_contract(p)


def sidecar_contract(path) -> Contract | None:
    """The tledge.json beside `path` as that file takes it, when `path` is one of that export's files: listed in its
    manifest (a folder with no manifest: yes, as before manifests). A file made elsewhere copied into an export
    folder took the export's contract (raw pixels into a model wanting -1..1; `tledge info` without an
    interpreter showed the export's size and labels for it). The ONNX files take their own layout and input dtype
    (extra["onnx"], from `tledge export --layout / --onnx-input`); TFLite files stay NHWC."""
    from tledge import artifacts
    from tledge.contract import Layout
    from tledge.errors import ContractError, TledgeError

    p = Path(path)
    beside = p.parent / CONTRACT_FILE
    if not beside.is_file():
        return None
    try:
        m = artifacts.read(p.parent)
    except TledgeError:
        return None
    if m is not None and m.entry(p.name) is None:
        return None
    contract = Contract.load(beside)
    conv = (contract.extra or {}).get("onnx") if p.suffix.lower() == ".onnx" else None
    if not isinstance(conv, dict):
        return contract
    try:
        return contract.replace(layout=Layout(str(conv.get("layout", contract.layout.value))),
                                input_dtype=str(conv.get("input_dtype", contract.input_dtype)))
    except ValueError:
        raise ContractError(f"tledge.json: extra.onnx {conv!r} is not a known layout / input dtype") from None
