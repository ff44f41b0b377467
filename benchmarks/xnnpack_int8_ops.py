"""Which int8 TFLite ops LiteRT's CPU delegate (XNNPACK) leaves out, cutting its graph into partitions: the evidence
for tledge.export.tflite.CPU_FLOAT_OPS.

Per op kind: a tiny net (Rescaling, two Conv2D each followed by the op, pooling, Dense) converted by tledge's int8
converter with every op int8, and with `--float` op types kept float; the XNNPACK partitions LiteRT makes of each
(1 = the whole graph delegated). Random weights: this measures structure, not accuracy. `--convnext` also times
ConvNeXt Tiny (random weights, 128 px) all-int8, with GELU float and with fp32, batch 1 in turns.

    python benchmarks/xnnpack_int8_ops.py [--float HARD_SWISH,GELU,PRELU] [--convnext]
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def kinds():
    import keras

    L, ops = keras.layers, keras.ops
    return {
        "gelu": lambda x: L.Activation("gelu")(x), "leaky_relu": lambda x: L.LeakyReLU(0.1)(x),
        "prelu": lambda x: L.PReLU(shared_axes=[1, 2])(x), "elu": lambda x: L.ELU()(x),
        "tanh": lambda x: L.Activation("tanh")(x), "sigmoid": lambda x: L.Activation("sigmoid")(x),
        "swish": lambda x: L.Activation("swish")(x), "hard_swish": lambda x: L.Activation("hard_swish")(x),
        "hard_sigmoid": lambda x: L.Activation("hard_sigmoid")(x), "relu6": lambda x: L.ReLU(6.0)(x),
        "layer_norm": lambda x: L.LayerNormalization()(x),
        "upsample_bilinear": lambda x: L.UpSampling2D(interpolation="bilinear")(x),
        "upsample_nearest": lambda x: L.UpSampling2D()(x), "concat": lambda x: L.Concatenate()([x, x * 0.5]),
        "max_pool": lambda x: L.MaxPooling2D(padding="same", strides=1)(x),
        "channel_softmax": lambda x: L.Softmax()(x), "mish": lambda x: x * ops.tanh(ops.softplus(x)),
        "exp": lambda x: ops.exp(-ops.abs(x)), "sqrt": lambda x: ops.sqrt(ops.abs(x) + 1.0),
        "transpose_conv": lambda x: L.Conv2DTranspose(8, 3, padding="same")(x),
        "separable_conv": lambda x: L.SeparableConv2D(8, 3, padding="same")(x),
        "pad_crop": lambda x: L.Cropping2D(1)(L.ZeroPadding2D(1)(x)),
    }


def partitions(data: bytes) -> tuple[int, dict]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data, num_threads=1)
    it.allocate_tensors()
    ops = collections.Counter(d["op_name"] for d in it._get_ops_details())
    return ops.pop("DELEGATE", 0), dict(ops)


def probe(make, float_ops) -> tuple[int, int, dict]:
    import keras
    import numpy as np
    import tensorflow as tf

    from tledge.export import tflite

    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = L.Rescaling(1 / 127.5, -1)(inp)
    for _ in range(2):
        x = make(L.Conv2D(8, 3, padding="same")(x))
    model = keras.Model(inp, L.Dense(3, activation="softmax")(L.GlobalAveragePooling2D()(x)))
    fn = tf.function(lambda t: model(t)).get_concrete_function(tf.TensorSpec([None, 32, 32, 3], tf.float32))
    calib = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype(np.float32)
    int8 = partitions(tflite.convert(fn, "int8", calib))
    kept = partitions(tflite.convert(fn, "int8", calib, float_ops=float_ops))
    return int8[0], kept[0], int8[1]


def convnext() -> None:
    import keras
    import numpy as np
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from tledge.export import tflite
    from tledge.runtime.bench import best_in_turns, one_image_ms

    model = keras.applications.ConvNeXtTiny(weights=None, input_shape=(128, 128, 3), classes=2)
    fn = tf.function(lambda t: model(t)).get_concrete_function(tf.TensorSpec([None, 128, 128, 3], tf.float32))
    calib = np.random.default_rng(0).uniform(0, 255, (8, 128, 128, 3)).astype(np.float32)
    files = {"fp32": tflite.convert(fn, "fp32"), "int8": tflite.convert(fn, "int8", calib),
             "int8, GELU float": tflite.convert(fn, "int8", calib, float_ops=("GELU",))}
    calls = {}
    for name, data in files.items():
        it = Interpreter(model_content=data, num_threads=2)
        it.allocate_tensors()
        i = it.get_input_details()[0]
        it.set_tensor(i["index"], np.zeros(i["shape"], i["dtype"]))
        calls[name] = lambda it=it: one_image_ms(lambda _: it.invoke(), np.zeros((1,)), runs=10, warmup=2)
    ms = best_in_turns(calls, 5)
    for name, data in files.items():
        print(f"ConvNeXt Tiny 128 px {name:18s} partitions {partitions(data)[0]:3d}  batch-1 {ms[name]:.1f} ms")


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from int8_onnx_kernels import cpu_line

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--float", default="HARD_SWISH,GELU,PRELU", help="op types kept float in the second file")
    ap.add_argument("--convnext", action="store_true")
    args = ap.parse_args(argv)
    float_ops = tuple(o for o in args.float.split(",") if o)
    print(cpu_line(), flush=True)
    print(f"| op | XNNPACK partitions, all int8 | with {', '.join(float_ops)} float | ops in the all-int8 file |")
    print("|---|---|---|---|")
    for name, make in kinds().items():
        int8, kept, ops = probe(make, float_ops)
        print(f"| {name} | {int8} | {kept} | {', '.join(sorted(ops))} |", flush=True)
    if args.convnext:
        convnext()
    return 0


if __name__ == "__main__":
    sys.exit(main())
