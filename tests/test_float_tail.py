"""The float-tail rung of the int8 fidelity loop (issue 11): the last linear layers of the repaired model,
and every op after them, stay float on their ORIGINAL (BN-folded) weights, in both files.

The tiny trained model has 4 linear layers (too few for the 4-convolution stem of `repaired-stem4+tail`),
so the rung is run here without a stem, on its last 2 layers (the 1x1 conv and the Dense head).
"""
import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("onnxruntime")


def test_the_rung_is_a_float_technique_after_the_stem():
    from tledge.export.fidelity import LADDER
    from tledge.quant import registry

    names = [r.name for r in LADDER]
    assert names[names.index("repaired-stem4") + 1] == "repaired-stem4+tail"
    rung = LADDER[names.index("repaired-stem4+tail")]
    assert rung.stem == 4 and rung.tail > 0 and "float-tail" in rung.techniques
    for kind in ("tflite", "onnx"):
        assert registry.check(rung.techniques, kind, int8_only=False) is None
        assert "not for an int8-only target" in registry.check(rung.techniques, kind, int8_only=True)


def test_tail_helpers_count_from_the_end_and_refuse_too_long_tails(tiny_model):
    from tledge.errors import ExportError
    from tledge.quant import floatweights, repair, selective

    flat, _ = repair.fold_bn(tiny_model["model"])
    kinds = [type(layer).__name__ for layer in flat.layers]
    tail = floatweights.tail_layers(flat, 2)
    assert [kinds[[lay.name for lay in flat.layers].index(n)] for n in tail] == ["Conv2D", "Dense"]
    assert floatweights.tail_layers(flat, 0) == []
    raw = selective.onnx_float(flat)
    import onnx

    ops = [n.op_type for n in onnx.load_from_string(raw).graph.node]
    names = selective.onnx_tail(raw, 1)
    assert ops[len(ops) - len(names)] in ("MatMul", "Gemm") and len(names) < len(ops)
    with pytest.raises(ExportError, match="float tail of 9"):
        selective.onnx_tail(raw, 9)


@pytest.mark.slow
def test_the_tail_runs_float_on_original_weights_in_both_files(tiny_model, shapes_dataset, tmp_path, monkeypatch):
    import onnx
    from ai_edge_litert.interpreter import Interpreter
    from onnx import numpy_helper

    from tledge.export import fidelity
    from tledge.export.parity import Thresholds
    from tledge.export.pipeline import ExportConfig, export
    from tledge.metadata import read_contract
    from tledge.quant import repair

    made = {}
    real = fidelity._attempt

    def capture(rung, plain, *a, **kw):
        out = real(rung, plain, *a, **kw)
        made[plain.format] = out
        return out

    monkeypatch.setattr(fidelity, "_attempt", capture)
    monkeypatch.setattr(fidelity, "LADDER", (fidelity.Rung("repaired+tail", tail=2),))
    cfg = ExportConfig(out=tmp_path, int8=True, calib=str(shapes_dataset / "train"), val=str(shapes_dataset / "val"),
                       thresholds={"int8": Thresholds(max_abs=1e-9, min_agreement=1.0)})
    with pytest.warns(Warning):
        res = export(tiny_model["keras"], cfg)
    rows = {(r["file"], r["rung"]): r for r in res.report.fidelity}
    original, _ = repair.fold_bn(tiny_model["model"])
    dense = next(layer for layer in original.layers if type(layer).__name__ == "Dense")
    w_dense = dense.get_weights()[0]
    md = (tmp_path / "parity.md").read_text()
    for kind in ("tflite", "onnx"):
        row = rows[(f"model_int8.{kind}", "repaired+tail")]
        assert "error" not in row and len(row["float_layers"]) == 2 and row["float_layers"][1] == dense.name
        assert row["agreement"] >= 0.8  # a working classifier, not garbage
        assert f"model_int8.{kind} `repaired+tail`: last 2 linear layers float" in md
        result, data, applied = made[kind]
        precision = applied["layer_precision"]
        assert [precision[n] for n in row["float_layers"]] == ["float (original weights)"] * 2
        assert list(precision.values()).count("int8") == 2
        if kind == "tflite":
            it = Interpreter(model_content=data)
            tensors = {d["index"]: d for d in it.get_tensor_details()}
            ops = [op for op in it._get_ops_details() if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D",
                                                                             "FULLY_CONNECTED")]
            weight = [tensors[op["inputs"][1]]["dtype"] for op in ops]
            assert weight == [np.int8, np.int8, np.float32, np.float32], weight
            fc = ops[-1]["inputs"][1]
            got = it.get_tensor(fc)  # TFLite keeps FC weights as (out, in)
            assert np.allclose(got, w_dense.T, atol=1e-6)
        else:
            model = onnx.load_from_string(data)
            inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
            producer = {o: n for n in model.graph.node for o in n.output}
            linear = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
            quantised = [n.input[1] in producer and producer[n.input[1]].op_type == "DequantizeLinear" for n in linear]
            assert quantised == [True, True, False, False], quantised
            head = inits[linear[-1].input[1]]
            assert np.allclose(head.reshape(w_dense.shape) if head.shape == w_dense.shape else head.T, w_dense, atol=1e-6)
        best = tmp_path / "rejected" / f"model_int8.{kind}"
        extra = read_contract(best).extra
        if extra.get("int8_repair") == "repaired+tail":  # the rung's file was kept as the best attempt
            assert extra["float_layers"] == row["float_layers"] and extra["original_weights"] == row["float_layers"]
