"""Activation ranges cut by least squared error (tledge.quant.ranges, rung `repaired-stem6+mse`): the bound chosen,
and the same cut reaching the repair, the TFLite file and the ONNX file. Whether it helps is measured on real
models in benchmarks (docs/int8-fidelity.md, "Activation ranges by least squared error"); here: that each place
applies it, and that the rung runs end to end."""
import numpy as np
import pytest

from tledge.quant import ranges
from tledge.quant.fakequant import fake_quant


def test_best_hi_cuts_a_long_tail_and_keeps_a_flat_range():
    rng = np.random.default_rng(0)
    tail = np.abs(rng.standard_t(3, 200_000)).astype(np.float32)  # a heavy tail: rare large values set the max
    hi = ranges.best_hi(tail, 0.0, float(tail.max()))
    assert hi < 0.9 * tail.max()  # levels taken from values that hardly occur

    def err(top):
        return float(np.mean((fake_quant(tail.copy(), 0.0, top) - tail) ** 2))
    assert err(hi) < 0.8 * err(float(tail.max()))
    flat = rng.uniform(-1, 1, 200_000).astype(np.float32)
    assert ranges.best_hi(flat, -1.0, float(flat.max())) == pytest.approx(float(flat.max()))
    lo, cut = ranges.mse_range(tail - 1.0)
    assert lo == pytest.approx(float(tail.min()) - 1.0) and cut < tail.max() - 1.0
    assert ranges.minmax_range(tail) == (float(tail.min()), float(tail.max()))


pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def swish_model():
    """A small float model with a long-tailed swish input (weights random: this checks where ranges go, not
    accuracy), and float pixels to calibrate on."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, -1)(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="swish")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.Activation("swish")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(3, activation="softmax")(x)
    calib = np.random.default_rng(1).integers(0, 256, (24, 16, 16, 3)).astype(np.float32)
    return keras.Model(inp, out), calib


def _scales(tflite: bytes) -> dict[str, float]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=tflite)
    return {d["name"]: float(d["quantization"][0]) for d in it.get_tensor_details()
            if d["dtype"] in (np.int8, np.uint8) and d["quantization"][0] > 0}


def test_tflite_ranges_give_the_file_finer_grids(swish_model):
    from tledge.quant import selective

    model, calib = swish_model
    cal = selective.calibrate_tflite(model, calib)
    cut_cal, cut = ranges.tflite_ranges(cal, calib)
    assert cut > 0
    plain, cut_file = (_scales(selective.quantize_tflite(c)) for c in (cal, cut_cal))
    assert plain.keys() == cut_file.keys()
    finer = [n for n in plain if cut_file[n] < plain[n] * 0.999]
    coarser = [n for n in plain if cut_file[n] > plain[n] * 1.001]
    assert finer and not coarser
    assert len(finer) <= cut  # only the tensors it cut


def test_onnx_overrides_give_the_file_finer_grids(swish_model, tmp_path):
    import onnx
    from onnx import numpy_helper

    from lab.quant import quick
    from tledge.export import onnx as onnx_export

    model, calib = swish_model
    src = tmp_path / "f.onnx"
    src.write_bytes(quick.onnx_float(model))
    over = ranges.onnx_overrides(src, calib)
    assert over and all(set(v[0]) == {"rmin", "rmax"} and v[0]["rmin"] <= 0 < v[0]["rmax"] for v in over.values())
    assert not any(t in over for t in ranges.onnx_overrides(src, calib, skip=over))
    files = {}
    for kind in ("minmax", "mse"):
        dst = tmp_path / f"{kind}.onnx"
        onnx_export.quantize_int8(src, dst, calib, act_ranges=kind, scheme=onnx_export.SCHEMES["u8s8"])
        g = onnx.load(str(dst)).graph
        inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        files[kind] = {n.input[0]: float(inits[n.input[1]]) for n in g.node if n.op_type == "QuantizeLinear"
                       and n.input[1] in inits and inits[n.input[1]].size == 1}
    shared = files["minmax"].keys() & files["mse"].keys()
    assert shared
    assert any(files["mse"][t] < 0.999 * files["minmax"][t] for t in shared)
    assert not any(files["mse"][t] > 1.001 * files["minmax"][t] for t in shared)


def test_the_repair_simulates_the_cut_ranges(swish_model):
    from tledge.errors import ExportError
    from tledge.quant import repair
    from tledge.quant.kerasgraph import predict

    model, calib = swish_model
    a = repair.apply(model, calib, errors=False)[0]
    b = repair.apply(model, calib, errors=False, ranges="mse")[0]
    assert not np.array_equal(predict(a, calib[:4]), predict(b, calib[:4]))  # later layers fitted to other grids
    with pytest.raises(ExportError, match="unknown activation ranges"):
        repair.apply(model, calib, ranges="percentile")


def test_the_mse_rung_runs_end_to_end(tiny_model, shapes_dataset, tmp_path, monkeypatch):
    """The rung (here without a stem: the tiny model has too few layers for one) on both formats: its repair,
    the cut TFLite ranges and ONNX overrides, parity against the original, the contract's record."""
    from tledge.export import fidelity
    from tledge.export.parity import Thresholds
    from tledge.export.pipeline import ExportConfig, export

    calls = []
    for name in ("tflite_ranges", "onnx_overrides"):
        real = getattr(ranges, name)
        monkeypatch.setattr(ranges, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k))
    monkeypatch.setattr(fidelity, "LADDER", (fidelity.Rung("repaired+mse", ranges="mse"),))
    cfg = ExportConfig(out=tmp_path / "out", int8=True, calib=str(shapes_dataset / "train"),
                       val=str(shapes_dataset / "val"), thresholds={"int8": Thresholds(max_abs=1e-9, min_agreement=1.0)})
    with pytest.warns(Warning):
        res = export(tiny_model["keras"], cfg)
    rows = [r for r in res.report.fidelity if r["rung"] == "repaired+mse"]
    assert {r["file"] for r in rows} == {"model_int8.tflite", "model_int8.onnx"}
    for r in rows:
        assert "error" not in r, r
        assert r["agreement"] >= 0.8, r  # a working int8 model of the same classifier
    assert sorted(set(calls)) == ["onnx_overrides", "tflite_ranges"]
    assert fidelity.Rung("x", ranges="mse").techniques == ("weight-repair", "mse-ranges")
