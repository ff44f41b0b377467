"""`--preprocess auto`: try each known normalisation on labelled images, keep the best."""
from __future__ import annotations

import warnings

import numpy as np

from tledge.backbones import MODES
from tledge.contract import DECISION
from tledge.errors import ContractError, TledgeWarning


def choose_preprocessing(lm, cfg, labels) -> str:
    from tledge.export import loader, resolve
    from tledge.export.imagesets import load_pixels

    if not cfg.val:
        raise ContractError("--preprocess auto needs labelled --val images (class folders)")
    scores = {}
    pixels = y = None
    for mode in MODES:
        contract, add = resolve.resolve_contract(lm, preprocess=mode, input_size=cfg.input_size, labels=labels)
        if pixels is None:
            pixels, y = load_pixels(cfg.val, contract, min(cfg.val_limit, 256), labels)
            if y is None:
                raise ContractError("--preprocess auto needs --val images in class folders")
        serve, _ = loader.trace(lm, contract, add)
        out = loader.run_reference(serve, pixels)  # multi-label: the folder's label given (its argmax was an
        scores[mode] = float(np.mean(out[np.arange(len(y)), y] > DECISION if lm.sigmoid_scores else  # always-on
                                     np.argmax(out, 1) == y))  # label: a right model refused as "near chance")
    best = max(scores, key=lambda m: scores[m])
    n_classes = max(len(labels), int(y.max()) + 1)
    summary = ", ".join(f"{m} {a:.3f}" for m, a in sorted(scores.items(), key=lambda kv: -kv[1]))
    from tledge import log

    log.note(f"--preprocess auto: chose '{best}' (Keras accuracy by mode: {summary})")
    if scores[best] <= (0.6 if lm.sigmoid_scores else 1.0 / n_classes + 0.1):  # (a label each: half given by chance)
        msg = (f"--preprocess auto: the best preprocessing ({best}) gives Keras accuracy {scores[best]:.3f} on "
               f"{cfg.val}, near chance for {n_classes} classes: the preprocessing, the labels or the images "
               "are probably wrong")
        if not getattr(cfg, "force", False):
            raise ContractError(msg + "; nothing was exported (--force exports anyway)")
        warnings.warn(msg + "; exporting anyway (--force)", TledgeWarning, stacklevel=2)
        return best
    tied = [m for m in MODES if m != best and scores[m] == scores[best]]
    if tied:  # the val images cannot tell them apart: the choice is an order, which the user should know
        warnings.warn(f"--preprocess auto: {', '.join(tied)} score{'s' if len(tied) == 1 else ''} the same as "
                      f"'{best}' ({scores[best]:.3f}) on {cfg.val}; '{best}' was kept as the first in "
                      f"{', '.join(MODES)}: pass --preprocess MODE if you know the model's", TledgeWarning,
                      stacklevel=2)
    return best
