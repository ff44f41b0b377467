"""Resizes that are not a plain `cv2.resize`: the warp-style bilinear that MediaPipe's CPU path applies.

MediaPipe Tasks (ImageClassifier and the other vision tasks, CPU, OpenCV build) turn an image into the input
tensor in `ImageToTensorCalculator` -> `image_to_tensor_converter_opencv.cc`: the region of interest (the whole
image, rotation 0, `keep_aspect_ratio` false for the classifier) becomes four corner points (`cv::boxPoints`),
`cv::getPerspectiveTransform` maps them onto the tensor's corners (0, 0) .. (W, H), and `cv::warpPerspective`
samples the uint8 image with INTER_LINEAR and BORDER_REPLICATE; the uint8 result is then scaled to the
tensor's range (identity for a uint8 tensor and for float tensors with mean 0 / std 1, which is what tledge
files declare). Two things make it differ from `cv2.resize(..., INTER_LINEAR)`:

- the sampling grid is anchored at pixel corners: output pixel u reads input x = u * w / W (cv2.resize reads
  (u + 0.5) * w / W - 0.5), so the picture shifts by up to half an input pixel and the last rows/columns
  are never read, and there is no area averaging when shrinking;
- positions are rounded to 1/32 pixel and weighted with 15-bit fixed-point bilinear weights (OpenCV's
  classic `INTER_BITS` remap). OpenCV 5's own warpAffine/warpPerspective no longer round positions
  (measured here: 8.6 % of the values differ by 1-5 on the hymenoptera photos), so this module computes the
  positions itself, as OpenCV's fixed-point warp does, and lets `cv2.remap` apply them with fixed-point maps.

`warp_linear` reproduces MediaPipe 1.2.3's tensor bit for bit (checked through a probe model whose scores
are its input: tests/test_clients_mediapipe.py).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

INTER_BITS = 5  # OpenCV's INTER_BITS: positions in 1/32 pixel
INTER_TAB_SIZE = 1 << INTER_BITS
SIDE_LIMIT = 32767  # SHRT_MAX: cv2.remap refuses longer sides (source or destination)


def warp_linear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """An HxW[xC] uint8 image stretched to height x width as MediaPipe's CPU image-to-tensor does it."""
    import cv2

    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    if max(h, w) >= SIDE_LIMIT:  # cv2.remap's limit: a 40x40000 banner is first shrunk (area) within it
        f = (SIDE_LIMIT - 1) / max(h, w)
        image = cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        h, w = image.shape[:2]
    map1, map2 = _maps(h, w, height, width)
    return cv2.remap(image, map1, map2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


@lru_cache(maxsize=16)
def _maps(h: int, w: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point remap maps (integer pixel, then the 1/32 fractions packed as y * 32 + x) of the warp that
    maps the whole h x w image onto height x width, computed the way OpenCV's fixed-point warpPerspective
    does: the forward matrix from the corner points in float32, inverted, positions in double rounded to
    the nearest 1/32 (half to even)."""
    import cv2

    src = cv2.boxPoints(((np.float32(0.5 * w), np.float32(0.5 * h)), (float(w), float(h)), 0.0))
    dst = np.array([[0, height], [0, 0], [width, 0], [width, height]], np.float32)
    forward = cv2.getPerspectiveTransform(np.asarray(src, np.float32), dst)
    _, m = cv2.invert(forward)
    m = m.ravel()
    x = np.arange(width, dtype=np.float64)[None, :]
    y = np.arange(height, dtype=np.float64)[:, None]
    wt = (m[7] * y + m[8]) + m[6] * x
    wt = np.where(wt != 0, INTER_TAB_SIZE / np.where(wt != 0, wt, 1.0), 0.0)
    limit = np.iinfo(np.int32)
    fx = np.clip(((m[1] * y + m[2]) + m[0] * x) * wt, limit.min, limit.max)
    fy = np.clip(((m[4] * y + m[5]) + m[3] * x) * wt, limit.min, limit.max)
    ix, iy = np.rint(fx).astype(np.int64), np.rint(fy).astype(np.int64)
    map1 = np.stack([np.clip(ix >> INTER_BITS, -32768, 32767), np.clip(iy >> INTER_BITS, -32768, 32767)], -1)
    map2 = (iy & (INTER_TAB_SIZE - 1)) * INTER_TAB_SIZE + (ix & (INTER_TAB_SIZE - 1))
    map1, map2 = map1.astype(np.int16), map2.astype(np.uint16)
    map1.flags.writeable = map2.flags.writeable = False
    return map1, map2


# The resize each client family applies by itself when the app hands it a whole image: (family,
# interpolation, fit, agreement when the contract uses that same resize and fit, how). `None`: the client
# does exactly the contract (tledge) or nothing (the app resizes). Written into exported contracts
# (extra["resize_by_client"]) by `client_resizes`.
CLIENT_RESIZE: tuple[tuple[str, str | None, str | None, str, str], ...] = (
    ("tledge", None, None, "exact", "tledge run / Contract.prepare: this contract's resize and fit, exactly"),
    ("opencv-dnn", "linear", "stretch", "exact", ("cv2.dnn.blobFromImage(img, 1, (W, H), swapRB=...): cv2.resize "
     "INTER_LINEAR to WxH (crop=True: short side to fit, then centre crop, i.e. crop fraction 1)")),
    ("mediapipe", "warp-linear", "stretch", "exact", ("MediaPipe Tasks ImageClassifier, CPU: the whole image "
     "stretched to the input size by cv::warpPerspective INTER_LINEAR, BORDER_REPLICATE (pixel-corner grid, "
     "1/32-pixel positions), uint8 tensor or float with mean 0 / std 1; the same tensor as warp-linear, bit "
     "for bit (mediapipe 1.2.3). Its GPU path samples a texture instead: approximate")),
    ("tflite-task-library", "linear", "stretch", "approximate", ("TFLite Task Library ImageClassifier: bilinear "
     "to the input size (libyuv), aspect ratio not kept; not measured against tledge here")),
    ("onnxruntime-web", None, None, "app", ("no image preprocessing: the app resizes (canvas drawImage smoothing "
     "is browser-defined) and must lay out and scale the tensor as this contract says")),
)


# 1-channel contracts: what changes for each client family (agreement at best, how)
GRAY_CLIENTS = {
    "opencv-dnn": ("approximate", "give it a gray image: cv2.dnn.blobFromImage(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), "
                   "1, (W, H)) converts before resizing (approximate); exact: cv2.resize the BGR image to WxH "
                   "INTER_LINEAR, then COLOR_BGR2GRAY, then blobFromImage. A 3-channel blob is accepted without an "
                   "error and only its first channel read: wrong answers"),
    "mediapipe": ("refused", "MediaPipe Tasks' ImageClassifier refuses 1-channel models (\"Only RGB color space is "
                  "supported\", mediapipe 1.2.3)"),
    "tflite-task-library": ("refused", "the TFLite Task Library's ImageClassifier refuses 1-channel models "
                            "(tflite-support 0.4.4)"),
}


def client_resizes(contract) -> dict[str, dict[str, str]]:
    """Per client family: the resize it uses and whether it gives this contract's pixels:
    exact (the same pixels), approximate (same method, another implementation), differs, app, or refused (the
    client does not load such a model: 1-channel ones in MediaPipe)."""
    out = {}
    for family, resize, fit, same, how in CLIENT_RESIZE:
        gray = GRAY_CLIENTS.get(family) if contract.channels == 1 else None
        if gray is not None:
            same, how = gray
        if family == "tledge":
            agreement, resize, fit = same, contract.resize.value, contract.fit.value
        elif resize is None:
            agreement = "app"
        elif same == "refused":
            agreement = same
        elif (resize, fit) != (contract.resize.value, contract.fit.value):
            agreement = "differs"
        else:
            agreement = same
        out[family] = {"resize": resize or "app", "fit": fit or "app", "agreement": agreement, "how": how}
    return out
