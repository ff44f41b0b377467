"""int8 TFLite ops LiteRT's CPU delegate has no int8 kernel for (tledge.export.tflite.CPU_FLOAT_OPS: HARD_SWISH)
stay float on CPU targets, so XNNPACK runs the whole graph as one partition; int8-only targets keep them int8.

A tiny trained MobileNetV3-like net (hard-swish activations) exported twice, for a CPU and for an int8-only target.
"""
from __future__ import annotations

import collections

import numpy as np
import pytest

pytest.importorskip("tensorflow")

HARD_SWISH_LAYERS = 3


def _hard_swish_model(seed: int = 0):
    import keras

    from tledge.layers import Preprocess

    keras.utils.set_random_seed(seed)
    inp = keras.Input((48, 48, 3), name="pixels")
    x = Preprocess("tf", channels=3, name="preprocess")(inp)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same")(x)
    x = keras.layers.Activation("hard_swish")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.Activation("hard_swish")(x)
    x = keras.layers.Conv2D(32, 1, strides=2)(x)
    x = keras.layers.Activation("hard_swish")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))


@pytest.fixture(scope="module")
def exports(shapes_dataset, tmp_path_factory):
    from conftest import train_tiny

    from tledge.contract import Contract
    from tledge.export.pipeline import ExportConfig, export

    contract = Contract(48, 48, norm="tf", baked=True, input_dtype="float32", labels=("circle", "hstripes", "vstripes"))
    d = tmp_path_factory.mktemp("hard_swish")
    train_tiny(_hard_swish_model(), shapes_dataset / "train", contract, epochs=40).save(d / "model.keras")
    out = {}
    for name, int8_only in (("cpu", False), ("int8_only", True)):
        cfg = ExportConfig(out=d / name, formats=("tflite",), int8=True, repair=False, int8_only=int8_only,
                           calib=str(shapes_dataset / "train"), val=str(shapes_dataset / "val"))
        out[name] = export(d / "model.keras", cfg)
    return out


def _partitions(path_or_bytes) -> tuple[int, collections.Counter]:
    """(XNNPACK partitions, op types) of a TFLite file as LiteRT's default interpreter runs it."""
    from ai_edge_litert.interpreter import Interpreter

    it = (Interpreter(model_content=path_or_bytes, num_threads=1) if isinstance(path_or_bytes, bytes)
          else Interpreter(model_path=str(path_or_bytes), num_threads=1))
    it.allocate_tensors()
    ops = collections.Counter(d["op_name"] for d in it._get_ops_details())
    return ops["DELEGATE"], ops


def test_cpu_int8_file_keeps_hard_swish_float_in_one_partition(exports):
    from tledge.export import tflite
    from tledge.metadata import read_tflite_contract

    path = exports["cpu"].out / "model_int8.tflite"
    data = path.read_bytes()
    assert tflite.float_op_counts(data, tflite.CPU_FLOAT_OPS) == {"HARD_SWISH": HARD_SWISH_LAYERS}
    assert read_tflite_contract(data).extra["cpu_float_ops"] == {"HARD_SWISH": HARD_SWISH_LAYERS}
    partitions, ops = _partitions(path)
    assert ops["HARD_SWISH"] == HARD_SWISH_LAYERS and partitions == 1
    row = next(r for r in exports["cpu"].report.results if r.file == "model_int8.tflite")
    assert row.top1_agreement >= 0.9  # a real int8 file of a trained model, not a float one in disguise
    assert row.max_abs_error > 0
    said = [n for n in exports["cpu"].report.notes if "keeps 3 HARD_SWISH ops float" in n]
    assert len(said) == 1 and said[0].startswith("model_int8.tflite"), exports["cpu"].report.notes


def test_int8_only_file_keeps_every_op_int8(exports):
    from tledge.export import tflite
    from tledge.metadata import read_tflite_contract

    path = exports["int8_only"].out / "model_int8.tflite"
    data = path.read_bytes()
    assert tflite.float_op_counts(data, tflite.CPU_FLOAT_OPS) == {}
    assert "cpu_float_ops" not in read_tflite_contract(data).extra
    partitions, _ = _partitions(path)
    assert partitions > 1  # why the CPU file keeps them float: each int8 HARD_SWISH cuts XNNPACK's graph
    assert not [n for n in exports["int8_only"].report.notes if "HARD_SWISH" in n]


