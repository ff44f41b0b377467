"""Keras layers that bake a contract's preprocessing into a model graph.

`preprocess_layer()` is what tledge saves: one *built-in* Keras layer named `tledge_preprocess`, so a
saved model loads with plain `keras.models.load_model` in a Python that never imported tledge (Keras 3
does not import the module of a registered custom object):

    tf / scale / torch / custom / raw  ->  Rescaling(scale, offset), per-channel lists where needed
    caffe (3 channels)                 ->  a frozen 1x1 Conv2D: permutation kernel (RGB->BGR) + bias (-mean)

Both compute `x * scale + offset` (the conv: `x_c * 1 + 0 + 0 + bias`) in float32, bit-identical to the
`Preprocess` layer. `baked_norm(layer)` recognises such a layer (and the older `Preprocess`, still
registered so models saved before keep loading) from its class, name and config / weights.
"""
from __future__ import annotations

import numpy as np

from tledge._deps import require

keras = require("keras", purpose="the preprocessing layer")

BAKED_NAME = "tledge_preprocess"  # the name tledge gives the built-in layer it bakes


def affine(mode: str, mean=None, std=None, channels: int = 3) -> tuple[list[float], list[float], bool]:
    """(scale, offset, flip) with normalised = flip(x) * scale + offset, in the model's channel order."""
    from tledge.contract import ColorOrder, Contract, Norm

    mode = Norm(mode).value
    c = Contract(height=1, width=1, channels=int(channels),
                 color=ColorOrder.GRAY if int(channels) == 1 else ColorOrder.RGB,
                 norm=mode, baked=False, mean=mean, std=std)
    m, s = c.mean_std()
    return [float(1.0 / v) for v in s], [float(-mv / sv) for mv, sv in zip(m, s)], mode == "caffe" and channels == 3


@keras.saving.register_keras_serializable(package="tledge")
class Preprocess(keras.layers.Layer):
    """Raw pixels (0..255, float or integer) -> the backbone's normalised input. Kept to read models saved
    before tledge baked built-in layers (see the module doc); new models use `preprocess_layer`."""

    def __init__(self, mode: str = "tf", mean=None, std=None, channels: int = 3, **kwargs):
        super().__init__(**kwargs)
        from tledge.contract import Norm

        self.mode = Norm(mode).value
        self.channels = int(channels)
        self.mean = None if mean is None else [float(v) for v in mean]
        self.std = None if std is None else [float(v) for v in std]
        self._scale, self._offset, self._flip = affine(self.mode, self.mean, self.std, self.channels)

    def call(self, x):
        ops = keras.ops
        x = ops.cast(x, "float32")
        if self._flip:  # RGB -> BGR and the map as one 1x1 convolution, as preprocess_layer bakes it: as slices +
            # concat the int8 file's input took the concat's range (scale 1.49, zero point 83), not raw pixels
            kernel = np.flip(np.diag(np.asarray(self._scale, np.float32)), 0).reshape(1, 1, 3, 3)
            return ops.conv(x, ops.convert_to_tensor(kernel, "float32"), padding="valid") + \
                ops.convert_to_tensor(self._offset, "float32")
        if self.mode == "raw":
            return x
        return x * ops.convert_to_tensor(self._scale, "float32") + ops.convert_to_tensor(self._offset, "float32")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        cfg = super().get_config()
        cfg.update(mode=self.mode, mean=self.mean, std=self.std, channels=self.channels)
        return cfg


CUSTOM_OBJECTS = {"Preprocess": Preprocess, "tledge>Preprocess": Preprocess}


