"""Backbone registry: name -> keras.applications constructor, preprocessing mode, default size.

Importing this module does not import TensorFlow; `build()` does.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from tledge.errors import ContractError, TledgeError

if TYPE_CHECKING:
    from tledge.contract import Contract


@dataclass(frozen=True)
class Backbone:
    name: str
    constructor: str  # attribute of keras.applications
    mode: str  # preprocess_input mode: tf / caffe / torch / raw (model normalises itself)
    size: int  # default input size
    family: str
    takes_alpha: bool = False
    min_size: int = 32  # the smallest input side keras.applications builds it with


def _b(name, ctor, mode, size, family, alpha=False, min_size=32):
    return name, Backbone(name, ctor, mode, size, family, alpha, min_size)


BACKBONES: dict[str, Backbone] = dict([
    _b("mobilenet", "MobileNet", "tf", 224, "mobilenet", True),
    _b("mobilenet_v2", "MobileNetV2", "tf", 224, "mobilenet", True),
    _b("mobilenet_v3_small", "MobileNetV3Small", "raw", 224, "mobilenet", True),
    _b("mobilenet_v3_large", "MobileNetV3Large", "raw", 224, "mobilenet", True),
    *[_b(f"efficientnet_b{i}", f"EfficientNetB{i}", "raw", s, "efficientnet")
      for i, s in enumerate((224, 240, 260, 300, 380, 456, 528, 600))],
    *[_b(f"efficientnet_v2_{k}", f"EfficientNetV2{k.upper()}", "raw", s, "efficientnet")
      for k, s in (("b0", 224), ("b1", 240), ("b2", 260), ("b3", 300), ("s", 384), ("m", 480), ("l", 480))],
    _b("resnet50", "ResNet50", "caffe", 224, "resnet"),
    _b("resnet101", "ResNet101", "caffe", 224, "resnet"),
    _b("resnet152", "ResNet152", "caffe", 224, "resnet"),
    _b("resnet50_v2", "ResNet50V2", "tf", 224, "resnet"),
    _b("resnet101_v2", "ResNet101V2", "tf", 224, "resnet"),
    _b("resnet152_v2", "ResNet152V2", "tf", 224, "resnet"),
    _b("densenet121", "DenseNet121", "torch", 224, "densenet"),
    _b("densenet169", "DenseNet169", "torch", 224, "densenet"),
    _b("densenet201", "DenseNet201", "torch", 224, "densenet"),
    _b("vgg16", "VGG16", "caffe", 224, "vgg"),
    _b("vgg19", "VGG19", "caffe", 224, "vgg"),
    _b("inception_v3", "InceptionV3", "tf", 299, "inception", min_size=75),
    _b("inception_resnet_v2", "InceptionResNetV2", "tf", 299, "inception", min_size=75),
    _b("xception", "Xception", "tf", 299, "inception", min_size=71),
    _b("nasnet_mobile", "NASNetMobile", "tf", 224, "nasnet"),
    _b("nasnet_large", "NASNetLarge", "tf", 331, "nasnet"),
    *[_b(f"convnext_{k}", f"ConvNeXt{c}", "raw", 224, "convnext")
      for k, c in (("tiny", "Tiny"), ("small", "Small"), ("base", "Base"), ("large", "Large"), ("xlarge", "XLarge"))],
])

# Aliases people type (also accepted by --preprocess).
ALIASES = {
    "mobilenet_v1": "mobilenet", "mobilenetv2": "mobilenet_v2", "mobilenetv1": "mobilenet",
    "efficientnet": "efficientnet_b0", "resnet": "resnet50", "resnet_v2": "resnet50_v2",
    "densenet": "densenet121", "vgg": "vgg16", "inception": "inception_v3", "nasnet": "nasnet_mobile",
    "convnext": "convnext_tiny", "mobilenet_v3": "mobilenet_v3_small",
}

MODES = ("tf", "caffe", "torch", "scale", "raw")


def get(name: str) -> Backbone:
    key = name.lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in BACKBONES:
        raise TledgeError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[key]


def preprocess_mode_for(name_or_mode: str) -> str:
    """A preprocessing mode, or the mode of a backbone name (`mobilenet_v2` -> `tf`)."""
    key = name_or_mode.lower()
    if key in MODES or key == "custom":
        return key
    try:
        return get(key).mode
    except TledgeError:
        raise ContractError(
            f"unknown preprocessing {name_or_mode!r}. Give a mode ({', '.join(MODES)}) or a backbone "
            f"name ({', '.join(sorted(BACKBONES)[:8])}, ...): tf = x/127.5-1 (MobileNet, Inception), "
            "caffe = BGR minus ImageNet means (ResNet50, VGG), torch = x/255 then ImageNet mean/std "
            "(DenseNet), scale = x/255, raw = the model normalises itself (EfficientNet, MobileNetV3)."
        ) from None


def default_size_for(name: str) -> int:
    return get(name).size


def contract_for(name: str, size: int | tuple[int, int] | None = None, *, grayscale: bool = False,
                 labels: Sequence[str] = (), baked: bool = True) -> "Contract":
    """The contract of a keras.applications backbone (its preprocess_input mode, its default size)."""
    from tledge.contract import ColorOrder, Contract, Norm

    size = size or default_size_for(name)
    h, w = (size, size) if isinstance(size, int) else size
    return Contract(height=h, width=w, channels=1 if grayscale else 3,
                    color=ColorOrder.GRAY if grayscale else ColorOrder.RGB,
                    norm=Norm(preprocess_mode_for(name)), baked=baked, labels=tuple(labels))


def build(name: str, input_shape: tuple[int, int, int], *, weights: str | Path | None = None,
          alpha: float | None = None, pooling: str = "avg"):
    """A keras.applications backbone without its top. `weights` is None, "imagenet" or a local file."""
    from tledge._deps import require

    keras = require("keras", purpose="building backbones")
    spec = get(name)
    ctor = getattr(keras.applications, spec.constructor)
    kwargs = dict(include_top=False, input_shape=tuple(input_shape), pooling=pooling)
    if alpha is not None and spec.takes_alpha:
        kwargs["alpha"] = alpha
    if spec.constructor.startswith(("MobileNetV3", "EfficientNetV2")):
        kwargs["include_preprocessing"] = True  # these normalise raw 0..255 pixels themselves
    if weights is not None and str(weights) != "imagenet":
        if not Path(weights).is_file():
            raise TledgeError(f"weights file not found: {weights}")
    try:  # Keras prints "Downloading data from ..." on stdout: to stderr (the log file under the CLI), so that
        # stdout stays the command's results (`tledge train --json`)
        with contextlib.redirect_stdout(sys.__stderr__ or sys.stderr), _channels_last():
            return ctor(weights=None if weights is None else str(weights), **kwargs)
    except Exception as exc:  # download failures, shape mismatches
        if str(weights) == "imagenet":
            raise TledgeError(
                f"could not get ImageNet weights for {name} ({exc.__class__.__name__}: {exc}). Without network, "
                "download the no-top .h5 file (the URL above) elsewhere and pass it with --weights PATH, or put "
                "it in ~/.keras/models/ where Keras looks before downloading."
            ) from None
        why = " ".join(str(exc).split())  # Keras lists every layer it could not load, over many lines
        why = why if len(why) <= 300 else why[:300] + " ..."
        hint = "" if weights is None else (" (--weights takes the backbone's no-top ImageNet file for this --alpha, "
                                           "keras.applications' *_no_top.h5; a whole classifier, its top included, "
                                           "or a trained model.keras does not fit)")
        raise TledgeError(f"could not build {name} with weights={weights}: {why}{hint}") from None


@contextlib.contextmanager
def _channels_last():
    """keras.applications build under the global image data format: a caller's channels_first read (64, 64, 3) as 64
    channels of 3 x 64 ("Input size must be at least 32x32"). tledge's models are channels-last."""
    from tledge._deps import require, swapped

    keras = require("keras")
    with swapped(keras.config.image_data_format, keras.config.set_image_data_format, "channels_last"):
        yield
