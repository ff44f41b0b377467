"""Files made elsewhere whose inputs or outputs tledge could not feed or read right, each giving wrong scores with
exit 0: an integer input without quantisation (normalised floats cast to uint8 went in as 0 or 1; raw pixels
cast to int8 turned 204 into -52), a second input left at zeros, logits from a many-class file printed as scores,
a foreign file copied into an export folder taking the export's tledge.json (its --preprocess refused). Tiny ONNX
graphs built with onnx.helper: no converter is what is tested."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from tiny import TINY, images_of, CLASSES

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from tledge.cli import main  # noqa: E402
from tledge.errors import ContractError, ModelLoadError, TledgeWarning  # noqa: E402
from tledge.runtime import load  # noqa: E402

IMG = str(images_of(CLASSES[0])[0])


def _save(path: Path, nodes, inputs, outputs) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _mean_logits(path: Path, dtype=TensorProto.FLOAT, shape=(1, 8, 8, 3), extra_input=False, softmax=True) -> Path:
    """pixels -> mean m -> [m, -m] (scaled), softmaxed unless `softmax` is False (then logits)."""
    nodes = [helper.make_node("Cast", ["pixels"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["x"], ["m4"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Reshape", ["m4", "shape"], ["m"]),
             helper.make_node("Neg", ["m"], ["n"]),
             helper.make_node("Concat", ["m", "n"], ["pair"], axis=1),
             helper.make_node("Mul", ["pair", "k"], ["logits"])]
    inits = [helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 1]),
             helper.make_tensor("k", TensorProto.FLOAT, [], [0.05])]
    inputs = [helper.make_tensor_value_info("pixels", dtype, list(shape))]
    last = "logits"
    if extra_input:
        inputs.append(helper.make_tensor_value_info("temp", TensorProto.FLOAT, [1, 2]))
        nodes.append(helper.make_node("Add", ["logits", "temp"], ["logits2"]))
        last = "logits2"
    nodes.append(helper.make_node("Softmax" if softmax else "Identity", [last], ["scores"], axis=1)
                 if softmax else helper.make_node("Identity", [last], ["scores"]))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_uint8_input_without_quantisation_takes_raw_pixels_only(tmp_path):
    f = _mean_logits(tmp_path / "u8.onnx", TensorProto.UINT8)
    top = load(f).classify(IMG, top_k=2)
    assert top[0].score > 0.5 and top[0].index == 0  # runs, on raw pixels
    for opts in ({"preprocess": "tf"}, {"mean": "127.5", "std": "127.5"}):
        with pytest.raises(ContractError, match=r"uint8 input has no quantisation.*maps pixels to -1\.\.1: it takes "
                                                r"raw pixels"):
            load(f, **opts)


def test_an_int8_input_without_quantisation_is_refused_unless_told(tmp_path):
    f = _mean_logits(tmp_path / "i8.onnx", TensorProto.INT8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and not "a float-input model ... feeding raw 0..255 pixels"
        with pytest.raises(ContractError, match=r"int8 input has no quantisation.*0\.\.255: pixel - 128 is --mean 128 "
                                                r"--std 1"):
            load(f)
    m = load(f, mean="128", std="1")
    x = m.to_input(IMG)
    assert x.dtype == np.int8 and x.min() < 0 < x.max()


def test_a_second_input_is_refused_and_other_outputs_said(tmp_path, capsys):
    f = _mean_logits(tmp_path / "two.onnx", extra_input=True)
    with pytest.raises(ModelLoadError, match=r"two.onnx has 2 inputs \(pixels, temp\): tledge feeds one image input"):
        load(f, preprocess="raw")
    assert main(["run", str(f), "--source", IMG, "--preprocess", "raw"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "2 inputs" in err, err


def test_logits_from_a_many_class_file_are_refused_as_scores(tmp_path):
    f = _mean_logits(tmp_path / "logits.onnx", softmax=False)
    with pytest.raises(ContractError, match=r"scores outside 0\.\.1 \(.*\): they are logits; pass --logits"):
        load(f, preprocess="raw").classify(IMG)
    top = load(f, preprocess="raw", logits=True).classify(IMG, top_k=2)
    assert 0.5 < top[0].score < 1.0 and abs(sum(p.score for p in top) - 1.0) < 1e-5


def test_a_file_copied_into_an_export_folder_does_not_take_its_contract(tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(TINY, folder, ignore=shutil.ignore_patterns("foreign", "images"))
    f = _mean_logits(folder / "other.onnx", shape=(1, 8, 8, 3))
    m = load(f, preprocess="tf")  # was refused: "this file carries its own tledge contract"
    assert m.load_info.contract_origin == "inferred" and m.contract.norm.value == "tf" and not m.contract.baked
    assert any("not listed in manifest.json" in n for n in m.load_info.notes)
    assert load(folder / "model_fp32.onnx").load_info.contract_origin == "embedded"


@pytest.mark.filterwarnings("ignore:a float-input model made elsewhere:tledge.errors.TledgeWarning")
def test_bench_takes_an_input_size_for_a_dynamic_file(tmp_path, capsys):
    f = _mean_logits(tmp_path / "dyn.onnx", shape=(1, "h", "w", 3))
    assert main(["bench", str(f), "--runs", "2", "--warmup", "0", "--same-process"]) == 2
    assert "pass --input-size" in capsys.readouterr().err
    assert main(["bench", str(f), "--runs", "2", "--warmup", "0", "--same-process", "--input-size", "16x16"]) == 0


def test_a_float16_input_is_held_to_fp16s_budget(tmp_path):
    from tledge.export.check import precision_of

    pytest.importorskip("tensorflow")  # tledge.export
    f = _mean_logits(tmp_path / "f16.onnx", TensorProto.FLOAT16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TledgeWarning)  # a float input and no preprocessing: raw pixels, said
        assert precision_of(load(f)) == "fp16"
        assert precision_of(load(_mean_logits(tmp_path / "f32.onnx"))) == "fp32"


def test_a_quantised_input_fed_beyond_its_range_is_said():
    coral = TINY.parents[2].parent / "shared" / "assets" / "coral_tflite_classifiers" / \
        "mobilenet_v1_0.5_160_quant.tflite"
    if not coral.is_file():
        pytest.skip("../shared/assets/coral_tflite_classifiers not here")
    with pytest.warns(TledgeWarning, match=r"maps pixels to 0\.\.255, and the uint8 input's quantisation holds "
                                           r"-1\.\.0\.9922: values beyond are clipped"):
        load(coral, preprocess="raw")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load(coral)  # what the quantisation describes: nothing to say


def test_an_int8_input_described_by_its_standard_metadata_takes_what_it_says():
    """An int8 input without quantisation whose NormalizationOptions say mean 128 / std 1: read as such (the new
    refusal had ignored the metadata and asked for --mean 128 --std 1, which it already says)."""
    from tledge.runtime.backends import TensorInfo
    from tledge.runtime.foreign import infer_contract
    from tledge.std_metadata import StandardMetadata, TensorMd

    inp, out = TensorInfo("x", (1, 8, 8, 3), "int8"), TensorInfo("y", (1, 3), "float32")
    md = StandardMetadata(inputs=(TensorMd(mean=(128.0,), std=(1.0,)),))
    c = infer_contract(inp, out, standard=md)
    assert (c.norm.value, set(c.mean), set(c.std)) == ("custom", {128.0}, {1.0})
    with pytest.raises(ContractError, match="int8 input has no quantisation"):
        infer_contract(inp, out, standard=StandardMetadata())
