"""The preprocessing contract: how a raw image becomes a model's input, written once.

One frozen dataclass with a JSON round trip, embedded in every exported file and written as
`tledge.json` beside it. `Contract.prepare(image)` is the numpy + OpenCV reference that training,
calibration, parity and the runtime all call. No TensorFlow here.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tledge.contract_types import DECISION as DECISION, INDEPENDENT as INDEPENDENT  # re-exported ("X as X": type
from tledge.contract_types import ColorOrder as ColorOrder, Fit as Fit, Layout as Layout, Norm as Norm  # checkers
from tledge.contract_types import Output as Output, Quant as Quant, Resize as Resize  # of a py.typed package see them
from tledge.contract_types import decision_name as decision_name, same_decision as same_decision  # as public)
from tledge.errors import ContractError
from tledge.safejson import KIND_WORDS, NestedTooDeeply, finite, is_kind, loads_json

CONTRACT_VERSION = 1
METADATA_KEY = "tledge_contract"  # name of the TFLite metadata entry and the ONNX metadata_props key


_CV2_INTERP = {Resize.AREA: "INTER_AREA", Resize.LINEAR: "INTER_LINEAR",
               Resize.NEAREST: "INTER_NEAREST", Resize.CUBIC: "INTER_CUBIC"}

# mean / std of each mode, in the channel order of the *model input after the mode* (caffe: BGR)
_MODE_MEAN_STD = {
    Norm.CAFFE: ((103.939, 116.779, 123.68), (1.0, 1.0, 1.0)),
    Norm.TF: ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
    Norm.TORCH: ((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)),
    Norm.SCALE: ((0.0, 0.0, 0.0), (255.0, 255.0, 255.0)),
    Norm.RAW: ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


MAX_SIDE = 16384  # pixels a side: more is no image classifier's input
_HUGE = 1 << 26  # pixels of an intermediate resize above which a crop resizes only its window (not bit-exact)
_SIDE_LIMIT = 32767  # or sides: OpenCV's remap (warp-linear) takes none longer (SHRT_MAX)
_NEWER = " (a file from a newer tledge? upgrade tledge here)"
# what each field is in JSON (a contract read from a file): checked before any value is used
_JSON_TYPES = {"height": "int", "width": "int", "channels": "int", "crop_fraction": "number", "pad_value": "int",
               "baked": "bool", "labels": "strings", "mean": "numbers", "std": "numbers", "extra": "object",
               "input_dtype": "string", "color": "string", "layout": "string", "resize": "string", "fit": "string",
               "norm": "string", "output": "string"}


@dataclass(frozen=True)
class Contract:
    """How a raw image becomes the model's input, and what its output means.

    `baked=True` means the normalisation is inside the model graph: the model takes raw pixel
    values (0..255) and `prepare()` returns them untouched as `input_dtype`.
    """

    height: int
    width: int
    channels: int = 3
    color: ColorOrder = ColorOrder.RGB
    layout: Layout = Layout.NHWC
    input_dtype: str = "uint8"
    resize: Resize = Resize.AREA
    fit: Fit = Fit.STRETCH
    crop_fraction: float = 0.875
    pad_value: int = 0
    norm: Norm = Norm.TF
    baked: bool = True
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    output: Output = Output.PROBABILITIES
    input_quant: Quant | None = None
    output_quant: Quant | None = None
    labels: tuple[str, ...] = ()
    version: int = CONTRACT_VERSION
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    # ---- validation -------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self._check_types()
        for name, enum in (("color", ColorOrder), ("layout", Layout), ("resize", Resize),
                           ("fit", Fit), ("norm", Norm), ("output", Output)):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, enum(value.value if isinstance(value, Enum) else value))
            except ValueError:
                choices = ", ".join(e.value for e in enum)
                raise ContractError(f"contract field {name}={value!r} is not one of: {choices}") from None
        if not 1 <= self.height <= MAX_SIDE or not 1 <= self.width <= MAX_SIDE:
            raise ContractError(f"contract size must be 1..{MAX_SIDE} a side, got {self.height}x{self.width}")
        if not 0 <= self.pad_value <= 255:
            raise ContractError(f"pad_value must be a pixel value 0..255, got {self.pad_value}")
        if self.channels not in (1, 3):
            raise ContractError(f"contract channels must be 1 or 3, got {self.channels}")
        if (self.channels == 1) != (self.color is ColorOrder.GRAY):
            raise ContractError("a 1-channel contract must use color='gray' and a 3-channel one rgb/bgr")
        if self.input_dtype not in ("uint8", "int8", "float32", "float16"):
            raise ContractError(f"unsupported input dtype {self.input_dtype!r}")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ContractError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if self.norm is Norm.CUSTOM and (self.mean is None or self.std is None):
            raise ContractError("norm='custom' needs mean and std")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None:
                v = tuple(float(x) for x in v)
                if len(v) == 1:
                    v = v * self.channels
                if len(v) != self.channels:
                    raise ContractError(f"{name} needs {self.channels} values, got {len(v)}")
                object.__setattr__(self, name, v)
        if any(not np.isfinite(x) for x in (self.mean or ()) + (self.std or ())):
            raise ContractError("mean and std values must be finite numbers")
        if self.std is not None and any(s == 0 for s in self.std):
            raise ContractError("std values must be non-zero")
        if self.mean is not None and self.std is not None:  # pixels are normalised in float32: 1e39 or 1e-320 passed
            with np.errstate(all="ignore"):                 # the float64 checks and gave NaN scores, exit 0
                sd = np.float32(self.std)
                ends = (np.float32([[0.0], [255.0]]) - np.float32(self.mean)) / sd
            if not (np.isfinite(sd).all() and np.isfinite(ends).all()):  # (a zero or infinite mean: ends not finite)
                raise ContractError(f"mean {self.mean} / std {self.std} overflow float32, in which pixels are "
                                    "normalised")
        object.__setattr__(self, "labels", tuple(str(x) for x in self.labels))

    def _check_types(self) -> None:
        """Python callers' values: numpy ints as ints (they broke to_json); one string as labels (its letters were
        the labels) and strings or floats as sizes (they failed in OpenCV) refused."""
        import numbers

        for name in ("height", "width", "channels", "pad_value"):
            v = getattr(self, name)
            if not isinstance(v, numbers.Integral) or isinstance(v, (bool, np.bool_)):
                raise ContractError(f"contract field {name} must be an integer, got {v!r}")
            object.__setattr__(self, name, int(v))
        if not isinstance(self.crop_fraction, numbers.Real) or isinstance(self.crop_fraction, (bool, np.bool_)):
            raise ContractError(f"contract field crop_fraction must be a number, got {self.crop_fraction!r}")
        object.__setattr__(self, "crop_fraction", float(self.crop_fraction))
        if not isinstance(self.baked, (bool, np.bool_)):
            raise ContractError(f"contract field baked must be True or False, got {self.baked!r}")
        object.__setattr__(self, "baked", bool(self.baked))
        if isinstance(self.labels, (str, bytes)) or not hasattr(self.labels, "__iter__"):
            raise ContractError(f"labels must be a sequence of class names, got {self.labels!r} (one class: "
                                "labels=('name',))")
        for name in ("mean", "std"):
            if isinstance(getattr(self, name), numbers.Real):  # one value for every channel, as load(mean=) takes
                object.__setattr__(self, name, (getattr(self, name),))

    # ---- presets / variants -----------------------------------------------------------------
    def replace(self, **changes: Any) -> "Contract":
        return dataclasses.replace(self, **changes)

    @property
    def size(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one prepared image (without batch)."""
        if self.layout is Layout.NCHW:
            return (self.channels, self.height, self.width)
        return (self.height, self.width, self.channels)

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std (in the model's channel order) that `normalize` applies."""
        if self.norm is Norm.CUSTOM:
            mean, std = self.mean, self.std
        else:
            mean, std = _MODE_MEAN_STD[self.norm]
            if self.channels == 1:
                mean, std = (float(np.mean(mean)),), (float(np.mean(std)),)
        return np.asarray(mean, np.float32), np.asarray(std, np.float32)

    # ---- the reference preprocessing --------------------------------------------------------
    def prepare(self, image: Any) -> np.ndarray:
        """One image (a path, encoded bytes, a PIL image, or an HxW / HxWxC array in RGB order, any dtype) -> one
        model input."""
        from tledge import images

        rgb = images.as_rgb(image)
        x = self.geometry(rgb)
        x = self.colors(x)
        if not self.baked:
            x = self.normalize(x)
        x = x.astype(self.input_dtype if self.baked else "float32", copy=False)
        if self.layout is Layout.NCHW:
            x = np.ascontiguousarray(x.transpose(2, 0, 1))
        return x

    def prepare_batch(self, items: Sequence[Any]) -> np.ndarray:
        """prepare() of each image, stacked; any iterable (a generator too); none: (0, ...) of input_dtype."""
        if isinstance(items, (str, bytes, Path)):  # a path's letters were read as images ("/: Is a directory")
            raise ContractError("prepare_batch() takes a sequence of images; one image goes to prepare()")
        out = [self.prepare(i) for i in items]
        return np.stack(out) if out else np.zeros((0,) + self.input_shape, np.dtype(self.input_dtype))

    def geometry(self, rgb: np.ndarray) -> np.ndarray:
        """Resize/crop/letterbox an HxWx3 uint8 RGB image to the contract's HxW."""
        h, w = rgb.shape[:2]
        H, W = self.height, self.width
        if self.fit is Fit.STRETCH:
            return rgb if (h, w) == (H, W) else self.resize_to(rgb, W, H)
        if self.fit is Fit.CROP:
            scale = max(H / (h * self.crop_fraction), W / (w * self.crop_fraction))
            nh, nw = max(H, round(h * scale)), max(W, round(w * scale))
            if nh * nw > _HUGE or (self.resize is Resize.WARP_LINEAR and max(nh, nw) >= _SIDE_LIMIT):  # 1x20000
                sh, sw = min(h, max(1, round(H / scale))), min(w, max(1, round(W / scale)))
                y0, x0 = (h - sh) // 2, (w - sw) // 2
                return self.resize_to(np.ascontiguousarray(rgb[y0:y0 + sh, x0:x0 + sw]), W, H)
            resized = self.resize_to(rgb, nw, nh)
            top, left = (nh - H) // 2, (nw - W) // 2
            return np.ascontiguousarray(resized[top:top + H, left:left + W])
        scale = min(H / h, W / w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        resized = self.resize_to(rgb, nw, nh)
        out = np.full((H, W, 3), self.pad_value, np.uint8)
        top, left = (H - nh) // 2, (W - nw) // 2
        out[top:top + nh, left:left + nw] = resized
        return out

    def resize_to(self, rgb: np.ndarray, width: int, height: int) -> np.ndarray:
        """The contract's interpolation, to width x height (aspect ratio as given)."""
        import cv2

        if self.resize is Resize.WARP_LINEAR:
            from tledge.resize import warp_linear

            return warp_linear(rgb, width, height)
        return cv2.resize(rgb, (width, height), interpolation=getattr(cv2, _CV2_INTERP[self.resize]))

    def colors(self, rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 -> the model's channel order (gray via ITU-R BT.601 as OpenCV does)."""
        import cv2

        if self.color is ColorOrder.GRAY:
            return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None]
        if self.color is ColorOrder.BGR:
            return np.ascontiguousarray(rgb[:, :, ::-1])
        return rgb

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Pixels in the model's channel order -> normalised float32 (caffe also flips RGB->BGR)."""
        x = np.asarray(x, np.float32)
        if self.norm is Norm.CAFFE and self.channels == 3 and self.color is ColorOrder.RGB:
            x = x[..., ::-1]
        mean, std = self.mean_std()
        return ((x - mean) / std).astype(np.float32)

    # ---- outputs ------------------------------------------------------------------------------
    def label(self, index: int) -> str:
        return self.labels[index] if 0 <= index < len(self.labels) else str(index)

    @property
    def independent(self) -> bool:
        """Multi-label: each score its own sigmoid, thresholded at DECISION, not ranked (extra["scores"])."""
        return self.extra.get("scores") == INDEPENDENT

    # ---- JSON -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Enum):
                v = v.value
            elif isinstance(v, Quant):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = list(v)
            d[f.name] = v
        d["format"] = "tledge.contract"
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(finite(self.to_dict()), indent=indent, sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Contract":
        if not isinstance(d, dict):
            raise ContractError("a contract must be a JSON object")
        d = dict(d)
        kind = d.pop("format", "tledge.contract")
        if kind != "tledge.contract":  # a manifest.json copied over tledge.json
            raise ContractError(f"format {str(kind)[:40]!r} is not a tledge contract's (tledge.contract)")
        version = d.get("version", CONTRACT_VERSION)
        if not is_kind(version, "int"):
            raise ContractError(f"contract version {str(version)[:20]!r} is not an integer")
        if version > CONTRACT_VERSION:
            raise ContractError(f"contract version {version} is newer than this tledge ({CONTRACT_VERSION}): upgrade tledge")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ContractError(f"unknown contract fields: {sorted(unknown)}{_NEWER}")
        for name, value in d.items():  # JSON from a file tledge may not have written: types, then values
            kind = _JSON_TYPES.get(name)
            if kind and value is not None and not is_kind(value, kind):
                raise ContractError(f"contract field {name}={str(value)[:60]!r} is not {KIND_WORDS[kind]}")
        for q in ("input_quant", "output_quant"):
            d[q] = Quant.from_dict(d.get(q), q)
        for t in ("labels", "mean", "std"):
            if d.get(t) is not None:
                d[t] = tuple(d[t])
        try:
            return cls(**d)
        except ContractError as exc:  # a value this tledge does not know (warp-linear came after version 1)
            raise ContractError(f"{exc}{_NEWER}" if "is not one of" in str(exc) else str(exc)) from None
        except (TypeError, ValueError) as exc:
            raise ContractError(f"invalid contract: {exc}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> "Contract":
        try:
            return cls.from_dict(loads_json(text))
        except json.JSONDecodeError as exc:
            raise ContractError(f"contract is not valid JSON: {exc}") from None
        except UnicodeDecodeError:
            raise ContractError("contract is not UTF-8 text") from None
        except NestedTooDeeply:
            raise ContractError("contract JSON is nested too deeply") from None

    def save(self, path: str | Path) -> Path:
        from tledge.io import atomic_write_text

        return atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Contract":
        p = Path(path)
        if not p.is_file():
            raise ContractError(f"no contract file at {p}")
        try:
            return cls.from_json(p.read_bytes())  # bytes: json reads UTF-8 (a Latin-1 file is a ContractError)
        except ContractError as exc:  # said which file: an export's tledge.json or the model's own
            raise ContractError(f"{p}: {exc}") from None

    def for_file(self, *, input_dtype: str, input_quant: Quant | None = None,
                 output_quant: Quant | None = None, layout: Layout | None = None) -> "Contract":
        """This contract as embedded in one exported file (its own dtype and quantisation)."""
        return self.replace(input_dtype=input_dtype, input_quant=input_quant, output_quant=output_quant,
                            layout=layout or self.layout)
