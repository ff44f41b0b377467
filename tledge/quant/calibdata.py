"""The calibration images every int8 technique of tledge.quant takes, checked once at its entry point.

Before, NaN or infinite pixels gave a repaired model with NaN weights under a summary that read fine ("27 BN
folded (max abs nan)") and garbage biases from the graph techniques, silently; 0 images or None failed deep inside
(numpy concatenate, IndexError, KeyError, a TensorFlow debug-mode message), or calibrated a file on nothing.
"""
from __future__ import annotations

import numpy as np

from tledge.errors import DataError


def checked(calib, what: str = "calibration images") -> np.ndarray:
    """`calib` as an array (its dtype kept) when it is a batch of images: 4-D (N, height, width, channels) or
    (N, channels, height, width), numbers, N >= 1, every value finite. DataError (one line) otherwise."""
    if calib is None:
        raise DataError(f"no {what} (None): pass an array of images, shape (N, height, width, channels)")
    try:
        x = np.asarray(calib)
    except (ValueError, TypeError) as exc:  # ragged lists of images
        raise DataError(f"{what} are not one array of images ({str(exc).splitlines()[0][:120]})") from None
    if x.dtype.kind not in "fiu":
        raise DataError(f"{what} of dtype {x.dtype}: expected numbers (float32 pixels)")
    if x.ndim != 4:
        raise DataError(f"{what} of shape {x.shape}: expected a batch of images, (N, height, width, channels)")
    if len(x) == 0:
        raise DataError(f"0 {what}: at least 1 image is needed")
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x).reshape(len(x), -1).all(1)
        if bad.any():
            raise DataError(f"{what}: {int(bad.sum())} of {len(x)} images have NaN or infinite values (first: image "
                            f"{int(np.argmax(bad))}); every value must be finite")
    return x
