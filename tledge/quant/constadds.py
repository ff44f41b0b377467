"""Adds with a constant operand stay float in int8 ONNX files (kernel robustness).

onnxruntime fuses DequantizeLinear -> Add -> QuantizeLinear into QLinearAdd. When one operand is a
constant (MobileNetV3's hard-swish / hard-sigmoid `x + 3`, a baked preprocessing offset, a bias left
beside a Conv or MatMul), the fused kernel's result departs from the arithmetic the QDQ file states:
on a MobileNetV3-Small 2-class model (x86, AVX-512 VNNI) the default session and the unfused graph
(ORT_DISABLE_ALL) disagreed by up to 0.77 in the softmax and on 5 of 153 labels, and the default
session on ARM disagreed with x86 on 2 of 153 labels (docs/onnx-files.md, "int8: the file computes what
it states"; with this rule and tledge.quant.pixelgrid the files are bit-exact ARM vs x86).
With those Adds kept float (DequantizeLinear -> Add -> QuantizeLinear is then not fused), the default
session computes what the unfused graph does (max difference 1.4e-4 on those 153 photos), so onnxruntime
on every CPU, its other graph optimisation levels and a client that runs the QDQ graph as written agree.
Adds of two activations (residual connections) and every Mul are left quantised: measured, they agree
with the unfused graph.

Constants dequantised for OpenCV: `float_gemm_biases` writes an int8-weight Gemm's int32 bias (a DequantizeLinear of
initializers) as a float constant of the same values after every quantisation (tledge.export.onnx), and
`fold_dequantized` is the same fold for the TFLite translations' Gemm biases and elementwise constants
(tledge.export.onnx_translate).
"""
from __future__ import annotations


def tensor_consumers(graph) -> dict[str, list]:
    """{tensor name: the nodes of an onnx GraphProto that take it as an input, in graph order} (the ONNX graph
    rewrites of tledge.export and tledge.quant share it)."""
    consumers: dict[str, list] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    return consumers


def constants(model) -> set[str]:
    """Tensor names of an onnx ModelProto that hold constants: initializers, Constant outputs, and the outputs
    of any node whose inputs are all constants (a Cast, Identity, Reshape or Unsqueeze of a constant: what a
    constant-folding pass would fold), so an Add fed a constant through such a chain counts as a constant Add.
    One pass: ONNX requires a graph's nodes in topological order."""
    consts = {i.name for i in model.graph.initializer}
    for n in model.graph.node:
        inputs = [i for i in n.input if i]
        if (n.op_type == "Constant" or inputs) and all(i in consts for i in inputs):
            consts.update(n.output)
    return consts


def constant_adds(model) -> list[str]:
    """Names of the Add nodes of an onnx ModelProto with an initializer or Constant operand."""
    consts = constants(model)
    return [n.name for n in model.graph.node if n.op_type == "Add" and any(i in consts for i in n.input)]


def dequantize_constant(inits: dict, dq):
    """The float32 value of a DequantizeLinear whose inputs are all initializers (`inits`: name -> TensorProto),
    computed as onnxruntime's DequantizeLinear does: (q - zero point) as float32, times the scale, per axis when the
    scale is a vector (its `axis`, default 1)."""
    import numpy as np
    from onnx import numpy_helper

    q, scale, zp = [numpy_helper.to_array(inits[i]) for i in dq.input if i] + [np.zeros((), np.int64)] * (
        3 - len([i for i in dq.input if i]))
    if scale.size > 1:
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % q.ndim
        shape = [-1 if d == axis else 1 for d in range(q.ndim)]
        scale, zp = scale.reshape(shape), (zp.reshape(shape) if zp.size > 1 else zp)
    return ((q.astype(np.int64) - zp.astype(np.int64)).astype(np.float32) * scale.astype(np.float32)).astype(np.float32)


def fold_dequantized(graph, takes) -> int:
    """Every DequantizeLinear of an onnx GraphProto whose inputs are all initializers and whose every use passes
    `takes(node, input index)` becomes a float initializer of its output's name (`dequantize_constant`), in place.
    Its integer, scale and zero-point initializers stay (`prune_initializers`). Returns the nodes folded."""
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    uses: dict[str, list] = {}
    for n in graph.node:
        for k, i in enumerate(n.input):
            uses.setdefault(i, []).append((n, k))
    folded = 0
    for dq in [n for n in graph.node if n.op_type == "DequantizeLinear"]:
        used = uses.get(dq.output[0], [])
        if not used or not all(takes(n, k) for n, k in used) or not all(i in inits for i in dq.input if i):
            continue
        graph.initializer.append(numpy_helper.from_array(dequantize_constant(inits, dq), dq.output[0]))
        graph.node.remove(dq)
        folded += 1
    return folded


def prune_initializers(graph, among=None) -> int:
    """Drop the initializers of an onnx GraphProto (only those named in `among`, when given) that no node and no
    graph output reads (onnxruntime warns about each when it loads the file). Returns how many."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used or (among is not None and i.name not in among)]
    dropped = len(graph.initializer) - len(keep)
    if dropped:
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return dropped


def float_gemm_biases(model) -> int:
    """Each Gemm of an onnx ModelProto whose weight is dequantised from int8 gets its dequantised (int32) bias as
    a float constant of the same values; the int32 bias and its scale and zero point are dropped. OpenCV 5.1's dnn
    refused such a Gemm ("bufidx >= 0 in function 'argTensor'": onnxruntime's U8S8 files with a Dense head) and
    loads it with the float bias; onnxruntime 1.31 quantises a Gemm's float bias back to int32 with the same scale
    (activation scale x weight scale) and keeps its QGemm, 1.17 runs that Gemm in float between its Q / DQ
    (docs/int8-fidelity.md, "What OpenCV refuses").
    Returns the biases folded."""
    import numpy as np

    from onnx import helper

    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}

    def int8_weight(node) -> bool:
        dq = producer.get(node.input[1]) if len(node.input) > 1 else None
        return dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits and \
            helper.tensor_dtype_to_np_dtype(inits[dq.input[0]].data_type) == np.int8

    read = {i for n in model.graph.node if n.op_type == "DequantizeLinear" for i in n.input}
    folded = fold_dequantized(model.graph, lambda n, k: n.op_type == "Gemm" and k == 2 and int8_weight(n))
    if folded:
        prune_initializers(model.graph, among=read)  # the folded biases' own, nothing else of the quantiser's
    return folded
