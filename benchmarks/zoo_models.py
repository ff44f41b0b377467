"""Zoo models with REAL ImageNet features rebuilt from Google's quantised Coral MobileNetV2 (issue 11).

../shared/assets has no float ImageNet weights for MobileNetV2 and there is no network, but
coral_tflite_classifiers/ holds Google's quantised ImageNet MobileNetV2 1.0 224 and MobileNet v1 0.5 160
(1001 classes, index 0 = background). Their weights, dequantised (scale * (q - zero_point), per channel where
the file has per-channel scales), are real ImageNet features. This module loads them into the Keras 3
application (`keras.applications.MobileNetV2(alpha=1.0, weights=None)`, `MobileNet(alpha=0.5)` at 160 px):
the .tflite folded every BatchNorm into its convolution's kernel and bias, so each Keras BN layer is set to
identity plus that bias (gamma 1, moving mean 0, moving variance 1 - epsilon, beta = the folded bias).

Caveat for int8 studies: the rebuilt kernels already lie on an int8 grid (the default source,
tf2_mobilenet_v2_1.0_224_ptq.tflite, has symmetric per-channel int8 weights, as tledge's exporter makes),
so weight rounding costs these models almost nothing; the activation quantisation is what they measure.

    python benchmarks/zoo_models.py verify [--arch mnv2] [--source tf1-qat] [--images 200]  # float vs Coral
    python benchmarks/zoo_models.py hymenoptera [--arch mnv1-0.5-160] [--cache DIR]  # build, val accuracy
    python benchmarks/zoo_models.py imagenet [--arch mnv2] [--cache DIR]  # the 1000-class float model
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ASSETS = Path(os.environ.get("TLEDGE_SHARED_ASSETS", REPO.parent / "shared" / "assets"))
CORAL = ASSETS / "coral_tflite_classifiers"
DEFAULT_CACHE = Path("/tmp/tledge-int8-zoo-mnv2")


@dataclass(frozen=True)
class Arch:
    """A Keras application whose every convolution is followed by batch norm, and Coral files that hold it."""

    key: str
    application: str  # keras.applications.<name>
    alpha: float
    size: int
    sources: dict  # source name -> .tflite path; the first is the default


ARCHES = {a.key: a for a in (
    Arch("mnv2", "MobileNetV2", 1.0, 224, {
        "tf2-ptq": CORAL / "tf2_mobilenet_v2_1.0_224_ptq.tflite",  # per-channel int8 weights (a float model, PTQ)
        "tf1-qat": CORAL / "mobilenet_v2_1.0_224_quant.tflite"}),  # per-tensor uint8 (quantisation-aware)
    Arch("mnv1-0.5-160", "MobileNet", 0.5, 160, {
        "tf1-qat": CORAL / "mobilenet_v1_0.5_160_quant.tflite"}),
)}


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


def from_coral(arch: Arch, source: str | None = None, pooling: str | None = "avg"):
    """(Keras 3 backbone, no top, inputs in [-1, 1]; (top kernel [features, 1001], top bias [1001]))."""
    import keras

    path = arch.sources[source or next(iter(arch.sources))]
    convs = coral_convolutions(path)
    model = getattr(keras.applications, arch.application)(
        input_shape=(arch.size, arch.size, 3), alpha=arch.alpha, include_top=False, weights=None, pooling=pooling)
    layers = model.layers
    pairs = [(layer, layers[i + 1]) for i, layer in enumerate(layers)
             if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    if len(pairs) != len(convs) - 1:
        raise ValueError(f"{path.name}: {len(convs)} convolutions, the Keras backbone has {len(pairs)} + top")
    for (conv, bn), (op, kernel, bias) in zip(pairs, convs):
        if not isinstance(bn, keras.layers.BatchNormalization):
            raise ValueError(f"{conv.name} is not followed by batch norm ({bn.name})")
        k = kernel[0][..., None] if op == "DEPTHWISE_CONV_2D" else kernel.transpose(1, 2, 3, 0)
        if tuple(conv.kernel.shape) != k.shape:
            raise ValueError(f"{conv.name}: Keras kernel {tuple(conv.kernel.shape)} vs {op} {k.shape}")
        conv.set_weights([k])
        n = bias.size  # folded batch norm: identity (gamma 1, mean 0, variance + epsilon = 1) plus the bias
        bn.set_weights([np.ones(n, np.float32), bias, np.zeros(n, np.float32),
                        np.full(n, 1.0 - bn.epsilon, np.float32)])
    op, kernel, bias = convs[-1]
    return model, (kernel[:, 0, 0, :].T.copy(), bias)


def with_pixels_input(backbone, head_layers, name: str, size: int):
    """Raw pixels (float32 0..255) -> tledge_preprocess (tf mode, built-in Rescaling) -> backbone -> head."""
    import keras

    from tledge.layers import preprocess_layer

    inp = keras.Input((size, size, 3), dtype="float32", name="pixels")
    x = backbone(preprocess_layer("tf")(inp), training=False)
    for layer in head_layers:
        x = layer(x)
    return keras.Model(inp, x, name=name)


def imagenet_model(out: Path, arch: str = "mnv2", source: str | None = None) -> Path:
    """The float backbone with the Coral file's own classifier, background class dropped (1000 classes)."""
    import keras

    a = ARCHES[arch]
    path = out / f"imagenet_{arch}_coral.keras"
    if path.is_file():
        return path
    backbone, (kernel, bias) = from_coral(a, source)
    dense = keras.layers.Dense(1000, activation="softmax", name="predictions")
    model = with_pixels_input(backbone, [dense], f"{arch}_coral_imagenet".replace(".", "_").replace("-", "_"), a.size)
    dense.set_weights([kernel[:, 1:], bias[1:]])
    out.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def prepared(files, size: int) -> np.ndarray:
    """Raw uint8 pixels as the export's contract prepares them (area resize, stretch), as float32."""
    from tledge.contract import Contract

    c = Contract(size, size, norm="tf", baked=True)
    return np.stack([c.prepare(f) for f in files]).astype(np.float32)


