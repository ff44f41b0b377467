"""The int8 ONNX file translated from an int8 TFLite file (tledge.export.onnx_translate, rung
`repaired-stem6+mse+translated`): it computes what the TFLite file computes, in the export's ONNX conventions.
Whether it helps is measured on real models (docs/int8-fidelity.md, "ONNX files translated from the TFLite file")."""
import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")


@pytest.fixture(scope="module")
def int8_tflite(tiny_export, tiny_model, shapes_dataset):
    """The tiny export's int8 TFLite file and 24 val images prepared by its contract."""
    from tledge.images import iter_image_files, prepare_all

    files = sorted(iter_image_files(shapes_dataset / "val"))[:24]
    x = np.stack(prepare_all(tiny_model["contract"].prepare, files)).astype(np.float32)
    return (tiny_model["dir"] / "export" / "model_int8.tflite").read_bytes(), x


def _run(model, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.type for i in sess.get_inputs()] == ["tensor(float)"]
    return sess.run(None, {"pixels": x})[0]


def test_the_translation_computes_the_tflite_file(int8_tflite):
    from tledge.export import onnx_translate
    from lab.quant.quick import Runner

    data, x = int8_tflite
    ref = Runner(data, "tflite").predict(x)  # dequantised uint8 probabilities
    model, scheme = onnx_translate.from_tflite(data, "nhwc", x)
    y = _run(model, x)  # a batch of 24 at once: the batch dimension is free
    assert y.shape == ref.shape and y.dtype == np.float32
    assert np.abs(y - ref).max() < 0.02  # the TFLite file's own 1/256 output grid, and kernel rounding
    assert (y.argmax(1) == ref.argmax(1)).mean() >= 0.95
    assert np.unique(np.round(y * 256, 3) % 1).size > 1  # the Softmax output is float, not on 1/256
    graph = model.graph
    assert [o.name for o in graph.output] == ["scores"]
    # activations uint8 (zero point + 128), weights int8 or, where AVX2's pair sums would saturate, uint8 at 128
    acts = {i.name: i.data_type for i in graph.initializer}
    zps = [acts[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zps and set(zps) == {2}  # onnx.TensorProto.UINT8
    nchw, _ = onnx_translate.from_tflite(data, "nchw", x)
    assert np.allclose(_run(nchw, np.ascontiguousarray(x.transpose(0, 3, 1, 2))), y, atol=1e-6)
    assert scheme.activations == "uint8"


def test_unsigned_weights_keep_the_values(int8_tflite):
    from tledge.export import onnx_translate

    data, x = int8_tflite
    model, scheme = onnx_translate.from_tflite(data, "nhwc", x)
    before = _run(model, x)
    changed = onnx_translate.unsigned_weights(model.graph)
    if scheme.weights == "uint8":
        assert changed == 0  # the translation already chose them
        assert "all weights on the symmetric int8 grid" in scheme.describe()  # the Gemm head's too, not only convs
    else:
        assert changed > 0
        assert np.allclose(_run(model, x), before, atol=1e-5)


def test_the_translated_rung_runs_end_to_end(tiny_model, shapes_dataset, tmp_path, monkeypatch):
    """The rung (without a stem: the tiny model has too few layers) through the export: only for ONNX, parity
    against the original, and the file records where its grids came from."""
    from tledge.export import fidelity
    from tledge.export.parity import Thresholds
    from tledge.export.pipeline import ExportConfig, export
    from tledge.metadata import read_onnx_contract

    rung = fidelity.Rung("repaired+mse+translated", ranges="mse", translated=True)
    monkeypatch.setattr(fidelity, "LADDER", (rung,))
    cfg = ExportConfig(out=tmp_path / "out", int8=True, calib=str(shapes_dataset / "train"),
                       val=str(shapes_dataset / "val"), thresholds={"int8": Thresholds(max_abs=1e-9, min_agreement=1.0)})
    with pytest.warns(Warning):
        res = export(tiny_model["keras"], cfg)
    rows = [r for r in res.report.fidelity if r["rung"] == rung.name]
    assert [r["file"] for r in rows] == ["model_int8.onnx"]  # not a TFLite technique
    assert "error" not in rows[0] and rows[0]["agreement"] >= 0.8, rows[0]
    rejected = tmp_path / "out" / "rejected" / "model_int8.onnx"  # the budget cannot be met: the best is kept there
    contract = read_onnx_contract(rejected if rejected.is_file() else tmp_path / "out" / "model_int8.onnx")
    assert contract.extra.get("onnx_translated_from") == "int8 TFLite", contract.extra
    assert rung.techniques == ("weight-repair", "mse-ranges", "tflite-translation")


def test_an_output_computed_on_integers_is_dequantised():
    """A binary head [1 - p, p] (the tutorial layout): the TFLite file concatenates two int8 tensors, so its last op
    works on integers and the translation's float output is that op's DequantizeLinear (the tutorial zoo model
    failed here first)."""
    import keras

    from tledge.export import onnx_translate
    from tledge.quant import selective
    from lab.quant.quick import Runner

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3), name="pixels")
    x = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 127.5, -1)(inp))
    p = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, keras.layers.Concatenate()([1 - p, p]))
    calib = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3)).astype(np.float32)
    data = selective.quantize_tflite(selective.calibrate_tflite(model, calib))
    translated, _ = onnx_translate.from_tflite(data, "nhwc", calib)
    producer = {o: n for n in translated.graph.node for o in n.output}
    assert producer["scores"].op_type == "DequantizeLinear"
    assert np.abs(_run(translated, calib) - Runner(data, "tflite").predict(calib)).max() < 0.01


def test_opencv_runs_the_translated_file(int8_tflite, tmp_path):
    """A real client: cv2.dnn loads the NCHW translation (its QDQ nodes, the input QuantizeLinear, the float output)
    and gives onnxruntime's top-1 with its own int8 kernels."""
    cv2 = pytest.importorskip("cv2")
    from tledge.export import onnx_translate

    data, x = int8_tflite
    model, _ = onnx_translate.from_tflite(data, "nchw", x)
    path = tmp_path / "translated.onnx"
    path.write_bytes(model.SerializeToString())
    nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    ours = _run(model, nchw)
    net = cv2.dnn.readNetFromONNX(str(path))
    theirs = []
    for one in nchw:
        net.setInput(one[None])
        theirs.append(np.asarray(net.forward(), np.float32).reshape(-1))
    theirs = np.stack(theirs)
    assert ours.std(axis=0).max() > 0.05  # a trained model: varied outputs
    assert np.mean(theirs.argmax(1) == ours.argmax(1)) >= 0.9 and np.abs(theirs - ours).max() < 0.1, \
        (cv2.__version__, np.abs(theirs - ours).max())
