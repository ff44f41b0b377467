"""Names of a graph tf2onnx's TFLite reader made, numbered in graph order. That reader visits some nodes in an order
that changes from run to run (sets of node objects), so the numbers of the names it makes (`zero_point__84` or
`zero_point__15`) and the order of the initializers differed between two translations of the same file: the same
graph, other bytes. Only names and the initializer order change: what the graph computes does not."""
from __future__ import annotations

import re

_MADE = re.compile(r"__(\d+)")  # tf2onnx's made names: `name__N` (tf2onnx.utils.make_name), also inside longer names


def in_graph_order(model) -> None:
    """Renumber every `__N` of `model`'s main graph by first appearance (inputs, then each node's inputs, outputs and
    name), and order its initializers by first use, in place. A graph with subgraphs (If, Loop) is left as it is."""
    graph = model.graph
    if any(a.g.node or a.graphs for n in graph.node for a in n.attribute):
        return
    numbers: dict[str, str] = {}
    for name in _names(graph):
        for digits in _MADE.findall(name):
            numbers.setdefault(digits, str(len(numbers) + 1))

    def renamed(name: str) -> str:
        return _MADE.sub(lambda m: "__" + numbers[m.group(1)], name)

    for info in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        info.name = renamed(info.name)
    for node in graph.node:
        node.input[:] = [renamed(n) for n in node.input]
        node.output[:] = [renamed(n) for n in node.output]
        node.name = renamed(node.name)
    first: dict[str, int] = {}
    for node in graph.node:
        for n in node.input:
            first.setdefault(n, len(first))
    ordered = sorted(graph.initializer, key=lambda t: (first.get(t.name, len(first)), t.name))
    ordered = [type(t).FromString(t.SerializeToString()) for t in ordered]  # (copies: the originals are cleared)
    del graph.initializer[:]
    graph.initializer.extend(ordered)


def _names(graph):
    yield from (i.name for i in graph.input)
    for node in graph.node:
        yield from node.input
        yield from node.output
        yield node.name
    yield from (t.name for t in graph.initializer)
    yield from (o.name for o in graph.output)
    yield from (v.name for v in graph.value_info)
