"""Sensitivity-driven mixed precision (tledge.quant.sensitivity, issue 11) on the tiny trained model.

A deliberately damaged activation (its int8 grid 32x coarser) must be ranked first and chosen first,
and the chosen layer must come out precise in both files: float ops in the TFLite file (its output
tensor float32), int16 QDQ in the ONNX file. The loop's use of it is in test_fidelity.py.
"""
import numpy as np
import pytest

import qdq_graphs

pytest.importorskip("tensorflow")
pytest.importorskip("onnxruntime")


graphs = qdq_graphs.graphs  # the module-scoped fixture (tests/qdq_graphs.py)
_damaged = qdq_graphs.damaged


def test_candidates_are_the_activations_feeding_linear_layers(graphs):
    from tledge.quant import sensitivity

    _, qdq, *_ = graphs
    cands = sensitivity.candidates(qdq)
    layers = [c.layer for c in cands]
    assert len(cands) >= 3 and len(set(layers)) == len(layers)
    assert all(c.macs >= 0 for c in cands) and any(c.macs > 0 for c in cands)
    # the bypass really removes the rounding of exactly that tensor: the simulation moves towards float
    assert any(sensitivity.bypass(qdq, cands[0].tensors).graph.node[i].op_type == "Clip"
               for i in range(len(qdq.graph.node) + 1))


