"""A quantization-aware-trained model (tfmot, or fake_quant ops written by hand) exported to ONNX (session 37):
tf2onnx writes each FakeQuant as a QuantizeLinear -> DequantizeLinear pair and keeps the weights float, and
onnxruntime's default session quantised those weights itself: a tfmot QAT MobileNet's fp32 file agreed with the
model on 0.654 of 153 photos (0.77 max abs) where a session with optimisation off gave 1.000. The pairs are now
the float arithmetic they stand for (tledge.export.onnx_fakequant)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from tledge.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def qat_savedmodel(tmp_path_factory):
    rng = np.random.default_rng(0)

    class M(tf.Module):
        def __init__(self):
            self.k1 = tf.Variable(rng.normal(0, 0.3, (3, 3, 3, 8)).astype("float32"))
            self.k2 = tf.Variable(rng.normal(0, 0.3, (3, 3, 8, 8)).astype("float32"))
            self.k3 = tf.Variable(rng.normal(0, 0.3, (8, 2)).astype("float32"))

        @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32)])
        def __call__(self, x):
            y = tf.quantization.fake_quant_with_min_max_vars(x / 255.0, 0.0, 1.0)
            y = tf.quantization.fake_quant_with_min_max_vars(tf.nn.conv2d(y, self.k1, 1, "SAME"), -3.0, 3.0)
            y = tf.quantization.fake_quant_with_min_max_vars(tf.nn.conv2d(y, self.k2, 1, "SAME"), -6.0, 6.0)
            return {"scores": tf.nn.softmax(tf.matmul(tf.reduce_mean(y, axis=[1, 2]), self.k3))}
    m = M()
    folder = tmp_path_factory.mktemp("qat") / "qat_sm"
    tf.saved_model.save(m, str(folder), signatures={"serving_default": m.__call__})
    return folder


def test_fake_quant_pairs_are_float_arithmetic_in_the_fp32_onnx_file(qat_savedmodel, shapes_dataset, tmp_path):
    val = tmp_path / "val"
    for c in ("circle", "hstripes"):
        shutil.copytree(shapes_dataset / "val" / c, val / c)
    out = tmp_path / "e"
    assert main(["export", str(qat_savedmodel), "--out", str(out), "--val", str(val), "--preprocess", "raw",
                 "--formats", "onnx"]) == 0  # fp32's budget: the file computes the fake quantisation in float
    model = onnx.load(str(out / "model_fp32.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" not in ops and ops.count("Round") == 3
    x = np.random.default_rng(1).uniform(0, 255, (8, 16, 16, 3)).astype(np.float32)
    off = ort.SessionOptions()
    off.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    runs = [ort.InferenceSession(str(out / "model_fp32.onnx"), *opts, providers=["CPUExecutionProvider"])
            for opts in ((), (off,))]
    y = [s.run(None, {s.get_inputs()[0].name: x})[0] for s in runs]
    want = tf.saved_model.load(str(qat_savedmodel)).signatures["serving_default"](tf.constant(x))["scores"].numpy()
    assert np.abs(y[0] - y[1]).max() < 1e-6 and np.abs(y[0] - want).max() < 1e-4 and np.ptp(want[:, 0]) > 0.01
