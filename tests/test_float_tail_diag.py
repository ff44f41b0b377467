"""benchmarks/float_tail_diag.py: the flip and margin-error figures it reports (docs/int8-fidelity.md,
"Float tail"), on hand-made probabilities (no TensorFlow)."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "float_tail_diag.py"


@pytest.fixture(scope="module")
def diag():
    spec = importlib.util.spec_from_file_location("tledge_float_tail_diag", PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_flips_and_margin_errors_against_the_reference(diag):
    ref = np.array([[0.7, 0.3, 0.0], [0.52, 0.48, 0.0], [0.1, 0.9, 0.0], [0.2, 0.5, 0.3]])
    out = np.array([[0.7, 0.3, 0.0], [0.47, 0.53, 0.0], [0.15, 0.85, 0.0], [0.2, 0.35, 0.45]])
    s = diag.stats(ref, out)
    assert s["flips"] == 2 and s["flip_idx"] == [1, 3] and s["n"] == 4
    # margin = p(top of the reference) - best other: ref 0.4, 0.04, 0.8, 0.2; out 0.4, -0.06, 0.7, -0.1
    assert s["flip_ref_margin"] == [0.04, 0.2]
    assert s["flip_err"] == [0.1, 0.3]
    assert s["err_max"] == pytest.approx(0.3) and s["err_median"] == pytest.approx(0.1)
    same = diag.stats(ref, ref)
    assert same["flips"] == 0 and same["err_max"] == 0.0
