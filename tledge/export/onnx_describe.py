"""What an ONNX file says about itself: producer, graph name and doc strings stating its input, and only the
opset domains its nodes use."""
from __future__ import annotations

from tledge.export.metadata import scores_text
from tledge.export.names import INPUT_NAME, OUTPUT_NAME


def describe(model, contract) -> None:
    """producer, graph name and doc_string (model, graph, input) saying what the input is, in place."""
    import tledge

    layout = contract.layout.value.upper()
    shape = "x".join(["batch"] + [str(d) for d in contract.input_shape])
    order = contract.color.value.upper()
    pixels = "raw pixel values 0..255" if contract.baked else f"pixels normalised `{contract.norm.value}`"
    norm = f"; normalisation `{contract.norm.value}` is inside the model" if contract.baked else ""
    fit = contract.fit.value + (f" (crop fraction {contract.crop_fraction:g})" if contract.fit.value == "crop" else "")
    how = "MediaPipe's: bilinear on a pixel-corner grid, tledge.resize.warp_linear" \
        if contract.resize.value == "warp-linear" else f"cv2 INTER_{contract.resize.value.upper()}"
    text = (f"Input `{INPUT_NAME}`: {contract.input_dtype} {layout} [{shape}], {order}, {pixels}{norm}. "
            f"Resize: {contract.resize.value} ({how}), fit {fit}. "
            f"Output `{OUTPUT_NAME}`: {scores_text(contract)}, {len(contract.labels) or 'N'} classes. "
            "The full preprocessing contract is metadata_props['tledge_contract'], also written as "
            "tledge.json beside this file for runtimes that cannot read metadata_props (onnxruntime-web).")
    model.producer_name, model.producer_version = "tledge", tledge.__version__
    model.doc_string = model.graph.doc_string = text
    model.graph.name = (f"tledge_classifier_{contract.input_dtype}_{contract.layout.value}_"
                        f"{contract.height}x{contract.width}x{contract.channels}_{contract.color.value}")
    model.graph.input[0].doc_string = f"{contract.input_dtype} {layout} {order}, {pixels}"


def prune_opsets(model) -> None:
    """Drop opset imports of domains no node uses (tf2onnx adds ai.onnx.ml), in place. The default
    domain stays."""
    used = {n.domain or "" for n in _all_nodes(model.graph)}
    used |= {n.domain or "" for f in model.functions for n in f.node} | {f.domain for f in model.functions}
    keep = [o for o in model.opset_import if (o.domain or "") in used or (o.domain or "") in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def _all_nodes(graph):
    """Nodes of a graph and of its subgraphs (If / Loop / Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_nodes(sub)
