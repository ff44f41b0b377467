"""Role groups as sensitivity candidates (lab/quant/role_groups.py: a measured lab experiment, not in the export;
docs/int8-fidelity.md "EfficientNetB0: which precision change fixes it"), on the tiny trained model. The export's
sensitivity (singles only): test_sensitivity.py; both take their fixture and damaged-grid helper from qdq_graphs.py."""
import sys

import pytest

import qdq_graphs
from conftest import REPO

pytest.importorskip("tensorflow")
pytest.importorskip("onnxruntime")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from lab.quant import role_groups  # noqa: E402


graphs = qdq_graphs.graphs  # the module-scoped fixture (tests/qdq_graphs.py)
_damaged = qdq_graphs.damaged


def test_role_groups_partition_the_units_by_structural_role(graphs):
    """Units with the same producer op and input op types form one candidate, its cost the sum of its
    members' (the tiny model: the depthwise and pointwise conv outputs are both Conv(Conv))."""
    from tledge.quant import qdqgraph

    _, qdq, *_ = graphs
    units = [u for u, _ in qdqgraph.units(qdq)]
    found = role_groups.groups(qdq)
    assert found, [u.layer for u in units]
    for g in found:
        members = [u for u in units if u.tensors[0] in g.tensors]
        assert len(members) >= 2 and g.members == tuple(u.layer for u in members)
        assert g.macs == pytest.approx(sum(u.macs for u in members))
        assert g.layer.startswith(f"{len(members)} x ")
    roles = [g.layer.split(" x ", 1)[1] for g in found]
    assert len(set(roles)) == len(roles)
    assert sum(len(g.members) for g in found) <= len(units)


def test_a_role_whose_members_are_all_coarse_is_chosen_as_one(graphs):
    """Every member of one role coarser: the group's gain (beyond its best member) beats every single
    outside it, and the group counts as ONE choice (max_layers=1) that keeps all its layers precise."""
    from tledge.quant import sensitivity

    src, qdq, calib, held, _, _ = graphs
    group = max(role_groups.groups(qdq), key=lambda g: len(g.members))
    bad = qdq
    for t in group.tensors:  # 32x: at 16x the tiny model's gains are within noise of the singles' (0.002-0.004)
        bad = _damaged(bad, t, factor=32.0)
    ev = sensitivity.Evaluator(sensitivity.run(src.read_bytes(), calib[held]), calib[held])
    assert all(not c.members for c in sensitivity.rank(bad, ev)[0])  # the export's ranking: singles only
    ranked, base = role_groups.rank(bad, ev)
    by_name = {c.layer: c for c in ranked}
    assert by_name[group.layer].gain > 0
    outside = [c for c in ranked if not c.members and c.layer not in group.members]
    assert all(by_name[group.layer].gain > c.gain for c in outside), [(c.layer, round(c.gain, 4)) for c in ranked]
    # no single measured (max_trials=0): the group is the one choice, its layers all kept precise
    sel = role_groups.choose(bad, ev, aim=2.0, max_float_macs=1.0, max_layers=1, max_trials=0)
    assert sel.choices == [group.layer]
    assert sorted(sel.layers) == sorted(group.members) and sorted(sel.tensors) == sorted(group.tensors)
    assert sel.after.margin_rmse < base.margin_rmse
    assert {sel.precision("float")[name] for name in group.members} == {"float"}
    assert f"{group.layer}" in sel.summary()
