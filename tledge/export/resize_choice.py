"""The export's default resize: MediaPipe's own (`warp-linear`) where the model does not lose accuracy by it.

Models are trained on INTER_AREA images (tledge train's resize). MediaPipe Tasks resizes with `warp-linear`
(tledge.resize), so an export whose contract says `area` gives MediaPipe users other pixels than parity
checked (on the hymenoptera photos MediaPipe then agrees with `tledge run` on 146-148 of 153). warp-linear
samples without averaging, which costs accuracy on fine detail shrunk a lot (the demo's striped shapes:
Keras 0.833 vs 0.950), and moves the top-1 of resize-sensitive models on many photos.

So when neither `--resize` nor the model's own contract chose a resize other than area and the image is stretched,
the export runs Keras on the labelled --val images both ways and takes warp-linear only when
- the top-1 is the same with both resizes on a share of the images whose 95 % Wilson lower bound is at least
  MIN_AGREEMENT (0.90): the photos whose answer the switch changes are the ones parity can no longer see, so the
  set must show they are few; this needs at least 35 images (and allows 8 of 153 to differ), and
- its accuracy is within the accuracy budget (1 point) of area's.
Otherwise it keeps area and says why. Measured on 18 models (docs/tflite-metadata.md, "The export's resize"): accuracy on 153 photos separates nothing (every McNemar p >= 0.26), the share of
changed top-1 does (resize-insensitive models 1-4 %, sensitive ones 7-50 %); the previous rule (the accuracy
budget alone) decided on as few as 4 images and switched 13 of the 18, the coin-toss ones included.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tledge.artifacts import DEFAULT_THRESHOLDS
from tledge.contract import DECISION, Contract, Fit, Resize
from tledge.resize import client_resizes
from tledge.stats import images_needed, wilson
from tledge.images import prepare_all

BUDGET = DEFAULT_THRESHOLDS["int8"].max_accuracy_drop  # accuracy points (as a fraction) warp-linear may cost
MIN_AGREEMENT = 0.90  # the 95 % Wilson lower bound of top-1 agreement (area vs warp-linear) a switch needs


def candidate(contract: Contract, explicit_resize: str | None) -> bool:
    """Whether the export may switch this contract to warp-linear by default."""
    # (a 1-channel model: MediaPipe refuses it, so its resize buys nothing and costs answers)
    return not explicit_resize and contract.fit is Fit.STRETCH and contract.resize is Resize.AREA \
        and contract.channels == 3


class Choice(NamedTuple):
    contract: Contract  # the contract to export with
    note: str  # what was chosen and why
    pixels: np.ndarray | None = None  # the val images prepared with `contract` when it is warp-linear ...
    outputs: np.ndarray | None = None  # ... and Keras's outputs on them: the export reuses both


def choose(contract: Contract, files: Sequence[Path] | None, y: np.ndarray | None, reference: np.ndarray,
           run: Callable[[np.ndarray], np.ndarray]) -> Choice:
    """`reference` is the Keras output on the val `files` prepared with `contract` (area); `run` gives Keras
    outputs for prepared pixels."""
    if files is None or y is None or not len(y):
        return Choice(contract, "resize area kept: MediaPipe's own resize (warp-linear) is chosen only after "
                                "checking on labelled --val images that it changes little; --resize "
                                "warp-linear forces it")
    if len(y) < images_needed(MIN_AGREEMENT):  # nothing to measure: no agreement on so few can be shown
        return Choice(contract, f"resize area kept: {len(y)} --val images cannot show that MediaPipe's own resize "
                                f"(warp-linear) changes few answers; it takes at least {images_needed(MIN_AGREEMENT)} "
                                "images; --resize warp-linear forces it")
    warp = contract.replace(resize=Resize.WARP_LINEAR)
    pixels = prepare_all(warp.prepare, files)
    if any(isinstance(x, Exception) for x in pixels):  # read with area a moment ago: not expected
        raise next(x for x in pixels if isinstance(x, Exception))
    pixels = np.stack(pixels)
    out = run(pixels)
    n = len(y)
    if contract.independent:  # multi-label: the labels given (over DECISION), as parity and tledge run decide
        acc_area, acc_warp = (float((s[np.arange(n), y] > DECISION).mean()) for s in (reference, out))
        same, what = int(np.all((out > DECISION) == (reference > DECISION), axis=1).sum()), "the labels given"
    else:
        acc_area, acc_warp = float((reference.argmax(1) == y).mean()), float((out.argmax(1) == y).mean())
        same, what = int((out.argmax(1) == reference.argmax(1)).sum()), "top-1"
    low, high = wilson(same, n)
    figures = (f"Keras accuracy {acc_warp:.3f} with warp-linear vs {acc_area:.3f} with area on {n} --val images, "
               f"{what} the same on {same}/{n} (95 % interval {low:.3f}-{high:.3f})")
    if low < MIN_AGREEMENT:
        return Choice(contract, f"resize area kept: {figures}: not shown to be at least {MIN_AGREEMENT:g}, so "
                                "MediaPipe's own resize (warp-linear) could change answers parity would not see; "
                                "--resize warp-linear forces it")
    if acc_warp < acc_area - BUDGET - 1e-9:
        return Choice(contract, f"resize area kept: {figures}: MediaPipe's own resize (warp-linear) would cost "
                                f"more than {BUDGET * 100:g} point, so MediaPipe's answers will differ from tledge run's")
    warp = warp.replace(extra={**warp.extra, "resize_by_client": client_resizes(warp)})
    return Choice(warp, f"resize warp-linear, MediaPipe Tasks' own (so MediaPipe feeds the files the pixels parity "
                        f"checked): {figures}; --resize area keeps tledge train's resize", pixels, out)