def _features(backbone, cache: Path, arch: Arch, split: str):
    from tledge.images import labelled_images

    f = cache / f"features_{arch.key}_{split}.npz"
    if f.is_file():
        d = np.load(f)
        return d["x"], d["y"], [str(n) for n in d["names"]]
    files, y, names = labelled_images(ASSETS / "hymenoptera_data" / split)
    x = backbone.predict(prepared(files, arch.size) / 127.5 - 1.0, batch_size=16, verbose=0)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(f, x=x, y=np.asarray(y), names=np.asarray(names))
    return x, np.asarray(y), list(names)


def hymenoptera_model(cache: Path = DEFAULT_CACHE, arch: str = "mnv2", seed: int = 0, epochs: int = 30,
                      source: str | None = None) -> Path:
    """Frozen Coral features + Dropout 0.2 + Dense(2, softmax) trained on hymenoptera_data/train (the frozen
    features computed once, the head fitted on them: Adam 1e-3, batch 32), preprocessing baked in as
    `tledge train` saves it. Writes model.keras and keras_val.json (the head's val accuracy)."""
    import keras

    a = ARCHES[arch]
    out = cache / f"hym-{arch}-s{seed}"
    path = out / "model.keras"
    if path.is_file():
        return path
    backbone, _ = from_coral(a, source)
    backbone.trainable = False
    x_train, y_train, names = _features(backbone, cache, a, "train")
    x_val, y_val, _ = _features(backbone, cache, a, "val")
    keras.utils.set_random_seed(seed)
    drop = keras.layers.Dropout(0.2, name="head_dropout")
    dense = keras.layers.Dense(len(names), activation="softmax", dtype="float32", name="head")
    probe = keras.Sequential([keras.Input((x_train.shape[1],)), drop, dense])
    probe.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    probe.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    val_acc = float(np.mean(np.argmax(probe.predict(x_val, verbose=0), 1) == y_val))
    name = f"hym_{arch}_s{seed}".replace(".", "_").replace("-", "_")
    model = with_pixels_input(backbone, [drop, dense], name, a.size)
    out.mkdir(parents=True, exist_ok=True)
    model.save(path)
    (out / "keras_val.json").write_text(json.dumps({"val_accuracy": val_acc, "val_images": int(y_val.size),
                                                    "classes": names, "epochs": epochs, "seed": seed}))
    return path


