"""Statistics for the parity gate: how sure is a figure measured on n images?

- `wilson`: 95 % Wilson score interval of a proportion (agreement, accuracy);
- `mcnemar`: the paired accuracy change of a file against its reference on the same images, with an
  exact two-sided McNemar p-value and an Agresti-Min interval;
- `topk_agreement`: share of images whose reference top-1 class is among the file's top k (for
  many-class models, where top-1 agreement is dominated by near-ties);
- `resolution_warnings`: when the set is too small to resolve the budget at all.

Pure numpy and the standard library (no SciPy).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials (0..1); (0, 1) for n == 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def topk_agreement(reference: np.ndarray, outputs: np.ndarray, k: int) -> np.ndarray:
    """Per image: is the reference's top-1 class among the file's k highest outputs? (bool array)"""
    ref_top = np.argmax(reference, axis=1)
    k = min(k, outputs.shape[1])
    # rank of the reference's class in the file's output: the classes scoring higher, and those scoring the same
    # with a lower index (np.argmax's and `tledge run --top-k`'s order). Ties counted for the reference class had
    # passed a uint8 file whose reference class sat at 0 among a hundred other zeros.
    score = outputs[np.arange(len(outputs)), ref_top][:, None]
    before = np.arange(outputs.shape[1])[None, :] < ref_top[:, None]
    ahead = np.sum((outputs > score) | ((outputs == score) & before), axis=1)
    return ahead < k


@dataclass(frozen=True)
class McNemar:
    n: int
    lost: int  # reference right, file wrong
    gained: int  # reference wrong, file right
    change: float  # accuracy change, file minus reference (0.01 = +1 point)
    low: float  # 95 % interval of the change (Agresti-Min)
    high: float
    p_value: float  # exact two-sided McNemar test of "no change"


def mcnemar(reference_correct: np.ndarray, file_correct: np.ndarray, z: float = Z95) -> McNemar:
    ref, out = np.asarray(reference_correct, bool), np.asarray(file_correct, bool)
    n = len(ref)
    lost, gained = int(np.sum(ref & ~out)), int(np.sum(~ref & out))
    change = (gained - lost) / n if n else 0.0
    # Agresti & Min (2005): add 0.5 to each of the four paired cells, then a Wald interval
    b, c, m = lost + 0.5, gained + 0.5, n + 2
    d = (c - b) / m
    se = math.sqrt(max((b + c) - (c - b) ** 2 / m, 0.0)) / m
    return McNemar(n, lost, gained, change, max(-1.0, d - z * se), min(1.0, d + z * se),
                   binomial_two_sided(min(lost, gained), lost + gained))


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of k or fewer (or as extreme) successes in n fair coin flips."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def images_needed(min_share: float, z: float = Z95) -> int:
    """Smallest n whose Wilson lower bound at n/n reaches `min_share`."""
    if min_share >= 1.0:
        return 0  # a perfect-only rule needs no interval: any miss fails it
    return math.ceil(z * z * min_share / (1.0 - min_share))


def resolution_warnings(n: int, *, min_share: float | None, share_name: str,
                        max_accuracy_drop: float | None, labelled: bool) -> list[str]:
    """What this many images cannot tell apart, in words (empty when the set is big enough)."""
    out = []
    if min_share is not None and 0.0 < min_share < 1.0 and n < images_needed(min_share):
        lo = wilson(n, n)[0]
        out.append(f"{n} images cannot show {share_name} >= {min_share:g} with 95 % confidence (even "
                   f"{n}/{n} has a lower bound of {lo:.3f}); {images_needed(min_share)} or more would")
    if labelled and max_accuracy_drop is not None and n and 1.0 / n > max_accuracy_drop / 2:
        out.append(f"one image is {100 / n:.2f} accuracy points: the {100 * max_accuracy_drop:g}-point "
                   f"accuracy budget is under 2 images; the accuracy change is judged by McNemar's test")
    return out


def fmt_interval(low: float, high: float, digits: int = 3) -> str:
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def fmt_points(change: float, low: float, high: float) -> str:
    """An accuracy change with its interval in points: '-1.3 pt [-3.1, +0.5]'."""
    return f"{100 * change:+.1f} pt [{100 * low:+.1f}, {100 * high:+.1f}]"
