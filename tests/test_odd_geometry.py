"""Images no classifier was made for, through every resize: a 40x6000 banner cropped, a 20x33000 strip stretched.
OpenCV's remap (warp-linear, the default resize) refuses sides of 32767 and more: such images failed with a raw
cv2.error (a traceback from export, a SKIPPED row from run) where area / linear / cubic worked."""
from __future__ import annotations

import numpy as np
import pytest

from tledge.backbones import contract_for
from tledge.resize import warp_linear


@pytest.mark.parametrize("shape, fit", [((40, 6000), "crop"), ((20, 33000), "stretch"), ((33000, 20), "letterbox"),
                                        ((6000, 40), "crop")])
@pytest.mark.parametrize("resize", ["warp-linear", "area", "linear"])
def test_extreme_images_prepare_with_every_resize(shape, fit, resize):
    img = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    c = contract_for("mobilenet_v2", 64).replace(resize=resize, fit=fit,
                                                          crop_fraction=0.875 if fit == "crop" else 1.0)
    x = c.prepare(img)
    assert x.shape == (64, 64, 3) and np.isfinite(x).all()


@pytest.mark.parametrize("resize", ["area", "linear", "cubic", "nearest"])
def test_a_banner_cropped_is_resized_whole_where_opencv_can(resize):
    """The contract's definition (short side to size / crop fraction, then the centre) for a 40x6000 banner with
    cv2.resize: the approximate window path, needed only for warp-linear's cv2.remap (no side of 32767+), had been
    taken for every resize, and the same file and photo scored bees 0.926 on this tledge and 0.614 on the last."""
    import cv2

    img = np.random.default_rng(2).integers(0, 256, (40, 6000, 3), dtype=np.uint8)
    c = contract_for("mobilenet_v2", 224).replace(resize=resize, fit="crop", crop_fraction=1.0, norm="raw")
    whole = cv2.resize(img, (33600, 224), interpolation=getattr(cv2, f"INTER_{resize.upper()}"))
    expected = whole[:, (33600 - 224) // 2:(33600 - 224) // 2 + 224]
    assert np.array_equal(c.geometry(img), expected)


def test_warp_linear_within_the_limit_is_unchanged():
    """Below cv2.remap's limit nothing changes (the MediaPipe-exact path); above it the image is shrunk first."""
    img = np.random.default_rng(1).integers(0, 256, (30, 32000, 3), dtype=np.uint8)
    assert warp_linear(img, 64, 64).shape == (64, 64, 3)
    wide = np.concatenate([img, img[:, :1000]], axis=1)  # 33000 wide
    out = warp_linear(wide, 64, 64)
    assert out.shape == (64, 64, 3) and abs(float(out.mean()) - float(wide.mean())) < 8


def test_manifest_gives_tflite_files_batch_1(tiny_export):
    """Every .tflite takes batches of exactly 1; the manifest said -1 (any batch) for them too."""
    from tledge import artifacts

    m = artifacts.read(tiny_export.out)
    shapes = {e.file: e.input["shape"] for e in m.files if e.role == "model" and e.input}
    assert shapes and all(s[0] == (1 if f.endswith(".tflite") else -1) for f, s in shapes.items()), shapes
