"""TensorFlow graph rewrites that let tf2onnx convert two things it would otherwise leave in the graph.

1. Keras 3 runs a grouped convolution (Conv2D with groups > 1, e.g. ConvNeXt's 7x7 depthwise ones) through a
   tf.function compiled with XLA: the frozen graph calls a library function marked `_XlaMustCompile` and
   `_noinline` (StatefulPartitionedCall). Grappler does not inline such a call, so tf2onnx kept it, an op no ONNX
   runtime has. Without the marks, tf2onnx's own grappler pass inlines the body (one Conv2D whose kernel has
   fewer input channels than its input), which it converts to an ONNX Conv with `group`. The marks only ask for
   XLA compilation; the arithmetic is the same.
2. Exact GELU (`approximate=False`, Keras' default) is 0.5 x erfc(-x / sqrt 2) in TensorFlow. ONNX has Erf and no
   Erfc, so each Erfc(x) becomes 1 - Erf(x), under the Erfc node's name so its consumers are unchanged.
"""
from __future__ import annotations

import numpy as np

XLA_MARKS = ("_XlaMustCompile", "_noinline")


def _xla_marked(attrs) -> bool:
    return "_XlaMustCompile" in attrs and attrs["_XlaMustCompile"].b


def rewrite(tf, graph_def):
    """A copy of a frozen GraphDef with both rewrites. Returns (graph_def, {"xla_calls": n, "erfc": m}); the
    graph_def itself, uncopied, when it has neither (every model but ConvNeXt-like ones)."""
    counts = {"xla_calls": 0, "erfc": 0}
    if not any(n.op == "Erfc" or _xla_marked(n.attr) for n in graph_def.node):
        return graph_def, counts
    out = tf.compat.v1.GraphDef()
    out.CopyFrom(graph_def)
    for f in out.library.function:
        if _xla_marked(f.attr):
            for k in XLA_MARKS:
                f.attr.pop(k, None)
    nodes = []
    for n in out.node:
        if _xla_marked(n.attr) and n.op in ("StatefulPartitionedCall", "PartitionedCall"):
            n.attr.pop("_XlaMustCompile")
            counts["xla_calls"] += 1
        if n.op != "Erfc":
            nodes.append(n)
            continue
        counts["erfc"] += 1
        dtype = n.attr["T"]
        erf = tf.compat.v1.NodeDef(name=f"{n.name}/tledge_erf", op="Erf", input=list(n.input[:1]))
        one = tf.compat.v1.NodeDef(name=f"{n.name}/tledge_one", op="Const")
        sub = tf.compat.v1.NodeDef(name=n.name, op="Sub", input=[one.name, erf.name])
        erf.attr["T"].CopyFrom(dtype)
        sub.attr["T"].CopyFrom(dtype)
        one.attr["dtype"].CopyFrom(dtype)
        one.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.array(1, tf.as_dtype(dtype.type).as_numpy_dtype)))
        if len(n.input) > 1:  # control inputs stay on the node that keeps the name
            sub.input.extend(n.input[1:])
        nodes += [erf, one, sub]
    del out.node[:]
    out.node.extend(nodes)
    return out, counts
