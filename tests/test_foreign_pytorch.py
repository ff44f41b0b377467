"""ONNX classifiers made with PyTorch, as helper 90 brought them (session 36): each case gave wrong scores with
exit 0. A one-output logit that fell in 0..1 was read as a probability; --logits on a Softmax output applied a
second softmax; --preprocess with a torchvision backbone name took Keras's preprocessing for it; torchvision's
Normalize values (for 0..1 pixels) were taken in 0..255 pixel units; one label for one output named 1 - p;
a JSON labels file was read as lines; a [N, C, 1, 1] output could take no labels. Tiny onnx.helper graphs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny import CLASSES, images_of

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from tledge.errors import ContractError  # noqa: E402
from tledge.runtime import load  # noqa: E402
from tledge.runtime.onnxgraph import output_op  # noqa: E402

IMG = str(images_of(CLASSES[0])[0])


def _model(path: Path, head: str, outputs: int = 1, producer: str = "pytorch", shape=None) -> Path:
    """NCHW float pixels -> mean m -> (m * k + b) per output, then `head` (Gemm-like Add, Sigmoid or Softmax)."""
    k = np.linspace(0.001, 0.002, outputs).astype(np.float32)
    nodes = [helper.make_node("ReduceMean", ["input.1"], ["m4"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Reshape", ["m4", "col"], ["m"]),
             helper.make_node("Mul", ["m", "k"], ["mk"]),
             helper.make_node("Add", ["mk", "b"], ["logits"])]
    last = "logits"
    if head in ("Sigmoid", "Softmax", "HardSigmoid"):
        nodes.append(helper.make_node(head, ["logits"], ["scores"], **({"axis": 1} if head == "Softmax" else {})))
        last = "scores"
    if shape:  # a 1x1-conv head with no flatten: [N, C, 1, 1]
        nodes.append(helper.make_node("Reshape", [last, "out_shape"], ["out4"]))
        last = "out4"
    inits = [helper.make_tensor("col", TensorProto.INT64, [2], [-1, 1]),
             helper.make_tensor("k", TensorProto.FLOAT, [outputs], k.tolist()),
             helper.make_tensor("b", TensorProto.FLOAT, [outputs], [0.1] * outputs),
             helper.make_tensor("out_shape", TensorProto.INT64, [4], [-1, outputs, 1, 1])]
    out_shape = ["batch_size", outputs, 1, 1] if shape else ["batch_size", outputs]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT,
                                                                         ["batch_size", 3, 16, 16])],
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, out_shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name=producer)
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_one_output_logit_in_0_1_is_a_logit(tmp_path):
    f = _model(tmp_path / "logit.onnx", "Gemm")
    assert output_op(f) == "Add"
    m = load(f, preprocess="torch")
    x = m.prepare(IMG)
    raw = float(m.backend.run(m.quantize(x[None]))[0].reshape(-1)[0])
    assert 0.0 < raw < 1.0  # the case that was read as a probability
    p = 1 / (1 + np.exp(-raw))
    top = m.classify([IMG], top_k=2)[0]
    assert {t.index: round(t.score, 5) for t in top} == {1: round(p, 5), 0: round(1 - p, 5)}
    for head in ("Sigmoid", "HardSigmoid"):  # (a HardSigmoid, a QLinearSigmoid, a function: probabilities too)
        s = _model(tmp_path / f"{head}.onnx", head)
        assert output_op(s) == head and load(s, preprocess="torch").contract.output.value == "probabilities"


def test_logits_on_a_softmax_output_is_refused(tmp_path):
    f = _model(tmp_path / "softmax.onnx", "Softmax", outputs=3)
    with pytest.raises(ContractError, match="leave out --logits"):
        load(f, preprocess="torch", logits=True)
    assert len(load(f, preprocess="torch").classify([IMG], top_k=3)[0]) == 3


def test_many_gemm_logits_in_0_1_are_logits_without_the_option(tmp_path):
    f = _model(tmp_path / "gemm3.onnx", "Gemm", outputs=3)  # session 37: shown as the scores, summing to 0.6
    m = load(f, preprocess="torch")
    raw = np.asarray(m.backend.run(m.quantize(m.prepare(IMG)[None]))[0], np.float64).reshape(-1)
    assert np.all((raw > 0) & (raw < 1)) and m.contract.output.value == "logits"
    assert sum(t.score for t in m.classify([IMG], top_k=3)[0]) == pytest.approx(1.0, abs=1e-5)


def test_a_keras_backbone_name_on_a_pytorch_file_is_refused(tmp_path):
    f = _model(tmp_path / "torch.onnx", "Gemm", outputs=3)
    for name in ("mobilenet_v3_small", "resnet50", "efficientnet_b0"):
        with pytest.raises(ContractError, match="made by PyTorch.*torch for torchvision"):
            load(f, preprocess=name)
    assert load(f, preprocess="torch", logits=True).contract.norm.value == "torch"  # a mode is taken as given
    other = _model(tmp_path / "tf2onnx.onnx", "Gemm", outputs=3, producer="tf2onnx")
    assert load(other, preprocess="mobilenet_v2", logits=True).contract.norm.value == "tf"


def test_normalize_values_for_0_1_pixels_are_refused(tmp_path):
    f = _model(tmp_path / "torch.onnx", "Gemm", outputs=3)
    with pytest.raises(ContractError, match="0..1 pixels.*multiply both by 255"):
        load(f, mean="0.485,0.456,0.406", std="0.229,0.224,0.225", logits=True)
    m = load(f, mean="123.675,116.28,103.53", std="58.395,57.12,57.375", logits=True)
    assert m.contract.norm.value == "custom"


def test_labels_one_for_one_output_json_and_a_4d_output(tmp_path):
    f = _model(tmp_path / "one.onnx", "Sigmoid")
    with pytest.raises(ContractError, match="1 label .*give two labels"):
        load(f, preprocess="torch", labels=["bees"])
    index = tmp_path / "imagenet_class_index.json"  # PyTorch's form, and a plain object, and a list
    index.write_text(json.dumps({"0": ["n01", "ants"], "1": ["n02", "bees"], "2": ["n03", "wasps"]}))
    plain = tmp_path / "labels.json"
    plain.write_text(json.dumps({"1": "bees", "0": "ants", "2": "wasps"}))
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps(["ants", "bees", "wasps"]))
    four = _model(tmp_path / "four.onnx", "Softmax", outputs=3, shape=True)
    for labels in (index, plain, listed):
        m = load(four, preprocess="torch", labels=str(labels))
        assert m.contract.labels == ("ants", "bees", "wasps")
        assert {t.label for t in m.classify([IMG], top_k=3)[0]} == {"ants", "bees", "wasps"}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"0": "ants", "2": "wasps"}))
    with pytest.raises(ContractError, match="keys must be the class indices"):
        load(four, preprocess="torch", labels=str(bad))
    bad.write_text(json.dumps(["ants", "bees\nhoney", "wasps"]))  # a text file cannot hold it; labels.txt broke
    with pytest.raises(ContractError, match="label 1 .*line break"):
        load(four, preprocess="torch", labels=str(bad))


def test_probabilities_averaged_by_an_add_are_probabilities(tmp_path):
    """An ensemble's average, 0.5 * p + 0.5 * p, ends in an Add, read as logits: its rows are distributions, and
    `tledge run` refused the file for a --logits nobody had passed (helper 109, session 39)."""
    f = _model(tmp_path / "softmax.onnx", "Softmax", outputs=3)
    m = onnx.load(str(f))
    m.graph.initializer.append(helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]))
    m.graph.node.extend([helper.make_node("Mul", ["scores", "half"], ["h"]),
                         helper.make_node("Add", ["h", "h"], ["avg"])])
    m.graph.output[0].name = "avg"
    onnx.save(m, str(tmp_path / "avg.onnx"))
    assert output_op(tmp_path / "avg.onnx") == "Add"
    avg, plain = load(tmp_path / "avg.onnx", preprocess="torch"), load(f, preprocess="torch")
    got = avg.classify([IMG], top_k=3)[0]
    assert [(t.index, round(t.score, 6)) for t in got] == [(t.index, round(t.score, 6))
                                                             for t in plain.classify([IMG], top_k=3)[0]]
    with pytest.raises(ContractError, match="leave out --logits"):  # asked for: still refused
        load(tmp_path / "avg.onnx", preprocess="torch", logits=True).classify([IMG])
