"""Names of a graph tf2onnx made, numbered in graph order. Its TFLite reader visits some nodes in an order that changes
from run to run (sets of node objects), so the numbers of the names it makes (`zero_point__84` or `zero_point__15`)
and the order of the initializers differed between two translations of the same file: the same graph, other bytes.
Its constant folding (every tf2onnx conversion) names a shared constant after whichever reader a set yields first
(`shared_constants`). Only names and the initializer order change: what the graph computes does not."""
from __future__ import annotations

import re

_MADE = re.compile(r"__(\d+)")  # tf2onnx's made names: `name__N` (tf2onnx.utils.make_name), also inside longer names
# only where a made name ends (`mul_1__6`, `Conv__211:0`): a Keras layer named `block__2` keeps its name
_MADE_SUFFIX = re.compile(r"__(\d+)(?=(?::\d+)?$)")


def in_graph_order(model, *, suffix_only: bool = False) -> None:
    """Renumber every `__N` of `model`'s main graph by first appearance (inputs, then each node's inputs, outputs and
    name), and order its initializers by first use, in place. `suffix_only`: only an `__N` that ends a name (before
    an output's `:k`), for graphs converted from Keras, whose layer names may hold `__N` themselves (the TFLite
    reader's graphs take every `__N`). A graph with subgraphs (If, Loop) is left as it is."""
    graph = model.graph
    if any(a.g.node or a.graphs for n in graph.node for a in n.attribute):
        return
    made = _MADE_SUFFIX if suffix_only else _MADE
    numbers: dict[str, str] = {}
    for name in _names(graph):
        for digits in made.findall(name):
            numbers.setdefault(digits, str(len(numbers) + 1))

    def renamed(name: str) -> str:
        return made.sub(lambda m: "__" + numbers[m.group(1)], name)

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


def shared_constants(model) -> dict[str, str]:
    """tf2onnx's constant folding shares one made constant between several nodes (every Relu6 Clip's min and max, a
    Pad's zero) and names it after whichever of them a set yields first (`conv_pw_7_relu_1/Relu6_min__118` in one run,
    `conv_pw_11_relu_1/Relu6_min__178` in the next). Each initializer with a made name that several node inputs read
    is renamed after its first reader in graph order and that input's slot (`<node>_in1`: the reader's whole name,
    so two constants whose first readers tf2onnx named alike, `Mul__5` and `Mul__9`, stay apart), in place. Run it
    after `in_graph_order(model, suffix_only=True)`, so that the readers' own made numbers are settled; the
    initializers keep the order of first use it gave them. Nothing is renamed if a new name were taken. Returns
    {old: new}."""
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    readers: dict[str, list] = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in inits:
                readers.setdefault(name, []).append((node, k))
    new = {name: f"{r[0][0].name}_in{r[0][1]}" for name, r in readers.items()
           if len(r) > 1 and _MADE_SUFFIX.search(name)}
    taken = inits | {o for node in graph.node for o in node.output}
    if len(set(new.values())) < len(new) or taken & set(new.values()):  # (node names are unique: not seen)
        return {}
    for node in graph.node:
        node.input[:] = [new.get(n, n) for n in node.input]
    for t in graph.initializer:
        t.name = new.get(t.name, t.name)
    return new


def _names(graph):
    yield from (i.name for i in graph.input)
    for node in graph.node:
        yield from node.input
        yield from node.output
        yield node.name
    yield from (t.name for t in graph.initializer)
    yield from (o.name for o in graph.output)
    yield from (v.name for v in graph.value_info)
