"""Training batches: shuffled, optionally augmented copies of prepared images. No TensorFlow.

Augmentation works on the arrays `contract.prepare` made (raw pixel values 0..255), in training
only: horizontal flip, a small shift (edges reflected) and a brightness factor. Validation and the
saved model never see it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass(frozen=True)
class Augment:
    flip: bool = True
    shift: float = 0.1  # max shift as a fraction of height / width
    brightness: float = 0.2  # pixel values scaled by a factor in [1 - b, 1 + b]

    def __call__(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(N, H, W, C) pixels -> float32 augmented copies, clipped to 0..255."""
        import cv2

        x = np.asarray(batch, np.float32)
        out = np.empty_like(x)
        n, h, w = x.shape[:3]
        flips = rng.random(n) < 0.5 if self.flip else np.zeros(n, bool)
        shifts = rng.uniform(-self.shift, self.shift, (n, 2)) * (w, h)
        gains = rng.uniform(1 - self.brightness, 1 + self.brightness, n)
        for i in range(n):
            img = x[i, :, ::-1] if flips[i] else x[i]
            if self.shift:
                m = np.float32([[1, 0, shifts[i, 0]], [0, 1, shifts[i, 1]]])
                img = cv2.warpAffine(np.ascontiguousarray(img), m, (w, h), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REFLECT_101).reshape(x.shape[1:])
            out[i] = img * np.float32(gains[i])
        return np.clip(out, 0.0, 255.0, out=out)


def epoch_rng(seed: int, phase: int, epoch: int) -> np.random.Generator:
    """The random stream of one epoch: resuming at (phase, epoch) replays it exactly."""
    return np.random.default_rng([seed, phase, epoch])


def batches(x: np.ndarray, y: np.ndarray, batch: int, rng: np.random.Generator, *,
            weights: np.ndarray | None = None, augment: Augment | None = None,
            shuffle: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """(x float32, y, sample weights or None) batches of one epoch."""
    order = rng.permutation(len(x)) if shuffle else np.arange(len(x))
    for start in range(0, len(order), batch):
        idx = np.sort(order[start:start + batch]) if not shuffle else order[start:start + batch]
        xb = augment(x[idx], rng) if augment is not None else np.asarray(x[idx], np.float32)
        yield xb, y[idx], (None if weights is None else weights[y[idx]])