def preprocess_layer(mode: str, mean=None, std=None, channels: int = 3, name: str = BAKED_NAME):
    """A built-in Keras layer (float32, not trainable) that normalises raw pixels like `Preprocess`."""
    scale, offset, flip = affine(mode, mean, std, channels)
    if flip:
        conv = keras.layers.Conv2D(3, 1, use_bias=True, trainable=False, dtype="float32", name=name)
        conv.build((None, None, None, 3))
        kernel = np.zeros((1, 1, 3, 3), np.float32)
        for out_c, in_c in enumerate((2, 1, 0)):
            kernel[0, 0, in_c, out_c] = 1.0
        conv.set_weights([kernel, np.asarray(offset, np.float32)])  # caffe: scale is 1
        return conv
    same = len(set(scale)) == 1 and len(set(offset)) == 1
    return keras.layers.Rescaling(scale[0] if same else scale, offset[0] if same else offset,
                                  dtype="float32", trainable=False, name=name)


def for_contract(contract, name: str = BAKED_NAME):
    return preprocess_layer(contract.norm.value, contract.mean, contract.std, contract.channels, name=name)


def baked_norm(layer) -> tuple[str, list[float] | None, list[float] | None] | None:
    """(mode, mean, std) of a baked preprocessing layer, or None when `layer` is not one. mean/std are
    given for `custom` (in the model's channel order), None for the named modes."""
    kind = type(layer).__name__
    if kind == "Preprocess" and hasattr(layer, "mode"):
        return layer.mode, layer.mean, layer.std
    if getattr(layer, "name", None) != BAKED_NAME:
        return None
    if kind == "Rescaling":
        cfg = layer.get_config()
        try:
            scale = np.asarray(cfg.get("scale", 1.0), np.float64).reshape(-1)
            offset = np.asarray(cfg.get("offset", 0.0), np.float64).reshape(-1)
        except (TypeError, ValueError):
            return None
        channels = _channels(layer)
        if channels is None or np.any(scale == 0) or {scale.size, offset.size} - {1, channels}:
            return None
        return _match(np.broadcast_to(scale, channels), np.broadcast_to(offset, channels), channels, flip=False)
    if kind == "Conv2D":
        return _conv_norm(layer)
    return None


# layers that hand images through unchanged at inference (tf.keras' data_augmentation, dropout)
# and geometry on raw pixels before the normalisation (a Keras guide's Resizing, then Rescaling: the model still
# takes raw pixels and normalises them itself)
PASS_THROUGH = frozenset({"InputLayer", "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation",
                          "RandomContrast", "RandomBrightness", "Dropout", "GaussianNoise", "Resizing",
                          "CenterCrop", "RandomCrop", "Cropping2D", "Identity", "RandomHue", "RandomSaturation",
                          "RandomGrayscale", "RandomSharpness", "RandomPosterization", "RandomColorDegeneration"})


def input_rescaling(model) -> str | None:
    """The mode of the Rescaling / Normalization layers a model applies to its input before anything else
    (through PASS_THROUGH layers and into nested models): `Rescaling(1 / 127.5, offset=-1)`, or tf.keras 2's
    `preprocess_input` read as Rescaling, is `tf`; EfficientNet's `Rescaling(1 / 255)` + `Normalization` is
    `torch` with ImageNet statistics, `scale` with the untrained ones. A chain with a Rescaling whose map is
    no named mode is `raw` (the model takes raw pixels and normalises them its own way). None when the first
    computation is anything else, when a lone Normalization is no named mode (it may expect 0..1 input), or
    when the chain is not a per-channel affine map."""
    shape = getattr(model, "inputs", None) and model.inputs[0].shape
    if not shape or not shape[-1]:
        return None
    chain = []
    for layer in _in_order(model):
        kind = type(layer).__name__
        if kind in PASS_THROUGH:
            continue
        if kind not in ("Rescaling", "Normalization"):
            break
        chain.append(layer)
    else:
        return None
    c = int(shape[-1])
    mapped = _probe_affine(chain, c) if chain else None
    if mapped is None:
        return None
    name = _match(mapped[0], mapped[1], c, flip=False)[0]
    if name != "custom":
        return name
    return "raw" if any(type(layer).__name__ == "Rescaling" for layer in chain) else None


