"""Training batches: shuffled, optionally augmented copies of prepared images. No TensorFlow.

Augmentation works on the arrays `contract.prepare` made (raw pixel values 0..255), in training
only: horizontal flip, a small shift (edges reflected) and a brightness factor. Validation and the
saved model never see it.

With several replicas (GPUs or workers) every process draws the same permutation per epoch and the
same augmentation parameters per global batch, and keeps only its replicas' share of both
(`local_batches`): each image is trained on once per epoch, by one replica, with draws of its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np


@dataclass(frozen=True)
class Draws:
    """Augmentation parameters, one row per image."""

    flips: np.ndarray  # bool
    shifts: np.ndarray  # (n, 2) pixels (x, y)
    gains: np.ndarray

    def take(self, pos: np.ndarray) -> "Draws":
        return Draws(self.flips[pos], self.shifts[pos], self.gains[pos])


@dataclass(frozen=True)
class Augment:
    flip: bool = True
    shift: float = 0.1  # max shift as a fraction of height / width
    brightness: float = 0.2  # pixel values scaled by a factor in [1 - b, 1 + b]

    def draw(self, n: int, h: int, w: int, rng: np.random.Generator) -> Draws:
        flips = rng.random(n) < 0.5 if self.flip else np.zeros(n, bool)
        shifts = rng.uniform(-self.shift, self.shift, (n, 2)) * (w, h)
        gains = rng.uniform(1 - self.brightness, 1 + self.brightness, n)
        return Draws(flips, shifts, gains)

    def apply(self, batch: np.ndarray, d: Draws) -> np.ndarray:
        """(N, H, W, C) pixels -> float32 augmented copies, clipped to 0..255."""
        import cv2

        x = np.asarray(batch, np.float32)
        out = np.empty_like(x)
        h, w = x.shape[1:3]
        for i in range(len(x)):
            img = x[i, :, ::-1] if d.flips[i] else x[i]
            if self.shift:
                m = np.float32([[1, 0, d.shifts[i, 0]], [0, 1, d.shifts[i, 1]]])
                img = cv2.warpAffine(np.ascontiguousarray(img), m, (w, h), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REFLECT_101).reshape(x.shape[1:])
            out[i] = img * np.float32(d.gains[i])
        return np.clip(out, 0.0, 255.0, out=out)

    def __call__(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(batch, self.draw(len(batch), *np.shape(batch)[1:3], rng))


def epoch_rng(seed: int, phase: int, epoch: int) -> np.random.Generator:
    """The random stream of one epoch: resuming at (phase, epoch) replays it exactly."""
    return np.random.default_rng([seed, phase, epoch])


def step_rng(seed: int, phase: int, epoch: int, step: int) -> np.random.Generator:
    """The augmentation draws of one global batch (the same on every worker)."""
    return np.random.default_rng([seed, phase, epoch, step, 1])


@dataclass(frozen=True)
class LocalBatch:
    x: np.ndarray  # float32, this process's share of the global batch
    y: np.ndarray
    w: np.ndarray  # float32 sample weights (ones without class weights)
    bounds: np.ndarray  # split points of the share between this process's replicas
    n_global: int  # images in the global batch (the loss is divided by it)
    index: np.ndarray  # positions in x of the images of the share


def local_batches(x: np.ndarray, y: np.ndarray, global_batch: int, share: Callable, seed: int, phase: int,
                  epoch: int, *, weights: np.ndarray | None = None,
                  augment: Augment | None = None) -> Iterator[LocalBatch]:
    """One epoch of this process's shares. `share(n) -> (positions in a global batch of n, bounds)`."""
    order = epoch_rng(seed, phase, epoch).permutation(len(x))
    h, w = x.shape[1:3] if x.ndim == 4 else (1, 1)
    for step, start in enumerate(range(0, len(order), global_batch)):
        idx = order[start:start + global_batch]
        pos, bounds = share(len(idx))
        mine = idx[pos]
        if augment is not None:
            xb = augment.apply(x[mine], augment.draw(len(idx), h, w, step_rng(seed, phase, epoch, step)).take(pos))
        else:
            xb = np.asarray(x[mine], np.float32)
        wb = np.ones(len(mine), np.float32) if weights is None else np.asarray(weights[y[mine]], np.float32)
        yield LocalBatch(xb, y[mine], wb, bounds, len(idx), mine)
