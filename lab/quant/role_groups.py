"""Role groups as sensitivity candidates: a lab experiment (measured, not in the export; docs/int8-fidelity.md
"EfficientNetB0: which precision change fixes it").

A role group is every quantised activation unit (tledge.quant.qdqgraph.units) whose producer has the same
structural role (op type and the op types producing its inputs, e.g. every Mul(Conv, Sigmoid) = every swish
output, every Mul(Mul, Sigmoid) = every squeeze-excite gate output), taken as ONE candidate: in deep models the
rounding noise is spread over many tensors of one kind, where each single tensor's leave-one-out gain is too
small to choose but the role's is not. Groups cover every quantised activation (a sigmoid or swish output
feeding no linear op too). No names are matched: the role comes from the graph's op types.

Measured on EfficientNetB0: TFLite +2-4 photos, ONNX -4-5 photos, neither file passing either way, and the same
choice on MobileNet v1: not a gain that generalises, so tledge.quant.sensitivity ranks single units only.
`rank` / `choose` here are sensitivity's with the groups added (always measured: a few dozen at most).
"""
from __future__ import annotations

import time

from tledge.quant import qdqgraph, sensitivity
from tledge.quant.qdqgraph import Candidate


def role(qdq, tensor: str, *, producer: dict | None = None, inits: set | None = None) -> str:
    """A tensor's structural role: its producer's op type and the op types producing that op's
    non-constant inputs (through QuantizeLinear / DequantizeLinear), e.g. `Mul(Conv,Sigmoid)`.
    `producer` (tensor -> node) and `inits` (initializer names) are qdq's, computed when not given."""
    inits = {i.name for i in qdq.graph.initializer} if inits is None else inits
    producer = {o: n for n in qdq.graph.node for o in n.output} if producer is None else producer

    def source(t):
        n = producer.get(t)
        while n is not None and n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            n = None if n.input[0] in inits else producer.get(n.input[0])
        return n
    node = producer.get(tensor)
    if node is None:
        return "input"
    ins = sorted(src.op_type for src in (source(t) for t in node.input if t and t not in inits) if src is not None)
    return f"{node.op_type}({','.join(ins)})"


def groups(qdq, *, min_size: int = 2) -> list[Candidate]:
    """Role groups (module doc): the units of every role with at least `min_size` units, each as one
    candidate (its tensors, its members' layers, the float cost of all of them)."""
    inits = {i.name for i in qdq.graph.initializer}
    producer = {o: n for n in qdq.graph.node for o in n.output}
    by_role: dict[str, list[Candidate]] = {}
    for unit, _ in qdqgraph.units(qdq):
        by_role.setdefault(role(qdq, unit.tensors[0], producer=producer, inits=inits), []).append(unit)
    out = []
    for name, members in by_role.items():
        if len(members) < min_size:
            continue
        layers = tuple(dict.fromkeys(m.layer for m in members))
        out.append(Candidate(tuple(t for m in members for t in m.tensors), f"{len(members)} x {name}",
                             sum(m.macs for m in members), members=layers))
    return out


def rank(qdq, ev: sensitivity.Evaluator, *, max_trials: int = sensitivity.MAX_TRIALS):
    """sensitivity.rank's singles and the role groups, most sensitive first, and the all-int8 score. A group's
    gain is beyond its best single member's, so that one damaged tensor is chosen alone."""
    singles, base = sensitivity.rank(qdq, ev, max_trials=max_trials)
    found = groups(qdq)
    for c in found:
        c.gain = base.margin_rmse ** 2 - ev.score(qdqgraph.bypass(qdq, c.tensors)).margin_rmse ** 2
        inside = set(c.tensors)
        c.gain -= max([s.gain for s in singles if s.measured and s.tensors[0] in inside] + [0.0])
    return sorted(singles + found, key=lambda c: -c.gain), base


def choose(qdq, ev: sensitivity.Evaluator, *, max_trials: int = sensitivity.MAX_TRIALS,
           **options) -> sensitivity.Selection:
    """sensitivity.choose with the role groups among the candidates (`options`: sensitivity.greedy's)."""
    start, runs = time.perf_counter(), ev.runs
    ranked, base = rank(qdq, ev, max_trials=max_trials)
    sel = sensitivity.greedy(qdq, ev, ranked, base, **options)
    sel.seconds, sel.trials = time.perf_counter() - start, ev.runs - runs
    return sel
