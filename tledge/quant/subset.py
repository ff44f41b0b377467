"""The calibration images a technique measures on, when it takes fewer than the export calibrated with."""
from __future__ import annotations

import numpy as np


def spread(x: np.ndarray, n: int) -> np.ndarray:
    """At most `n` items of `x`, spread evenly over it. The export reads calibration folders class by class,
    so the first n images are the first classes only (the first 32 of the hymenoptera train photos are all
    ants; the first 64 of a 1000-class split cover 64 classes)."""
    x = np.asarray(x)
    if len(x) <= n:
        return x
    return x[np.linspace(0, len(x) - 1, n).round().astype(int)]