def affine_mode(scale: np.ndarray, offset: np.ndarray, channels: int, *, flip: bool = False) -> str | None:
    """The named mode of a per-channel map `x * scale + offset` (after reversing the channels when `flip`) at a
    model's input, read from a graph (tledge.export.graphprep); None for a map that is no named mode: a graph's
    `x * 2 - 1` may expect 0..1 input (TF-Hub's models do), which only the user knows."""
    found = _match(np.asarray(scale, np.float64), np.asarray(offset, np.float64), channels, flip=flip)
    return None if found is None or found[0] in ("custom", "raw") else found[0]


def _probe_affine(chain, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, offset) per channel of the layers run in order on constant images 0, 1 and 255 (inference
    mode), or None when they are no per-channel affine map. The scale is read over 0..255, where float32
    cancellation costs least."""
    x = np.zeros((3, 1, 1, channels), np.float32)
    x[1], x[2] = 1.0, 255.0
    try:
        for layer in chain:
            x = layer(x, training=False)
        y = np.asarray(keras.ops.convert_to_numpy(x), np.float64).reshape(3, channels)
    except Exception:  # noqa: BLE001 - a layer that cannot take the probe is no simple per-channel map
        return None
    offset, scale = y[0], (y[2] - y[0]) / 255.0
    if not np.all(np.isfinite(y)) or not np.allclose(y[1], offset + scale, rtol=1e-4, atol=1e-5):
        return None
    return scale, offset


def _in_order(model):
    for layer in getattr(model, "layers", []):
        if type(layer).__name__ in ("Sequential", "Functional") and hasattr(layer, "layers"):
            yield from _in_order(layer)
        else:
            yield layer


def _channels(layer) -> int | None:
    try:
        shape = layer.input.shape if hasattr(layer, "input") else None
    except Exception:  # noqa: BLE001 - a layer used twice has no single input
        shape = None
    return int(shape[-1]) if shape is not None and shape[-1] else None


def _conv_norm(layer):
    w = layer.get_weights()
    if len(w) != 2 or w[0].shape != (1, 1, 3, 3):
        return None
    perm = np.zeros((3, 3), np.float32)
    perm[2, 0] = perm[1, 1] = perm[0, 2] = 1.0
    if not np.array_equal(w[0][0, 0], perm):
        return None
    return _match(np.ones(3), np.asarray(w[1], np.float64), 3, flip=True)


def _match(scale: np.ndarray, offset: np.ndarray, channels: int, *, flip: bool):
    """The named mode whose affine map this is (within float32 rounding), else custom (flip: None)."""
    for mode in ("caffe", "tf", "torch", "scale", "raw"):
        s, o, f = affine(mode, channels=channels)
        if f == flip and np.allclose(scale, s, rtol=1e-6, atol=0) and np.allclose(offset, o, rtol=1e-6, atol=1e-6):
            return mode, None, None
    if flip:
        return None
    std = np.float32(1.0) / scale.astype(np.float32)  # float32, as `affine` computed the scale
    return "custom", [float(v) for v in -offset.astype(np.float32) * std], [float(v) for v in std]


def with_preprocessing(model, contract, name: str = "tledge_model"):
    """Wrap a Keras 3 model that expects normalised input so it takes raw pixels (float32 0..255). A model that holds
    tledge's baked preprocessing layer (every `tledge train` model) is refused: it takes raw pixels already, and
    wrapping it normalised twice (top-1 agreement 0.425 with the model itself)."""
    if any(str(getattr(layer, "name", "")).startswith("tledge_preprocess") for layer in getattr(model, "layers", ())):
        from tledge.errors import ContractError

        raise ContractError("with_preprocessing: the model normalises its input itself (it holds tledge_preprocess): "
                            "it takes raw pixels as it is; wrap only a model that expects normalised input")
    inp = keras.Input(shape=(contract.height, contract.width, contract.channels), dtype="float32", name="pixels")
    return keras.Model(inp, model(for_contract(contract)(inp)), name=name)
