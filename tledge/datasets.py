"""A small image data set the project makes itself (for the demo and the tests): no downloads."""
from __future__ import annotations

from pathlib import Path

import numpy as np

SHAPE_CLASSES = ("circle", "hstripes", "vstripes")


def make_shapes(root: str | Path, n_per_class: int = 12, size: int = 48, seed: int = 0,
                classes=SHAPE_CLASSES) -> Path:
    """Class folders of generated PNG/JPEG images (noisy background, one coloured shape each)."""
    import cv2

    root = Path(root)
    rng = np.random.default_rng(seed)
    for name in classes:
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = rng.uniform(0, 60, (size, size, 3)).astype(np.uint8)
            color = tuple(int(v) for v in rng.integers(120, 256, 3))
            c = size // 2 + int(rng.integers(-size // 8, size // 8 + 1))
            r = size // 4 + int(rng.integers(-2, 3))
            step = max(4, size // 6)
            if name == "circle":
                cv2.circle(img, (c, c), r, color, -1)
            elif name == "hstripes":
                for y in range(int(rng.integers(0, step)), size, step):
                    cv2.rectangle(img, (0, y), (size, y + step // 2 - 1), color, -1)
            else:
                for x in range(int(rng.integers(0, step)), size, step):
                    cv2.rectangle(img, (x, 0), (x + step // 2 - 1, size), color, -1)
            ext = ".png" if i % 2 else ".jpg"
            cv2.imwrite(str(d / f"{name}_{i:03d}{ext}"), img)
    return root


def make_split_shapes(root: str | Path, n_train: int = 16, n_val: int = 8, size: int = 48) -> Path:
    """train/ and val/ folders of class folders."""
    root = Path(root)
    make_shapes(root / "train", n_per_class=n_train, size=size, seed=1)
    make_shapes(root / "val", n_per_class=n_val, size=size, seed=2)
    return root
