"""Role groups as sensitivity candidates (lab/quant/role_groups.py: a measured lab experiment, not in the export;
docs/int8-fidelity.md "EfficientNetB0: which precision change fixes it"), on the tiny trained model. The export's
sensitivity (singles only): test_sensitivity.py, whose fixture and damaged-grid helper are repeated here."""
import functools
import sys

import numpy as np
import pytest

from conftest import REPO

pytest.importorskip("tensorflow")
pytest.importorskip("onnxruntime")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from lab.quant import role_groups  # noqa: E402


@pytest.fixture(scope="module")
def graphs(tiny_model, shapes_dataset, tmp_path_factory):
    """(float ONNX path, QDQ model fit on 2/3 of the calibration images, held-out pixels, quantiser)."""
    import onnx

    from tledge.export import onnx as onnx_export
    from tledge.images import labelled_images
    from tledge.quant import sensitivity
    from lab.quant import quick

    d = tmp_path_factory.mktemp("sensitivity")
    files, _, _ = labelled_images(shapes_dataset / "train")
    calib = np.stack([tiny_model["contract"].prepare(f) for f in files]).astype(np.float32)
    src = d / "fp32.onnx"
    src.write_bytes(quick.onnx_float(tiny_model["model"]))
    quantize = functools.partial(onnx_export.quantize_int8, scheme=onnx_export.SCHEMES["u8s8"])
    fit, held = sensitivity.split(len(calib))
    quantize(src, d / "q.onnx", calib[fit])
    return src, onnx.load(str(d / "q.onnx")), calib, held, quantize, d


def _damaged(qdq, tensor: str, factor: float = 32.0):
    """A copy with `tensor`'s activation grid `factor` times coarser (same zero point)."""
    import copy

    from onnx import numpy_helper

    model = copy.deepcopy(qdq)
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    init = next(i for i in model.graph.initializer if i.name == q.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name))
    return model


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
