"""The int8 sensitivity search on independent (multi-label) scores: it log-softmaxed each sigmoid row and judged the
argmax, so a layer that put labels on the other side of 0.5 counted as harmless (session 42's note). It now scores
label sets, each label by its log-odds margin, as parity does."""
from __future__ import annotations

import numpy as np
import pytest

from tledge.quant import sensitivity

REF = np.array([[0.9, 0.6, 0.1], [0.8, 0.3, 0.2], [0.05, 0.95, 0.7], [0.2, 0.1, 0.9]])


class Fixed(sensitivity.Evaluator):
    """An evaluator whose "graph" is the array of outputs it is given (no onnxruntime run)."""

    def outputs(self, model):
        return model


def test_label_sets_not_the_argmax_are_scored():
    out = REF.copy()
    out[0, 1] = 0.45  # image 0 loses a label; its argmax (label 0) is unchanged
    argmax = Fixed(REF, np.zeros((4, 1))).score(out)
    assert argmax.agreement == 1.0  # what the search measured before
    sets = Fixed(REF, np.zeros((4, 1)), independent=True).score(out)
    assert sets.agreement == 0.75 and sets.of == "label sets" and "label sets agreement 0.750" in sets.text()
    same = Fixed(REF, np.zeros((4, 1)), independent=True).score(REF.copy())
    assert same.agreement == 1.0 and same.margin_rmse == 0.0 and same.expected > 0.999


def test_expected_agreement_falls_as_margins_move_towards_the_decision():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0.02, 0.98, size=(200, 5))
    ev = Fixed(ref, np.zeros((200, 1)), independent=True)
    logodds = np.log(ref) - np.log1p(-ref)
    small, large = (1 / (1 + np.exp(-(logodds + rng.normal(0, s, ref.shape)))) for s in (0.05, 0.8))
    a, b = ev.score(small), ev.score(large)
    assert a.expected > b.expected and a.margin_rmse < b.margin_rmse
    assert abs(b.expected - b.agreement) < 0.1  # the estimate tracks the measured label-set agreement


def test_the_export_searches_a_multilabel_model_by_its_label_sets(tiny_model, shapes_dataset, tmp_path, monkeypatch):
    """The wiring: a sigmoid-headed model's export runs the search with `independent`, and parity.md says what the
    simulated figures count."""
    import keras

    from tledge.export import fidelity
    from tledge.export.parity import Thresholds
    from tledge.export.pipeline import ExportConfig, export

    model = keras.models.clone_model(tiny_model["model"])
    model.set_weights(tiny_model["model"].get_weights())
    model.layers[-1].activation = keras.activations.sigmoid
    path = tmp_path / "multi.keras"
    model.save(path)
    seen = []

    class Spy(sensitivity.Evaluator):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs.get("independent"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(sensitivity, "Evaluator", Spy)
    monkeypatch.setattr(fidelity, "LADDER", (fidelity.Rung("repaired+sensitive", mixed=True),))
    cfg = ExportConfig(out=tmp_path / "out", int8=True, calib=str(shapes_dataset / "train"),
                       val=str(shapes_dataset / "val"), formats=("onnx",),
                       thresholds={"int8": Thresholds(max_abs=1e-9, min_agreement=1.0)})
    with pytest.warns(Warning):
        export(path, cfg)
    assert seen and all(seen), seen
    md = (tmp_path / "out" / "parity.md").read_text()
    assert "label sets agreement" in md
    assert "kernel paths" in md and "label-set agreement with the default session" in md


def test_kernel_paths_compare_label_sets(monkeypatch):
    """The int8 ONNX file's kernel-path check (default session vs x64quantprecision) counted argmax flips only."""
    from tiny import TINY, need

    from tledge.contract import same_decision
    from tledge.quant import kernels

    need("model_int8.onnx")
    out = REF.copy()
    out[0, 1] = 0.45
    assert same_decision(REF, out).all() and list(same_decision(REF, out, True)) == [False, True, True, True]
    monkeypatch.setattr(kernels, "run_paths", lambda *a: {"default": REF, "x64quantprecision": out, "reference": REF})
    note, same = kernels.kernel_check(TINY / "model_int8.onnx", np.zeros((4, 1)))
    assert same and "top-1 agreement with the default session, x64quantprecision 1.000" in note
    note, same = kernels.kernel_check(TINY / "model_int8.onnx", np.zeros((4, 1)), independent=True)
    assert not same and "label-set agreement with the default session, x64quantprecision 0.750" in note
