"""A str where the int8 techniques take a sequence of names is one name, not its letters (before:
registry.check("weight-repair", ...) said "unknown technique 'w'", repair.apply(steps="fold") "unknown repair
steps ['f', 'o', 'l', 'd']")."""
import numpy as np
import pytest

from tledge.quant import registry


def test_registry_check_takes_one_name_as_a_str():
    assert registry.check("weight-repair", "onnx", int8_only=False) == registry.check(["weight-repair"], "onnx",
                                                                                        int8_only=False)
    assert registry.check("nope", "onnx", int8_only=False).startswith("unknown technique 'nope'")


def test_repair_takes_one_step_as_a_str():
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    from tledge.quant import repair

    inp = keras.Input((8, 8, 3))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(2, 3)(inp))
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    calib = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    fixed, log = repair.apply(model, calib, steps="fold")
    assert log.steps == ("fold",) and log.folded_bn == 1 and not log.layers
    np.testing.assert_allclose(repair.predict(fixed, calib), repair.predict(model, calib), rtol=1e-4, atol=1e-3)
