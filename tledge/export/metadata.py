"""Embedding the contract in exported files by each format's own mechanism.

TFLite: a `Model.metadata` entry `tledge_contract` pointing at a buffer with the contract JSON, plus
`labels` (one per line), plus the standard TFLite metadata that MediaPipe Tasks, the TFLite Task Library
and Android Studio read (entry `TFLITE_METADATA`, an M001 flatbuffer built by tledge.std_metadata with
the `flatbuffers` package, and `labels.txt` packed as a zip after the flatbuffer). The model itself is
rewritten with the TFLite schema's object API (ai-edge-litert's, else TensorFlow's), which also applies
tledge's TFLite conventions (tledge.export.tflite.apply_conventions). ONNX: `metadata_props`.
"""
from __future__ import annotations

from tledge.version import __version__
from tledge._deps import tflite_schema
from tledge.artifacts import LABELS_FILE  # the packed labels file has the export folder's name for it
from tledge.contract import INDEPENDENT, METADATA_KEY, ColorOrder, Contract, Norm, Output
from tledge.std_metadata import (CONTENT_FEATURE, CONTENT_IMAGE, ENTRY_NAME, AssociatedFile, StandardMetadata,
                                 TensorMd, build, pack_files)


def embed_tflite(data: bytes, contract: Contract) -> bytes:
    """A TFLite flatbuffer with tledge's conventions, the contract (and labels) and the standard metadata
    added as metadata entries, and the labels file packed after it."""
    import flatbuffers

    from tledge.export.tflite import apply_conventions

    schema = tflite_schema()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(bytes(data), 0))
    apply_conventions(model, schema)
    entries = {METADATA_KEY: contract.to_json(indent=None).encode("utf-8"),
               ENTRY_NAME: build(standard_metadata(contract))}
    if contract.labels:
        entries["labels"] = ("\n".join(contract.labels) + "\n").encode("utf-8")
    existing = {_name(m.name): m for m in (model.metadata or [])}
    model.metadata = [m for m in (model.metadata or []) if _name(m.name) not in entries]
    for name, payload in entries.items():
        buf = schema.BufferT()
        buf.data = list(payload)
        md = schema.MetadataT()
        md.name = name
        if name in existing:  # embedding again: reuse the entry's buffer, leave no orphan behind
            md.buffer = existing[name].buffer
            model.buffers[md.buffer] = buf
        else:
            model.buffers.append(buf)
            md.buffer = len(model.buffers) - 1
        model.metadata.append(md)
    builder = flatbuffers.Builder(len(data) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out = bytes(builder.Output())
    if contract.labels:
        out = pack_files(out, {LABELS_FILE: ("\n".join(contract.labels) + "\n").encode("utf-8")})
    return out


def _name(raw) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else (raw or "")


def standard_metadata(contract: Contract) -> StandardMetadata:
    """The standard TFLite metadata describing a tledge file with this (per-file) contract."""
    c = contract
    n = len(c.labels)
    what = f"{n} classes: {', '.join(c.labels[:10])}{', ...' if n > 10 else ''}" if n else "classes unnamed"
    color = "gray" if c.color is ColorOrder.GRAY else "rgb"
    description = (f"Image classifier ({what}). Input: a {c.width}x{c.height} {color.upper()} image; tledge resizes "
                   f"with {c.resize.value} interpolation ({c.fit.value}). The full preprocessing contract is the "
                   f"'{METADATA_KEY}' metadata entry.")
    return StandardMetadata(name=f"tledge image classifier {c.width}x{c.height}", description=description,
                            version=f"tledge {__version__}, contract v{c.version}", author="tledge",
                            inputs=(_input(c),), outputs=(_output(c),))


def _input(c: Contract) -> TensorMd:
    quantized = c.input_dtype in ("uint8", "int8")
    if c.baked:  # the graph normalises: raw pixels in, (x - 0) / 1
        mean, std = (0.0,) * c.channels, (1.0,) * c.channels
    elif c.color is ColorOrder.BGR or (c.norm is Norm.CAFFE and c.channels == 3):
        # the standard metadata has no BGR colour space: describe the tensor but give no image recipe
        return TensorMd(name="pixels", description="BGR image; see the tledge_contract entry", content=CONTENT_FEATURE)
    else:
        m, s = c.mean_std()
        mean, std = tuple(float(v) for v in m), tuple(float(v) for v in s)
    if quantized:
        lo, hi = ((0.0,), (255.0,)) if c.input_dtype == "uint8" else ((-128.0,), (127.0,))
    else:
        lo = tuple((0.0 - m) / s for m, s in zip(mean, std))
        hi = tuple((255.0 - m) / s for m, s in zip(mean, std))
    return TensorMd(name="pixels", description=f"Input image, {c.width}x{c.height}, {c.input_dtype}.",
                    content=CONTENT_IMAGE, color_space="gray" if c.channels == 1 else "rgb",
                    mean=mean, std=std, stats_min=lo, stats_max=hi)


def scores_text(c: Contract) -> str:
    """What the output is, in words (the TFLite metadata's and the ONNX description's)."""
    if c.extra.get("scores") == INDEPENDENT:
        return "independent class probabilities (a sigmoid each, multi-label: they need not sum to 1)"
    return "class probabilities" if c.output is Output.PROBABILITIES else "class logits"


def _output(c: Contract) -> TensorMd:
    probabilities = c.output is Output.PROBABILITIES
    if c.output_quant is not None and c.output_quant.dtype == "uint8":
        lo, hi = (0.0,), (255.0,)
    elif probabilities:
        lo, hi = (0.0,), (1.0,)
    else:
        lo = hi = None
    files = (AssociatedFile(LABELS_FILE, description="Class names, one per output index."),) if c.labels else ()
    return TensorMd(name="scores", description=scores_text(c).capitalize() + ".",
                    content=CONTENT_FEATURE, stats_min=lo, stats_max=hi, files=files)


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