def test_float_op_counts_ignores_float_files(exports):
    from tledge.export import tflite

    fp32 = (exports["cpu"].out / "model_fp32.tflite").read_bytes()
    assert tflite.float_op_counts(fp32, tflite.CPU_FLOAT_OPS) == {"HARD_SWISH": HARD_SWISH_LAYERS}
    from tledge.metadata import read_tflite_contract

    assert "cpu_float_ops" not in read_tflite_contract(fp32).extra  # only int8 files record what they keep float


ACTIVATIONS = {"HARD_SWISH": lambda L: L.Activation("hard_swish"), "GELU": lambda L: L.Activation("gelu"),
               "PRELU": lambda L: L.PReLU(shared_axes=[1, 2])}


@pytest.mark.parametrize("op", sorted(ACTIVATIONS))
def test_each_cpu_float_op_cuts_xnnpacks_graph_when_int8(op):
    """Why each CPU_FLOAT_OPS entry is there, checked against the installed LiteRT: as int8 the op cuts XNNPACK's
    graph into several partitions, kept float it does not. (Structure only: random weights are enough here.) When a
    LiteRT release delegates the int8 op, this fails and the entry should go."""
    import keras
    import tensorflow as tf

    from tledge.export import tflite

    assert set(ACTIVATIONS) == set(tflite.CPU_FLOAT_OPS)
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = L.Rescaling(1 / 127.5, -1)(inp)
    for _ in range(2):
        x = ACTIVATIONS[op](L)(L.Conv2D(8, 3, padding="same")(x))
    model = keras.Model(inp, L.Dense(3, activation="softmax")(L.GlobalAveragePooling2D()(x)))
    fn = tf.function(lambda t: model(t)).get_concrete_function(tf.TensorSpec([None, 16, 16, 3], tf.float32))
    calib = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3)).astype(np.float32)
    int8, kept = (tflite.convert(fn, "int8", calib, float_ops=ops) for ops in ((), tflite.CPU_FLOAT_OPS))
    assert tflite.float_op_counts(int8, tflite.CPU_FLOAT_OPS) == {}
    assert tflite.float_op_counts(kept, tflite.CPU_FLOAT_OPS) == {op: 2}
    assert [_partitions(d)[0] for d in (int8, kept)] == [3, 1]


def test_an_int8_only_target_refuses_ops_the_converter_left_float(shapes_dataset, tmp_path):
    """The converter keeps ops it has no int8 kernel for (ELU here) float without a word: `--device coral-usb`
    shipped such a file as PASSED, and the Edge TPU would hand everything from the ELU on to its CPU. The int8 file
    is a conversion failure for int8-only targets, named; the same model for a CPU target keeps its ELU float."""
    import keras

    from tledge.export import tflite
    from tledge.export.pipeline import ExportConfig, export

    keras.utils.set_random_seed(0)
    inp = keras.Input((48, 48, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = keras.layers.ELU()(keras.layers.Conv2D(8, 3, strides=2)(x))
    keras.Model(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))).save(
        tmp_path / "elu.keras")
    results = {}
    for name, int8_only in (("coral", True), ("cpu", False)):
        cfg = ExportConfig(out=tmp_path / name, formats=("tflite",), int8=True, repair=False, int8_only=int8_only,
                           calib=str(shapes_dataset / "train"), val=str(shapes_dataset / "val"))
        results[name] = {r.file: r for r in export(tmp_path / "elu.keras", cfg).report.results}
    failures = " ".join(results["coral"]["model_int8.tflite"].failures)
    assert "conversion failed: the converter left ELU x1 float" in failures, failures
    assert not (tmp_path / "coral" / "model_int8.tflite").exists()
    cpu = [p for p in (tmp_path / "cpu" / "model_int8.tflite", tmp_path / "cpu" / "rejected" / "model_int8.tflite")
           if p.is_file()]  # made either way (an untrained net may miss its parity budget)
    assert cpu and tflite.float_op_counts(cpu[0].read_bytes()).get("ELU") == 1
