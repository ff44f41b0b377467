"""The contract's vocabulary: the enums of its fields, affine quantisation (Quant) and what independent scores mean.
tledge.contract holds the contract itself and re-exports these (import them from there)."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from tledge.errors import ContractError
from tledge.safejson import is_kind


class ColorOrder(str, Enum):
    RGB = "rgb"
    BGR = "bgr"
    GRAY = "gray"


class Layout(str, Enum):
    NHWC = "nhwc"
    NCHW = "nchw"


class Resize(str, Enum):
    AREA = "area"
    LINEAR = "linear"
    NEAREST = "nearest"
    CUBIC = "cubic"
    # bilinear sampled as OpenCV's fixed-point warpPerspective does (pixel-corner grid, positions rounded
    # to 1/32 px, edges replicated): MediaPipe Tasks' CPU resize, bit for bit (tledge.resize)
    WARP_LINEAR = "warp-linear"


class Fit(str, Enum):
    STRETCH = "stretch"  # resize to HxW, aspect ratio ignored
    CROP = "crop"  # resize the short side to size/crop_fraction, then centre-crop HxW
    LETTERBOX = "letterbox"  # fit inside HxW keeping aspect ratio, pad with `pad_value`


class Norm(str, Enum):
    """Normalisation modes: the three of keras.applications plus simple ones."""

    CAFFE = "caffe"  # RGB->BGR, minus ImageNet BGR means, no scaling
    TF = "tf"  # x / 127.5 - 1
    TORCH = "torch"  # x / 255, minus ImageNet means, divided by ImageNet stds (RGB)
    SCALE = "scale"  # x / 255
    RAW = "raw"  # x as float (the model normalises itself)
    CUSTOM = "custom"  # (x - mean) / std with the contract's mean and std


class Output(str, Enum):
    PROBABILITIES = "probabilities"
    LOGITS = "logits"


# extra["scores"] of a multi-label model: each probability its own sigmoid (they need not sum to 1; threshold each):
# a label is given when its score is over DECISION (`tledge run`'s default, parity's label sets)
INDEPENDENT, DECISION = "independent", 0.5


def same_decision(a: np.ndarray, b: np.ndarray, independent: bool = False) -> np.ndarray:
    """Per image (row): the two score arrays decide alike: the same argmax, or for independent scores the same label
    set (every label on the same side of DECISION, what their clients threshold)."""
    a, b = (np.asarray(v, np.float32).reshape(len(v), -1) for v in (a, b))
    if independent:
        return np.all((a > DECISION) == (b > DECISION), axis=1)
    return np.argmax(a, 1) == np.argmax(b, 1)


def decision_name(independent: bool) -> str:
    """What `same_decision` compares, as reports say it."""
    return "label-set" if independent else "top-1"


@dataclass(frozen=True)
class Quant:
    """Affine quantisation of a tensor: real = (q - zero_point) * scale."""

    scale: float
    zero_point: int
    dtype: str = "uint8"

    def to_dict(self) -> dict:
        return {"scale": float(self.scale), "zero_point": int(self.zero_point), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict | None, name: str = "quant") -> "Quant | None":
        """From JSON a file may carry: a positive finite scale, an integer zero point, an integer dtype (ContractError)."""
        if d is None:
            return None
        if not (isinstance(d, dict) and is_kind(d.get("scale"), "number") and is_kind(d.get("zero_point"), "int")
                and 0 < d["scale"] < float("inf") and d.get("dtype", "uint8") in ("uint8", "int8", "int16")):
            raise ContractError(f"contract field {name} needs a positive finite scale, an integer zero_point and a "
                                "dtype of uint8, int8 or int16")
        return cls(float(d["scale"]), int(d["zero_point"]), str(d.get("dtype", "uint8")))

    def quantize(self, x: np.ndarray) -> np.ndarray:
        info = np.iinfo(np.dtype(self.dtype))
        q = np.round(np.asarray(x, np.float32) / np.float32(self.scale)) + self.zero_point
        return np.clip(q, info.min, info.max).astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return (np.asarray(q, np.float32) - np.float32(self.zero_point)) * np.float32(self.scale)