@dataclass(frozen=True)
class Scratch:
    """A Keras application trained from random init on hymenoptera (no ImageNet weights exist offline)."""

    key: str
    application: str  # keras.applications.<name>
    backbone: str  # tledge.backbones name: its preprocessing mode is baked as `tledge train` does
    size: int
    epochs: int
    bn_momentum: float | None = None  # None: the application's own


SCRATCH = {s.key: s for s in (
    Scratch("effb0", "EfficientNetB0", "efficientnet_b0", 128, 120),
    Scratch("resnet50", "ResNet50", "resnet50", 128, 50),
    Scratch("mnv3s", "MobileNetV3Small", "mobilenet_v3_small", 128, 80, 0.9),
)}


def scratch_network(spec: Scratch, n_classes: int = 2):
    """pixels (float32 0..255) -> tledge_preprocess (the backbone's mode) -> application (weights=None, no
    top, avg pooling) -> Dropout 0.2 -> Dense softmax, as `tledge train` assembles it. EfficientNet's own
    Normalization layer keeps weights=None's mean 0 / variance 1: setting its weights after build would
    not reach its computation (Keras snapshots them at build; only loading calls finalize_state), so the
    trained model and the saved one would differ."""
    import keras

    from tledge import backbones
    from tledge.layers import preprocess_layer

    backbone = getattr(keras.applications, spec.application)(
        input_shape=(spec.size, spec.size, 3), include_top=False, weights=None, pooling="avg")
    if spec.bn_momentum is not None:  # MobileNetV3's 0.999 leaves the moving statistics unconverged in 1280 steps
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = spec.bn_momentum
    inp = keras.Input((spec.size, spec.size, 3), dtype="float32", name="pixels")
    x = backbone(preprocess_layer(backbones.get(spec.backbone).mode)(inp))
    x = keras.layers.Dropout(0.2, name="head_dropout")(x)
    out = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="head")(x)
    return keras.Model(inp, out, name=f"hym_{spec.key}_scratch")


def augmenter(seed: int):
    """Training-only augmentation: horizontal flips and random crops (zoom in up to 25 %, shift up to 10 %)."""
    import keras

    return keras.Sequential([keras.layers.RandomFlip("horizontal", seed=seed),
                             keras.layers.RandomZoom((-0.25, 0.0), seed=seed + 1),
                             keras.layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 2)],
                            name="augment")


def confidence(probs: np.ndarray) -> dict:
    """The distribution of the top-1 probability (a model whose outputs sit near 0.5 proves nothing)."""
    top = probs.max(axis=1)
    return {"top1_prob_quantiles": {q: round(float(np.quantile(top, q / 100)), 3) for q in (5, 25, 50, 75, 95)},
            "share_top1_prob_ge_0.9": round(float(np.mean(top >= 0.9)), 3),
            "share_top1_prob_lt_0.6": round(float(np.mean(top < 0.6)), 3)}


