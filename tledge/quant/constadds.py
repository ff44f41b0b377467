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
