"""Zoo models with REAL ImageNet features rebuilt from Google's quantised Coral MobileNetV2 (issue 11).

../shared/assets has no float ImageNet weights for MobileNetV2 and there is no network, but
coral_tflite_classifiers/ holds Google's quantised ImageNet MobileNetV2 1.0 224 (1001 classes, index 0 =
background). Its weights, dequantised (scale * (q - zero_point), per channel where the file has per-channel
scales), are real ImageNet features. This module loads them into `keras.applications.MobileNetV2(alpha=1.0,
weights=None)` (Keras 3): the .tflite folded every BatchNorm into its convolution's kernel and bias, so each
Keras BN layer is set to identity plus that bias (gamma 1, moving mean 0, moving variance 1 - epsilon,
beta = the folded bias).

Caveat for int8 studies: the rebuilt kernels already lie on an int8 grid (the default source,
tf2_mobilenet_v2_1.0_224_ptq.tflite, has symmetric per-channel int8 weights, as tledge's exporter makes),
so weight rounding costs these models almost nothing; the activation quantisation is what they measure.

    python benchmarks/zoo_models.py verify [--source FILE] [--images 200]   # float vs Coral top-1
    python benchmarks/zoo_models.py hymenoptera [--cache DIR]              # build + report val accuracy
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ASSETS = REPO.parent / "shared" / "assets"
CORAL = ASSETS / "coral_tflite_classifiers"
MNV2_SOURCES = {"tf2-ptq": CORAL / "tf2_mobilenet_v2_1.0_224_ptq.tflite",  # per-channel int8 weights
                "tf1-qat": CORAL / "mobilenet_v2_1.0_224_quant.tflite"}  # per-tensor uint8 (quantisation-aware)
DEFAULT_CACHE = Path("/tmp/tledge-int8-zoo-mnv2")
SIZE = 224


def _dequantise(d: dict, raw: np.ndarray) -> np.ndarray:
    q = d["quantization_parameters"]
    scales, zps = np.asarray(q["scales"], np.float64), np.asarray(q["zero_points"], np.float64)
    axis = q["quantized_dimension"]
    if scales.size == 0:
        return raw.astype(np.float32)
    shape = [1] * raw.ndim
    if scales.size > 1:
        shape[axis] = scales.size
    return ((raw.astype(np.float64) - zps.reshape(shape)) * scales.reshape(shape)).astype(np.float32)


def coral_convolutions(path: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(op, kernel, bias) for every CONV_2D / DEPTHWISE_CONV_2D in op order, dequantised, TFLite layout
    (conv [out, kh, kw, in], depthwise [1, kh, kw, channels])."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    details = {d["index"]: d for d in it.get_tensor_details()}
    out = []
    for op in it._get_ops_details():  # noqa: SLF001 - the interpreter's only op listing
        if op["op_name"] not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        w, b = op["inputs"][1], op["inputs"][2]
        out.append((op["op_name"], _dequantise(details[w], it.get_tensor(w)),
                    _dequantise(details[b], it.get_tensor(b))))
    return out


def mobilenet_v2_from_coral(source: Path = MNV2_SOURCES["tf2-ptq"], pooling: str | None = "avg"):
    """(Keras 3 MobileNetV2 1.0 backbone, no top, inputs in [-1, 1]; (top kernel [1280, 1001], top bias [1001]))."""
    import keras

    convs = coral_convolutions(source)
    model = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=1.0, include_top=False,
                                           weights=None, pooling=pooling)
    layers = model.layers
    pairs = [(layer, layers[i + 1]) for i, layer in enumerate(layers)
             if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    if len(pairs) != len(convs) - 1:
        raise ValueError(f"{source.name}: {len(convs)} convolutions, the Keras backbone has {len(pairs)} + top")
    for (conv, bn), (op, kernel, bias) in zip(pairs, convs):
        if not isinstance(bn, keras.layers.BatchNormalization):
            raise ValueError(f"{conv.name} is not followed by batch norm ({bn.name})")
        k = kernel[0][..., None] if op == "DEPTHWISE_CONV_2D" else kernel.transpose(1, 2, 3, 0)
        if tuple(conv.kernel.shape) != k.shape:
            raise ValueError(f"{conv.name}: Keras kernel {tuple(conv.kernel.shape)} vs {op} {k.shape}")
        conv.set_weights([k])
        n = bias.size
        bn.set_weights([np.ones(n, np.float32), bias, np.zeros(n, np.float32),
                        np.full(n, 1.0 - bn.epsilon, np.float32)])
    op, kernel, bias = convs[-1]
    return model, (kernel[:, 0, 0, :].T.copy(), bias)


def with_pixels_input(backbone, head_layers, name: str):
    """Raw pixels (float32 0..255) -> tledge_preprocess (tf mode, built-in Rescaling) -> backbone -> head."""
    import keras

    from tledge.layers import preprocess_layer

    inp = keras.Input((SIZE, SIZE, 3), dtype="float32", name="pixels")
    x = backbone(preprocess_layer("tf")(inp), training=False)
    for layer in head_layers:
        x = layer(x)
    return keras.Model(inp, x, name=name)


def imagenet_mobilenet_v2(out: Path, source: Path = MNV2_SOURCES["tf2-ptq"]) -> Path:
    """The float MobileNetV2 with the Coral file's own classifier, background class dropped (1000 classes)."""
    import keras

    path = out / "imagenet_mobilenet_v2_coral.keras"
    if path.is_file():
        return path
    backbone, (kernel, bias) = mobilenet_v2_from_coral(source)
    dense = keras.layers.Dense(1000, activation="softmax", name="predictions")
    model = with_pixels_input(backbone, [dense], "mobilenet_v2_coral_imagenet")
    dense.set_weights([kernel[:, 1:], bias[1:]])
    out.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def prepared(files) -> np.ndarray:
    """Raw uint8 pixels as the export's contract prepares them (area resize, stretch), as float32."""
    from tledge.contract import Contract

    c = Contract(SIZE, SIZE, norm="tf", baked=True)
    return np.stack([c.prepare(f) for f in files]).astype(np.float32)


