"""What one more weight bit costs through outlier channel splitting, on a MobileNet v1 Keras file (issue 11,
eighteenth session; docs/int8-fidelity.md, "Weight bits").

For every row (output channel) of a BN-folded pointwise kernel to halve its maximum, every entry above half the
row's maximum must sit in a split input column; each split column adds one input channel to this layer and one
output channel to the pointwise layer before it (plus a depthwise channel). Prints the share of columns to split
per layer and the extra pointwise multiply-adds.

    python benchmarks/ocs_cost.py hymenoptera_mobilenet_224.h5
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
SIDES = {1: 112, 2: 56, 3: 56, 4: 28, 5: 28}  # output side of conv_pw_k at 224 px; 14 for 6-11, 7 for 12-13


def _side(k: int) -> int:
    return SIDES.get(k, 14 if k < 12 else 7) if k else 112


def main(path: str) -> int:
    import keras
    import numpy as np

    model = keras.models.load_model(path, compile=False)
    layers = {}
    for layer in model.layers:
        layers[layer.name] = layer
        for inner in getattr(layer, "layers", ()):
            layers[inner.name] = inner
    total = extra = 0
    for k in range(1, 14):
        w = layers[f"conv_pw_{k}"].get_weights()[0][0, 0]  # (cin, cout)
        gamma, _beta, _mean, var = layers[f"conv_pw_{k}_bn"].get_weights()
        a = np.abs(w * (gamma / np.sqrt(var + layers[f"conv_pw_{k}_bn"].epsilon))[None, :])
        big = a > a.max(0, keepdims=True) / 2
        cols = big.any(1)
        side, prev = _side(k), _side(k - 1)
        # one more output channel of the layer before (conv_pw_{k-1}, or conv1's 3x3x3 kernel) at its side, one more
        # depthwise 3x3 channel and one more input channel here at this layer's side
        before = layers[f"conv_pw_{k - 1}"].get_weights()[0].shape[2] if k > 1 else 27
        total += w.size * side * side
        extra += int(cols.sum()) * (before * prev * prev + (9 + w.shape[1]) * side * side)
        print(f"conv_pw_{k}: {w.shape[0]} x {w.shape[1]}, columns to split {cols.sum()} ({cols.mean():.0%}), "
              f"entries above half the row maximum per row {big.sum(0).mean():.1f}")
    print(f"one more bit on every pointwise layer: +{extra / total:.0%} pointwise multiply-adds")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