def scratch_model(cache: Path = DEFAULT_CACHE, arch: str = "effb0", seed: int = 0, epochs: int | None = None,
                  size: int | None = None) -> Path:
    """The whole network trained from random init on hymenoptera_data/train (245 photos): Adam 1e-3 with
    cosine decay, batch 16, flips + random crops, seeded. Writes model.keras and keras_val.json (val accuracy,
    top-1 probability distribution on val, seconds)."""
    import time

    import keras

    from tledge.images import labelled_images

    spec = SCRATCH[arch]
    spec = Scratch(spec.key, spec.application, spec.backbone, size or spec.size, epochs or spec.epochs,
                   spec.bn_momentum)
    out = cache / f"hym-{arch}-{spec.size}-s{seed}"
    path = out / "model.keras"
    if path.is_file():
        return path
    files, y_train, names = labelled_images(ASSETS / "hymenoptera_data" / "train")
    val_files, y_val, _ = labelled_images(ASSETS / "hymenoptera_data" / "val")
    x_train, x_val = prepared(files, spec.size), prepared(val_files, spec.size)
    y_train, y_val = np.asarray(y_train), np.asarray(y_val)
    keras.utils.set_random_seed(seed)
    model = scratch_network(spec, len(names))
    trainer = keras.Sequential([keras.Input((spec.size, spec.size, 3)), augmenter(seed), model])
    steps = spec.epochs * int(np.ceil(len(x_train) / 16))
    trainer.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, steps)),
                    "sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    hist = trainer.fit(x_train, y_train, epochs=spec.epochs, batch_size=16, verbose=2)
    seconds = time.perf_counter() - start
    probs = model.predict(x_val, batch_size=32, verbose=0)
    info = {"val_accuracy": float(np.mean(np.argmax(probs, 1) == y_val)), "val_images": int(y_val.size),
            "train_accuracy_last_epoch": float(hist.history["accuracy"][-1]), **confidence(probs),
            "classes": names, "epochs": spec.epochs, "size": spec.size, "seed": seed,
            "train_seconds": round(seconds), "application": spec.application}
    out.mkdir(parents=True, exist_ok=True)
    model.save(path)
    (out / "keras_val.json").write_text(json.dumps(info))
    return path


def verify(arch: str = "mnv2", source: str | None = None, n_images: int = 200) -> dict:
    """Float rebuild + the file's own 1001-way classifier vs the Coral .tflite: cat.bmp and top-1 agreement."""
    from ai_edge_litert.interpreter import Interpreter

    a = ARCHES[arch]
    path = a.sources[source or next(iter(a.sources))]
    backbone, (kernel, bias) = from_coral(a, source)
    src = ASSETS / "imagenet_val1300"
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.parent != src)[::6][:n_images]
    truth = np.asarray([int(p.parent.name.split("_")[0]) + 1 for p in files])  # 1001-way index
    x = prepared([CORAL / "test_images" / "cat.bmp", *files], a.size)
    float_top = np.argmax(backbone.predict(x / 127.5 - 1.0, batch_size=16, verbose=0) @ kernel + bias, 1)
    it = Interpreter(str(path), num_threads=2)
    it.allocate_tensors()
    i_in, i_out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    coral_top = []
    for img in x.astype(np.uint8):
        it.set_tensor(i_in, img[None])
        it.invoke()
        coral_top.append(int(np.argmax(it.get_tensor(i_out)[0])))
    coral_top = np.asarray(coral_top)
    labels = (CORAL / "imagenet_labels.txt").read_text().splitlines()
    return {"source": path.name, "cat_float": labels[float_top[0]], "cat_coral": labels[coral_top[0]],
            "images": len(files), "top1_agreement": float(np.mean(float_top[1:] == coral_top[1:])),
            "float_top1": float(np.mean(float_top[1:] == truth)), "coral_top1": float(np.mean(coral_top[1:] == truth))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("verify", "hymenoptera", "imagenet", "scratch"))
    ap.add_argument("--arch", choices=tuple(ARCHES), default="mnv2")
    ap.add_argument("--source", help="a Coral file of the arch (mnv2: tf2-ptq, the default, or tf1-qat)")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scratch", choices=tuple(SCRATCH), default="effb0", help="scratch: the application")
    ap.add_argument("--epochs", type=int, help="scratch: epochs (default: the arch's)")
    ap.add_argument("--size", type=int, help="scratch: input size (default: the arch's)")
    args = ap.parse_args(argv)
    if args.source and args.source not in ARCHES[args.arch].sources:
        ap.error(f"--source {args.source}: {args.arch} has {', '.join(ARCHES[args.arch].sources)}")
    if args.what == "verify":
        print(json.dumps(verify(args.arch, args.source, args.images), indent=1))
    elif args.what == "hymenoptera":
        path = hymenoptera_model(args.cache, args.arch, args.seed, source=args.source)
        print(path, (path.parent / "keras_val.json").read_text())
    elif args.what == "scratch":
        path = scratch_model(args.cache, args.scratch, args.seed, args.epochs, args.size)
        print(path, (path.parent / "keras_val.json").read_text())
    else:
        print(imagenet_model(args.cache / f"imagenet-{args.arch}", args.arch, args.source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
