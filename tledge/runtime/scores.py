"""Scores from a model's outputs: softmax of logits, a one-score model's [1 - p, p], a TFLite Support file's score
calibration, and what is refused (NaN outputs; logits taken for probabilities and the other way round)."""
from __future__ import annotations

import numpy as np

from tledge.contract import Contract, Output
from tledge.errors import ContractError, ModelRunError
from tledge.runtime.foreign import STANDARD_ORIGIN, calibrated


def scores_of(outputs: np.ndarray, contract: Contract, origin: str, name: str) -> np.ndarray:
    """Model outputs -> per-class scores, one row per input (softmax when the model gives logits). A one-score model
    (a sigmoid, or its logit) gives `[1 - p, p]`. `origin`: where the contract came from (EdgeModel.load_info's
    contract_origin); `name`: the file's, for errors."""
    y = np.asarray(outputs, np.float32).reshape(len(outputs), -1)
    if not np.isfinite(y).all():  # every image got a label with score NaN, "ok", and --json wrote NaN
        raise ModelRunError(f"{name} gives NaN or infinite outputs (uninitialised variables? a float16 "
                            "overflow?): no scores to rank")
    if contract.extra.get("score_calibration") and origin == STANDARD_ORIGIN:
        # a file made with TFLite Support's metadata writer, checked when read (an edited tledge contract's
        # calibration was applied unchecked: labels changed after parity had passed, or a KeyError)
        return calibrated(y, contract.extra["score_calibration"])
    if y.shape[1] == 1:
        return two_scores(y[:, 0], logits=contract.output is Output.LOGITS, name=name)
    if contract.output is Output.LOGITS:
        if origin in ("inferred", STANDARD_ORIGIN) and y.size and np.all(y >= 0) \
                and np.allclose(y.sum(axis=1), 1.0, atol=1e-3):  # --logits on a softmax: applied twice
            if contract.extra.get("logits_from"):  # an Add of probabilities (an ensemble's average),
                return y  # read as logits from its op: these rows are probabilities already
            raise ContractError(f"{name} gives probabilities (every row in 0..1, summing to 1: a "
                                "softmax inside the model): leave out --logits")
        e = np.exp(y - y.max(axis=1, keepdims=True))
        y = e / e.sum(axis=1, keepdims=True)
    elif origin in ("inferred", STANDARD_ORIGIN):  # made elsewhere: ranked logits were
        bad = y[(y < -1e-3) | (y > 1.0 + 1e-3)]  # printed as scores ("1 -0.050"), and --threshold hid them all
        if bad.size:
            raise ContractError(f"{name} gives scores outside 0..1 ({float(bad[0]):.4g}): they are "
                                "logits; pass --logits")
    return y


def two_scores(y: np.ndarray, *, logits: bool, name: str) -> np.ndarray:
    """One score per input -> [1 - p, p] rows; p = sigmoid(y) for a logit. A value outside 0..1 read as a
    probability is refused: the file gives logits (`--logits`)."""
    y = np.asarray(y, np.float64)
    if logits:
        p = 1.0 / (1.0 + np.exp(-y))
    else:
        bad = y[(y < -1e-6) | (y > 1.0 + 1e-6)]
        if bad.size:
            raise ContractError(f"{name} gives one score, {float(bad[0]):.4g}, outside 0..1: it is a logit; "
                                "pass --logits")
        p = np.clip(y, 0.0, 1.0)
    return np.stack([1.0 - p, p], axis=1).astype(np.float32)