def _features(backbone, cache: Path, split: str):
    from tledge.images import labelled_images

    f = cache / f"features_{split}.npz"
    if f.is_file():
        d = np.load(f)
        return d["x"], d["y"], [str(n) for n in d["names"]]
    files, y, names = labelled_images(ASSETS / "hymenoptera_data" / split)
    x = backbone.predict(prepared(files) / 127.5 - 1.0, batch_size=16, verbose=0)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(f, x=x, y=np.asarray(y), names=np.asarray(names))
    return x, np.asarray(y), list(names)


def hymenoptera_mobilenet_v2(cache: Path = DEFAULT_CACHE, seed: int = 0, epochs: int = 30,
                             source: Path = MNV2_SOURCES["tf2-ptq"]) -> Path:
    """Frozen Coral MobileNetV2 features + Dropout 0.2 + Dense(2, softmax) trained on hymenoptera_data/train
    (the frozen features computed once, the head fitted on them: Adam 1e-3, batch 32), preprocessing baked
    in as `tledge train` saves it. Writes model.keras and keras_val.json (the head's val accuracy)."""
    import keras

    out = cache / f"hym-mnv2-s{seed}"
    path = out / "model.keras"
    if path.is_file():
        return path
    backbone, _ = mobilenet_v2_from_coral(source)
    backbone.trainable = False
    x_train, y_train, names = _features(backbone, cache, "train")
    x_val, y_val, _ = _features(backbone, cache, "val")
    keras.utils.set_random_seed(seed)
    drop = keras.layers.Dropout(0.2, name="head_dropout")
    dense = keras.layers.Dense(len(names), activation="softmax", dtype="float32", name="head")
    probe = keras.Sequential([keras.Input((x_train.shape[1],)), drop, dense])
    probe.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    probe.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    val_acc = float(np.mean(np.argmax(probe.predict(x_val, verbose=0), 1) == y_val))
    model = with_pixels_input(backbone, [drop, dense], f"hym_mobilenet_v2_s{seed}")
    out.mkdir(parents=True, exist_ok=True)
    model.save(path)
    (out / "keras_val.json").write_text(json.dumps({"val_accuracy": val_acc, "val_images": int(y_val.size),
                                                    "classes": names, "epochs": epochs, "seed": seed}))
    return path


def verify(source: Path, n_images: int = 200) -> dict:
    """Float rebuild + the file's own 1001-way classifier vs the Coral .tflite: cat.bmp and top-1 agreement."""
    import keras
    from ai_edge_litert.interpreter import Interpreter

    backbone, (kernel, bias) = mobilenet_v2_from_coral(source)
    src = ASSETS / "imagenet_val1300"
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.parent != src)[::6][:n_images]
    truth = np.asarray([int(p.parent.name.split("_")[0]) + 1 for p in files])  # 1001-way index
    cat = CORAL / "test_images" / "cat.bmp"
    x = prepared([cat, *files])
    feats = backbone.predict(x / 127.5 - 1.0, batch_size=16, verbose=0)
    float_top = np.argmax(feats @ kernel + bias, 1)
    it = Interpreter(str(source), num_threads=2)
    it.allocate_tensors()
    i_in, i_out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    coral_top = []
    for img in x.astype(np.uint8):
        it.set_tensor(i_in, img[None])
        it.invoke()
        coral_top.append(int(np.argmax(it.get_tensor(i_out)[0])))
    coral_top = np.asarray(coral_top)
    labels = (CORAL / "imagenet_labels.txt").read_text().splitlines()
    del keras
    return {"source": source.name, "cat_float": labels[float_top[0]], "cat_coral": labels[coral_top[0]],
            "images": len(files), "top1_agreement": float(np.mean(float_top[1:] == coral_top[1:])),
            "float_top1": float(np.mean(float_top[1:] == truth)), "coral_top1": float(np.mean(coral_top[1:] == truth))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("verify", "hymenoptera", "imagenet"))
    ap.add_argument("--source", choices=tuple(MNV2_SOURCES), default="tf2-ptq")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    source = MNV2_SOURCES[args.source]
    if args.what == "verify":
        print(json.dumps(verify(source, args.images), indent=1))
    elif args.what == "hymenoptera":
        path = hymenoptera_mobilenet_v2(args.cache, args.seed, source=source)
        print(path, (path.parent / "keras_val.json").read_text())
    else:
        print(imagenet_mobilenet_v2(args.cache / "imagenet-mnv2", source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
