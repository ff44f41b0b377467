"""Adaptive re-rounding of the converted int8 TFLite file (tledge.quant.tflite_rounding, rung
`tflite-rounding`) on a SavedModel export of the tiny trained model: the layout round trip is exact, the
re-rounded file is closer to the float file than the plain one, op by op and at the output, and it keeps
its metadata."""
import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

from tledge.quant import tflite_bias as tb  # noqa: E402
from tledge.quant import tflite_rounding as tr  # noqa: E402


@pytest.fixture(scope="module")
def sm_files(tiny_savedmodel_tflite):
    """(plain int8 bytes, fp32 bytes, calibration pixels, export result) of the tiny model as a SavedModel."""
    res, calib, _ = tiny_savedmodel_tflite
    return (res.out / "model_int8.tflite").read_bytes(), (res.out / "model_fp32.tflite").read_bytes(), calib, res


@pytest.mark.parametrize("kind,shape,cin", [("CONV_2D", (5, 3, 3, 4), 4), ("DEPTHWISE_CONV_2D", (1, 3, 3, 8), 4),
                                            ("FULLY_CONNECTED", (3, 7), 7)])
def test_layouts_round_trip(kind, shape, cin):
    w = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    k = tr.to_keras(kind, w, cin)
    assert k.shape[-1] == {"CONV_2D": 5, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 3}[kind]
    np.testing.assert_array_equal(tr.from_keras(kind, k), w)
    if kind == "DEPTHWISE_CONV_2D":  # output channel c*m + j reads input c: Keras (kh, kw, c, j)
        assert k[1, 2, 3, 1] == w[0, 1, 2, 3 * 2 + 1]


def test_nearest_without_bias_correction_gives_back_the_converters_weights(sm_files):
    """Round to nearest on the file's own scales, biases from the float file: every int8 weight and every
    int32 bias comes back within one step of the converter's: the layouts, scales and pairing are right."""
    int8, fp32, calib, _ = sm_files
    data, log = tr.correct(int8, fp32, calib, method="nearest", bias_correction=False, images=4, min_rows=0)
    before, after = tb.load(int8), tb.load(data)
    ops = tb.linear_ops(before)
    assert log.layers == len(ops) >= 3 and log.changed == 0, log.summary()
    for op in ops:
        np.testing.assert_array_equal(tb.tensor_array(after, op.weight), tb.tensor_array(before, op.weight))
        b0, b1 = tb.tensor_array(before, op.bias), tb.tensor_array(after, op.bias)
        assert np.abs(b1.astype(np.int64) - b0).max() <= 1


def _outputs(data: bytes, x: np.ndarray, tensors: list[int]) -> dict[int, np.ndarray]:
    return tr.read_inputs(data, x, tensors)


def test_rerounded_file_is_closer_to_the_float_file_op_by_op(sm_files):
    """After the re-rounding, each op's per-channel mean output matches the float op's (the bias
    correction, measured on the calibration images), and the model output's error is smaller."""
    int8, fp32, calib, _ = sm_files
    data, log = tr.correct(int8, fp32, calib, min_rows=0)  # the dense head too (see the next test)
    assert log.layers >= 3 and log.changed > 0 and log.runs == log.layers, log.summary()
    q, f = tb.load(int8), tb.load(fp32)
    pairs = tb.pair(q, f, tb.BiasLog())
    x = calib[:tr.IMAGES]
    before = _outputs(int8, x, [op.output for op, _, _ in pairs])
    after = _outputs(data, x, [op.output for op, _, _ in pairs])
    ref = _outputs(fp32, x, [g.output for _, g, _ in pairs])
    for op, g, _ in pairs:
        axes = tuple(range(ref[g.output].ndim - 1))
        mean_err = {k: float(np.abs(v[op.output].mean(axes) - ref[g.output].mean(axes)).mean())
                    for k, v in (("before", before), ("after", after))}
        step = float(q.subgraphs[0].tensors[op.output].quantization.scale[0])
        assert mean_err["after"] <= max(mean_err["before"], 0.5 * step), (op.kind, mean_err)
    last_q, last_f = pairs[-1][0].output, pairs[-1][1].output
    err = {k: float(np.abs(v[last_q] - ref[last_f]).mean()) for k, v in (("before", before), ("after", after))}
    assert err["after"] < err["before"], err


def test_ops_with_too_few_input_rows_are_left_as_converted(sm_files):
    """The dense head sees one row per image: with fewer than MIN_ROWS x its kernel rows it keeps the
    converter's weights and bias, the convolutions are re-rounded."""
    int8, fp32, calib, _ = sm_files
    data, log = tr.correct(int8, fp32, calib)
    before, after = tb.load(int8), tb.load(data)
    head = tb.linear_ops(before)[-1]
    rows = int(before.subgraphs[0].tensors[head.weight].shape[1])  # its inputs (the bias row aside)
    assert head.kind == "FULLY_CONNECTED" and len(calib[:tr.IMAGES]) < tr.MIN_ROWS * rows
    assert log.skipped == {"with too few input rows for their kernel": 1}, log.summary()
    for t in (head.weight, head.bias):
        np.testing.assert_array_equal(tb.tensor_array(after, t), tb.tensor_array(before, t))
    assert log.layers == len(tb.linear_ops(before)) - 1 and log.changed > 0


def test_rerounded_file_keeps_its_metadata_and_stays_all_int8(sm_files, tmp_path):
    from tledge.metadata import read_contract
    import zipfile

    int8, fp32, calib, res = sm_files
    data, _ = tr.correct(int8, fp32, calib, images=8)
    dst = tmp_path / "model_int8.tflite"
    dst.write_bytes(data)
    assert read_contract(dst) == read_contract(res.out / "model_int8.tflite")
    with zipfile.ZipFile(dst) as zf:
        assert zf.read("labels.txt").decode().split() == list(res.contract.labels)
    model = tb.load(data)
    kinds = {model.subgraphs[0].tensors[op.weight].type for op in tb.linear_ops(model)}
    assert kinds == {9}  # int8 weights only


def test_chunks_respect_the_size_and_the_memory_budget(sm_files, monkeypatch):
    int8, fp32, _, _ = sm_files
    q = tb.load(int8)
    pairs = tb.pair(q, tb.load(fp32), tb.BiasLog())
    sizes = [len(g) for g in tr.chunks(q, pairs, 4, 2)]
    assert sum(sizes) == len(pairs) >= 3 and max(sizes) == 2 and sizes.count(2) == len(pairs) // 2
    monkeypatch.setattr(tr, "BUDGET", 1)  # every op alone
    assert all(len(g) == 1 for g in tr.chunks(q, pairs, 4, 100))
