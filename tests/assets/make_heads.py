"""Regenerate tests/assets/heads/: four tiny float TFLite classifiers "made elsewhere" (no metadata), whose outputs
differ only in the op that makes them, for tests of how the runtime reads a foreign file's output kind:

    python -m tests.assets.make_heads     # from the repository root, with TensorFlow installed

pixels [1, 16, 16, 3] float -> mean -> x * k + b (a FULLY_CONNECTED with 1 or 3 outputs, its logits in 0..1 for
raw 0..255 pixels) -> nothing (logit1, logits3), LOGISTIC (sigmoid1) or SOFTMAX (softmax3); logits3_int8: logits3 in
full int8 (int8 I/O: its output quantisation spans about 0..1, so only its op says it holds logits). About 1 KB each.
"""
from __future__ import annotations

from pathlib import Path

OUT = Path(__file__).resolve().parent / "heads"
K = {1: [[0.002]], 3: [[0.001, 0.002, 0.003]]}


def convert(outputs: int, head: str, quantised: bool = False) -> bytes:
    import numpy as np
    import tensorflow as tf

    k, b = tf.constant(np.array(K[outputs], np.float32)), tf.constant(np.full(outputs, 0.1, np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 3], tf.float32, name="pixels")])
    def model(x):
        y = tf.matmul(tf.reshape(tf.reduce_mean(x, axis=[1, 2, 3]), [1, 1]), k) + b
        return {"scores": {"none": tf.identity, "sigmoid": tf.sigmoid, "softmax": tf.nn.softmax}[head](y)}

    conv = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    if quantised:  # full int8 with int8 I/O, as ai-edge-torch's and onnx2tf's integer files are
        rng = np.random.default_rng(0)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([rng.uniform(0, 255, (1, 16, 16, 3)).astype(np.float32)]
                                               for _ in range(16))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = tf.int8
    return conv.convert()


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name, outputs, head in (("logit1", 1, "none"), ("sigmoid1", 1, "sigmoid"), ("logits3", 3, "none"),
                                ("softmax3", 3, "softmax")):
        (OUT / f"{name}.tflite").write_bytes(convert(outputs, head))
    (OUT / "logits3_int8.tflite").write_bytes(convert(3, "none", quantised=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
