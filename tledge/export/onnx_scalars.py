"""Scalar constants added to tensors, shaped for tf2onnx's transpose optimiser.

tf2onnx converts an NHWC TensorFlow graph to ONNX by wrapping every Conv in a Transpose pair
(NHWC -> NCHW -> NHWC) and then lets its transpose optimiser push the pairs through the graph until
they cancel. Its `Add` handler (tf2onnx 1.17, `TransposeOptimizer._add_handler`) fails on an `Add` of a
rank-0 constant to the output of a Conv without a bias input: it takes that constant for a Conv bias,
finds no non-1 dimension (`len(shape) - shape.count(1)` is 0, so the "bias is not 1-D" check passes) and
calls `max(numpy_val.shape)` on the empty shape: ValueError. tf2onnx's optimiser loop catches it, logs
"Failed to apply optimize_transpose" and keeps the graph from BEFORE the transpose pass - every Transpose
pair stays (random-init MobileNetV3-Large: 124 Transposes for 62 Conv). MobileNetV3's hard-swish and
hard-sigmoid are `relu6(x + 3.0) * (1 / 6)`, written with scalar Keras ops; a Conv has no bias input
when its bias, or the BatchNorm offset folded into it, is all zeros (folded away before the optimiser:
random or frozen-random backbones, never-trained squeeze-excite biases) or it has neither.

The same constant shaped [1] broadcasts to the same result against any tensor of rank >= 1, and the
handler then sees a 1-element "bias" whose size is not the Conv's channel count and pushes the
transposes through the Add as for any other broadcast operand. So each such operand gets its own
[1]-shaped copy (other consumers of a shared scalar keep the scalar) before tf2onnx sees the graph.
"""
from __future__ import annotations

# TensorFlow ops tf2onnx turns into ONNX Add (BiasAdd's bias is 1-D by definition)
ADD_OPS = ("AddV2", "Add")
SUFFIX = "/tledge_as_vector"


def as_vectors(tf, graph_def):
    """A copy of a frozen GraphDef in which every rank-0 float Const operand of an ADD_OPS node whose
    other operand has static rank >= 1 is replaced by the same value shaped [1]. Returns (graph_def,
    number of operands replaced)."""
    graph = tf.Graph()
    try:
        with graph.as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
    except Exception:  # not importable as it is: tf2onnx gets it unchanged (and says what it cannot read)
        return graph_def, 0
    edges = {}  # (consumer node name, input index) -> the Const node name
    for op in graph.get_operations():
        if op.type not in ADD_OPS or len(op.inputs) != 2:
            continue
        for i, (mine, other) in enumerate(((op.inputs[0], op.inputs[1]), (op.inputs[1], op.inputs[0]))):
            if (mine.op.type == "Const" and mine.shape.rank == 0 and mine.dtype.is_floating
                    and other.shape.rank is not None and other.shape.rank >= 1):
                edges[(op.name, i)] = mine.op.name
    if not edges:
        return graph_def, 0
    out = type(graph_def)()
    out.CopyFrom(graph_def)
    nodes = {n.name: n for n in out.node}
    made = set()
    for (consumer, i), const in sorted(edges.items()):
        vector = const + SUFFIX
        if vector not in made:
            _vector_copy(tf, out.node.add(), nodes[const], vector)
            made.add(vector)
        nodes[consumer].input[i] = vector
    return out, len(edges)


def _vector_copy(tf, node, const, name: str) -> None:
    """`node` becomes a Const named `name` holding `const`'s scalar value shaped [1]."""
    value = tf.make_ndarray(const.attr["value"].tensor).reshape(1)
    node.name, node.op = name, "Const"
    node.device = const.device
    node.attr["dtype"].CopyFrom(const.attr["dtype"])
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