def test_a_damaged_layer_is_ranked_first_and_chosen(graphs):
    from tledge.quant import sensitivity

    src, qdq, calib, held, _, _ = graphs
    cands = sensitivity.candidates(qdq)
    victim = cands[len(cands) // 2]  # not the first: rank must not just follow graph order
    bad = _damaged(qdq, victim.tensors[0])
    ev = sensitivity.Evaluator(sensitivity.run(src.read_bytes(), calib[held]), calib[held])
    ranked, base = sensitivity.rank(bad, ev)
    assert ranked[0].layer == victim.layer, [(c.layer, round(c.gain, 4)) for c in ranked]
    sel = sensitivity.choose(bad, ev, aim=2.0, max_float_macs=1.0, max_layers=1)
    assert sel.layers == [victim.layer]
    assert sel.after.margin_rmse < 0.8 * base.margin_rmse and sel.after.expected >= base.expected
    assert sel.precision("float")[victim.layer] == "float"
    assert set(sel.precision("float").values()) == {"float", "int8"}


def test_chosen_layers_are_precise_in_both_files(graphs, tiny_model):
    import onnx
    from ai_edge_litert.interpreter import Interpreter

    from tledge.quant import selective, sensitivity

    src, qdq, calib, held, quantize, d = graphs
    # a healthy tiny model has nothing worth raising (every leave-one-out gain is noise): damage two that
    # do not feed each other (two adjacent coarse grids partly cancel: measured, re_lu_1 then gains < 0)
    cands = sensitivity.candidates(qdq)
    bad = _damaged(_damaged(qdq, cands[0].tensors[0]), cands[2].tensors[0])
    ev = sensitivity.Evaluator(sensitivity.run(src.read_bytes(), calib[held]), calib[held])
    sel = sensitivity.choose(bad, ev, aim=2.0, max_float_macs=1.0, max_layers=2)
    assert sorted(sel.layers) == sorted([cands[0].layer, cands[2].layer])
    # ONNX: the chosen activations are int16 QDQ, or float (a Clip to the int16 range) where an int8-weight Conv
    # writes or reads them (for OpenCV: tledge.quant.int16convs); the others stay 8-bit
    quantize(src, d / "mixed.onnx", calib, overrides=sensitivity.onnx_overrides(sel))
    m = onnx.load(str(d / "mixed.onnx"))
    zp_type = {i.name: i.data_type for i in m.graph.initializer}
    q_type = {n.input[0]: zp_type[n.input[2]] for n in m.graph.node if n.op_type == "QuantizeLinear"}
    clipped = {n.input[0] for n in m.graph.node if n.op_type == "Clip"}
    assert all(q_type[t] == onnx.TensorProto.INT16 if t in q_type else t in clipped for t in sel.tensors)
    assert any(v == onnx.TensorProto.UINT8 for v in q_type.values())
    # TFLite: the chosen layers' ops are float (float32 outputs), the rest int8
    cal = selective.calibrate_tflite(tiny_model["model"], calib)
    ops = selective.tflite_graph(cal)
    keep = sensitivity.tflite_keep_float(ops, sel.layers)
    assert keep
    it = Interpreter(model_content=selective.quantize_tflite(cal, keep_float=keep))
    dtype = {t["name"]: t["dtype"] for t in it.get_tensor_details()}
    assert all(dtype[name] == np.float32 for name in keep)
    assert any(dtype[name] == np.uint8 for _, name, _ in ops if name not in keep and name in dtype)


def test_tflite_denylist_follows_consumers_through_pass_through_ops():
    from tledge.quant.sensitivity import tflite_keep_float

    ops = [("CONV_2D", "m_1/conv_a_relu_1/Relu6;m_1/conv_a_1/BiasAdd", ["pixels"]),
           ("PAD", "m_1/pad_1/Pad", ["m_1/conv_a_relu_1/Relu6;m_1/conv_a_1/BiasAdd"]),
           ("DEPTHWISE_CONV_2D", "m_1/conv_b_relu_1/Relu6", ["m_1/pad_1/Pad"]),
           ("CONV_2D", "m_1/conv_c_relu_1/Relu6", ["m_1/conv_b_relu_1/Relu6"])]
    assert tflite_keep_float(ops, ["conv_a_relu_1"]) == [ops[0][1], ops[1][1], ops[2][1]]
    assert tflite_keep_float(ops, ["conv_b_relu_1"]) == [ops[2][1], ops[3][1]]
    assert tflite_keep_float(ops, ["m_1"]) == []  # an enclosing scope names no layer
    assert tflite_keep_float(ops, ["nope"]) == []


def test_the_loop_records_the_chosen_layers(tiny_model, shapes_dataset, tmp_path, monkeypatch):
    """The rung wiring, with the choice forced to one real layer (the tiny healthy model has nothing
    worth raising): the attempt row, parity.md and the kept file's contract name it."""
    from tledge.export import fidelity
    from tledge.export.parity import Thresholds
    from tledge.export.pipeline import ExportConfig, export
    from tledge.metadata import read_contract
    from tledge.quant import sensitivity

    def forced(qdq, ev, **_):
        cands = sensitivity.candidates(qdq)
        pick = cands[1]
        return sensitivity.Selection(layers=[pick.layer], tensors=list(pick.tensors),
                                     all_layers=[c.layer for c in cands], before=ev.score(qdq),
                                     after=ev.score(sensitivity.bypass(qdq, pick.tensors)), images=len(ev.pixels))

    monkeypatch.setattr(sensitivity, "choose", forced)
    monkeypatch.setattr(fidelity, "LADDER", (fidelity.Rung("repaired+sensitive", mixed=True),))
    cfg = ExportConfig(out=tmp_path, int8=True, calib=str(shapes_dataset / "train"), val=str(shapes_dataset / "val"),
                       thresholds={"int8": Thresholds(max_abs=1e-9, min_agreement=1.0)})
    with pytest.warns(Warning):
        res = export(tiny_model["keras"], cfg)
    rows = {(r["file"], r["rung"]): r for r in res.report.fidelity}
    md = (tmp_path / "parity.md").read_text()
    for kind in ("tflite", "onnx"):
        name = f"model_int8.{kind}"
        row, plain = rows[(name, "repaired+sensitive")], rows[(name, "plain")]
        assert "error" not in row and len(row["float_layers"]) == 1
        assert f"{name}: sensitivity on " in md and row["float_layers"][0] in md
        extra = read_contract(tmp_path / "rejected" / name).extra
        if (row["agreement"], -row["median_image_max_abs"]) > (plain["agreement"], -plain["median_image_max_abs"]):
            assert extra["int8_repair"] == "repaired+sensitive" and extra["float_layers"] == row["float_layers"]
            assert list(extra["layer_precision"].values()).count("int8") == len(extra["layer_precision"]) - 1
        else:
            assert "float_layers" not in extra


def test_the_repair_keeps_the_layers_around_a_chosen_activation_float(tiny_model, shapes_dataset):
    """The layers a TFLite file runs float around a chosen activation (its producer, through the fused ReLU, and
    its readers) keep their original folded weights in the repair (`repair.apply(keep=...)`), and the layers after
    them are fitted to that: they differ from the plain repair's."""
    from tledge.images import labelled_images
    from tledge.quant import floatweights, repair

    files, _, _ = labelled_images(shapes_dataset / "train")
    calib = np.stack([tiny_model["contract"].prepare(f) for f in files[:24]]).astype(np.float32)
    original, _ = repair.fold_bn(tiny_model["model"])
    kinds = {layer.name: type(layer).__name__ for layer in original.layers}
    relu = next(n for n, k in kinds.items() if k == "ReLU")
    conv, dw = (next(n for n, k in kinds.items() if k == kind) for kind in ("Conv2D", "DepthwiseConv2D"))
    dense = next(n for n, k in kinds.items() if k == "Dense")
    kept = floatweights.float_set(original, [relu + "_1"])
    assert kept[:3] == [relu, conv, dw] and dense not in kept, kept
    gap = next(n for n, k in kinds.items() if k == "GlobalAveragePooling2D")
    assert floatweights.float_set(original, [gap]) == [gap, dense]
    assert floatweights.keras_name(original, relu + "_1") == relu and floatweights.keras_name(original, "x_1") is None
    steps = ("fold", "adaptive", "bias_correction")
    plain, _ = repair.apply(tiny_model["model"], calib, steps=steps)
    fixed, _ = repair.apply(tiny_model["model"], calib, steps=steps, keep=[relu + "_1"])
    for name in (conv, dw):  # original weights (the repair gives a bias-less layer a zero bias)
        mine, theirs = fixed.get_layer(name).get_weights(), original.get_layer(name).get_weights()
        assert all(np.allclose(a, b) for a, b in zip(mine, theirs)), name
        assert not np.allclose(plain.get_layer(name).get_weights()[0], theirs[0])
    after = zip(plain.get_layer(dense).get_weights(), fixed.get_layer(dense).get_weights())
    assert not all(np.allclose(a, b) for a, b in after)  # fitted to the float layers before it


def test_a_savedmodel_gets_the_graph_level_rung(tiny_model, shapes_dataset, tmp_path, monkeypatch):
    """No Keras 3 model to repair (the rebuild from the float TFLite graph forced off): the ONNX file still
    gets the sensitivity rung, on the export's own float graph, and no Keras-level rung."""
    from tledge.export import repair_model
    from tledge.export.parity import Thresholds

    monkeypatch.setattr(repair_model, "from_float_tflite", lambda ctx: (None, "not rebuilt (test)"))
    from tledge.export.pipeline import ExportConfig, export

    tiny_model["model"].export(str(tmp_path / "sm"), verbose=False)
    impossible = {"int8": Thresholds(max_abs=1e-9, min_agreement=1.0)}
    cfg = ExportConfig(out=tmp_path / "e", formats=("onnx",), int8=True, calib=str(shapes_dataset / "train"),
                       preprocess="raw", val=str(shapes_dataset / "val"), thresholds=impossible)
    with pytest.warns(Warning):
        res = export(tmp_path / "sm", cfg)
    rows = {r["rung"]: r for r in res.report.fidelity}
    assert "sensitive" in rows and not any(name.startswith("repaired") for name in rows), list(rows)
    row = rows["sensitive"]
    assert row.get("float_layers") or row["error"].startswith("no layer worth raising: sensitivity on "), row


def test_the_local_noise_proxy_caps_the_leave_one_out_trials(graphs):
    """More singles than max_trials: only the noisiest are measured (a damaged one among them), and the
    graphs run are counted."""
    from tledge.quant import sensitivity

    src, qdq, calib, held, _, _ = graphs
    cands = sensitivity.candidates(qdq)
    victim = cands[-1]
    bad = _damaged(qdq, victim.tensors[0])
    ev = sensitivity.Evaluator(sensitivity.run(src.read_bytes(), calib[held]), calib[held])
    ranked, _ = sensitivity.rank(bad, ev, max_trials=1)
    measured = [c for c in ranked if c.measured]
    assert [c.layer for c in measured] == [victim.layer]
    assert len(ranked) == len(cands) and all(c.gain == 0.0 for c in ranked if not c.measured)
    assert max(ranked, key=lambda c: c.noise).layer == victim.layer
    assert ev.runs == 3  # the all-int8 score, the proxy pass, one leave-one-out
    sel = sensitivity.choose(bad, ev, aim=2.0, max_float_macs=1.0, max_layers=1, max_trials=1)
    assert sel.layers == [victim.layer] and sel.trials == 4 and "graphs run" in sel.summary()


@pytest.mark.parametrize("name, layer", [
    ("model/conv_pw_3_relu_1/Relu6:0", "conv_pw_3_relu_1"),
    ("tledge_xception_1/xception_1/block2_sepconv1_1/separable_conv2d/depthwise;StatefulPartitionedCall/x",
     "block2_sepconv1_1"),
    ("tledge_xception_1/xception_1/block2_sepconv2_bn_1/batchnorm/add_1;StatefulPartitionedCall/x",
     "block2_sepconv2_bn_1"),
    ("scores", "scores"),
])
def test_layer_of_skips_the_scopes_layers_open_inside_themselves(name, layer):
    """Xception's separable convolutions and standalone batch norms all came out as one `separable_conv2d` /
    `batchnorm` layer, so keeping one float kept 68 of its 104 TFLite ops float (twenty-seventh session)."""
    from tledge.quant import sensitivity

    assert sensitivity.layer_of(name) == layer


def test_the_search_stops_when_the_repair_time_is_spent():
    """The export's --repair-time stops the sensitivity search before its next trial graph, as it stops the weight
    repair before its next kernel (the family sweep's +sensitive rungs ran 52-82 s past the budget, then the repair
    stopped "after 0 of N kernels")."""
    from tledge.errors import RepairTimeout
    from tledge.quant import sensitivity

    calls = []

    def stop():
        calls.append(1)
        return None if len(calls) < 2 else "repair time budget spent (151 s of 150 s)"

    ev = sensitivity.Evaluator(np.array([[0.9, 0.1], [0.2, 0.8]]), np.zeros((2, 4, 4, 3), np.float32), stop=stop)
    ev.outputs = lambda model: np.array([[0.8, 0.2], [0.3, 0.7]])  # the first trial runs
    assert ev.score(None).agreement == 1.0
    with pytest.raises(RepairTimeout, match=r"stopped after 1 trial graphs: repair time budget spent \(151 s"):
        ev.score(None)


def test_a_chosen_layer_the_tflite_graph_lacks_is_recorded_int8(tiny_model, shapes_dataset, tmp_path, monkeypatch):
    """helper 146: a chosen activation not found in the TFLite graph was left int8 (the note said so) while the file's
    contract listed it among the float layers."""
    from tledge.export import fidelity
    from tledge.quant import sensitivity
    from tledge.export.parity import Thresholds
    from tledge.export.pipeline import ExportConfig, export
    from tledge.metadata import read_tflite_contract

    def forced(qdq, ev, **_):
        cands = sensitivity.candidates(qdq)
        pick = cands[1]
        return sensitivity.Selection(layers=[pick.layer, "not_in_graph_1"], tensors=list(pick.tensors),
                                     all_layers=[c.layer for c in cands] + ["not_in_graph_1"],
                                     before=ev.score(qdq), after=ev.score(sensitivity.bypass(qdq, pick.tensors)),
                                     images=len(ev.pixels))

    from tledge.export import rungs

    made = []
    plain_tflite = rungs.Shared.tflite

    def keep(self, *args, **kwargs):  # the rung's file, as its contract was embedded
        made.append(plain_tflite(self, *args, **kwargs))
        return made[-1]

    monkeypatch.setattr(rungs.Shared, "tflite", keep)
    monkeypatch.setattr(sensitivity, "choose", forced)
    monkeypatch.setattr(fidelity, "LADDER", (fidelity.Rung("repaired+sensitive", mixed=True),))
    cfg = ExportConfig(out=tmp_path, int8=True, formats=("tflite",), calib=str(shapes_dataset / "train"),
                       val=str(shapes_dataset / "val"), thresholds={"int8": Thresholds(max_abs=1e-9, min_agreement=1.0)})
    with pytest.warns(Warning):
        export(tiny_model["keras"], cfg)
    extra = read_tflite_contract(made[-1]).extra
    assert extra["int8_repair"] == "repaired+sensitive" and "not_in_graph_1" in extra["layers_left_int8"]
    assert "not_in_graph_1" not in extra["float_layers"] and extra["layer_precision"]["not_in_graph_1"] == "int8"


def test_a_tflite_only_export_measures_sensitivity_against_the_original(tiny_model, shapes_dataset, tmp_path,
                                                                          monkeypatch):
    """`--formats tflite` writes no fp32 ONNX file: the sensitivity rungs scored the repaired model's own float graph
    as the target (the both-format export scores against the original's). Now the traced function is converted for
    it: the reference graph computes the Keras model's outputs."""
    from pathlib import Path

    import onnxruntime as ort

    from tledge.export import fidelity
    from tledge.export.parity import Thresholds
    from tledge.export.pipeline import ExportConfig, export
    from tledge.images import labelled_images
    from tledge.quant import sensitivity

    seen = {}
    real = sensitivity.select

    def spy(float_onnx, quantize, calib, *, reference=None, **kw):
        seen["reference"] = None if reference is None else Path(reference).read_bytes()
        return real(float_onnx, quantize, calib, reference=reference, **kw)

    monkeypatch.setattr(sensitivity, "select", spy)
    monkeypatch.setattr(fidelity, "LADDER", (fidelity.Rung("repaired+sensitive", mixed=True),))
    cfg = ExportConfig(out=tmp_path / "e", int8=True, formats=("tflite",), calib=str(shapes_dataset / "train"),
                       val=str(shapes_dataset / "val"),
                       thresholds={"int8": Thresholds(max_abs=1e-9, min_agreement=1.0)})
    with pytest.warns(Warning):
        export(tiny_model["keras"], cfg)
    assert seen.get("reference") is not None, "sensitivity measured against the repaired model"
    files, _, _ = labelled_images(shapes_dataset / "val")
    x = np.stack([tiny_model["contract"].prepare(f) for f in files[:8]]).astype(np.float32)
    sess = ort.InferenceSession(seen["reference"], providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert np.max(np.abs(got - np.asarray(tiny_model["model"](x)))) < 1e-4
    assert not list((tmp_path / "e").rglob("*.onnx"))
