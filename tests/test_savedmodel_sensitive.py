"""The `sensitive` rung for the TFLite file of a model with no Keras 3 model (a SavedModel): the choice made
on the export's fp32 ONNX graph, the export's traced function calibrated, the ops around the chosen
activation denylisted (float ops), matched by layer name; the file loads with its contract."""
import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")


def _dtypes(data: bytes) -> tuple[dict, list]:
    """(output tensor name -> numpy dtype, (op, output, inputs) in order) of a TFLite file."""
    from ai_edge_litert.interpreter import Interpreter

    from tledge.quant import selective

    it = Interpreter(model_content=data)
    return {d["name"]: d["dtype"] for d in it.get_tensor_details()}, selective.tflite_graph(data)


def _predict(path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    top = []
    for img in x:
        scale, zp = inp["quantization"]
        it.set_tensor(inp["index"], np.clip(np.round(img[None] / scale + zp), 0, 255).astype(inp["dtype"]))
        it.invoke()
        top.append(int(np.argmax(it.get_tensor(out["index"]))))
    return np.array(top)


@pytest.mark.parametrize("formats", [("tflite",), ("tflite", "onnx")])
def test_savedmodel_tflite_file_gets_the_sensitive_rung(formats, tiny_model, shapes_dataset, tmp_path, monkeypatch):
    """The choice is forced to one real layer (the tiny healthy model has nothing worth raising); the rest
    is the real ladder on a SavedModel export: tflite-bias, then sensitive. TFLite only: the fp32 ONNX graph
    the choice is made on is converted from the traced function (the export wrote none)."""
    from tledge.export import fidelity, repair_model
    from tledge.export.parity import Thresholds
    from tledge.export.pipeline import ExportConfig, export
    from tledge.images import labelled_images
    from tledge.metadata import read_contract
    from tledge.quant import sensitivity

    def forced(qdq, ev, **_):
        cands = sensitivity.candidates(qdq)
        pick = cands[1]  # the first ReLU: its conv producer and depthwise consumer go float
        return sensitivity.Selection(layers=[pick.layer], tensors=list(pick.tensors),
                                     all_layers=[c.layer for c in cands], before=ev.score(qdq),
                                     after=ev.score(sensitivity.bypass(qdq, pick.tensors)), images=len(ev.pixels))

    made = {}
    attempt = fidelity._attempt

    def spy(rung, plain, *args, **kwargs):  # the rung's file, whichever one the loop keeps
        result, data, applied = attempt(rung, plain, *args, **kwargs)
        made[(plain.file, rung.name)] = data
        return result, data, applied

    monkeypatch.setattr(sensitivity, "choose", forced)
    # the keras-free path: no Keras 3 model rebuilt from the float TFLite graph (else the Keras rungs replace
    # tflite-rounding and sensitive: tests/test_from_tflite.py)
    monkeypatch.setattr(repair_model, "from_float_tflite", lambda ctx: (None, "not rebuilt (test)"))
    monkeypatch.setattr(fidelity, "_attempt", spy)
    tiny_model["model"].export(str(tmp_path / "sm"), verbose=False)
    cfg = ExportConfig(out=tmp_path / "e", formats=formats, int8=True, calib=str(shapes_dataset / "train"),
                       preprocess="raw", val=str(shapes_dataset / "val"),
                       thresholds={"int8": Thresholds(max_abs=1e-9, min_agreement=1.0)})
    with pytest.warns(Warning):
        res = export(tmp_path / "sm", cfg)
    rows = [r for r in res.report.fidelity if r["file"] == "model_int8.tflite"]
    assert [r["rung"] for r in rows] == ["plain", "tflite-bias", "tflite-rounding", "sensitive"], rows
    row = rows[-1]
    assert "error" not in row and row["agreement"] >= 0.8, row
    layer = row["float_layers"][0]
    if "onnx" in formats:  # one choice, on the export's fp32 ONNX graph, for both files
        onnx_row = next(r for r in res.report.fidelity if r["file"] == "model_int8.onnx" and r["rung"] == "sensitive")
        assert onnx_row["float_layers"] == [layer]
    else:
        assert not (tmp_path / "e" / "model_fp32.onnx").exists() and not (tmp_path / "e" / "model_int8.onnx").exists()

    # the file: the chosen activation's producer and consumers are float ops, every other linear op int8
    data = made[("model_int8.tflite", "sensitive")]
    dtypes, ops = _dtypes(data)
    chosen = [out for _, out, _ in ops if sensitivity.layer_of(out) == layer]
    assert len(chosen) == 1, (layer, [o for _, o, _ in ops])
    readers = [out for _, out, ins in ops if chosen[0] in ins]
    assert readers and all(dtypes[t] == np.float32 for t in chosen + readers), {t: dtypes[t] for t in chosen + readers}
    others = [out for op, out, _ in ops if op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
              and out not in chosen + readers]
    assert others and all(dtypes[t] in (np.int8, np.uint8) for t in others), {t: dtypes[t] for t in others}

    # it loads in LiteRT with its contract, which records every candidate layer's precision
    path = tmp_path / "sensitive.tflite"
    path.write_bytes(data)
    extra = read_contract(path).extra
    assert extra["int8_repair"] == "sensitive" and extra["float_layers"] == [layer]
    assert extra["layer_precision"][layer] == "float"
    assert sorted(extra["layer_precision"].values()) == ["float"] + ["int8"] * (len(extra["layer_precision"]) - 1)
    files, _, _ = labelled_images(shapes_dataset / "val")
    x = np.stack([tiny_model["contract"].prepare(f) for f in files]).astype(np.float32)
    keras_top = np.argmax(tiny_model["model"].predict(x, verbose=0), 1)
    assert np.mean(_predict(path, x) == keras_top) >= 0.9
    md = (tmp_path / "e" / "parity.md").read_text()
    assert "model_int8.tflite: sensitivity on " in md and "kept float (denylisted ops)" in md
