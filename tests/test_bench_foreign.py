"""`tledge bench` of a file made elsewhere whose int8 input has no quantisation: its contract needs --mean/--std (as
`tledge run` says: "pixel - 128 is --mean 128 --std 1"), and bench did not take them, so the file could not be
measured at all. Bench now takes run's options for files made elsewhere. A tiny ONNX graph: no converter."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from tledge.cli import main  # noqa: E402


def _int8_input(path: Path) -> Path:
    """int8 pixels (1, 8, 8, 3), no quantisation -> softmax([m, -m]) of their mean m."""
    nodes = [helper.make_node("Cast", ["pixels"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["x"], ["m4"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Reshape", ["m4", "shape"], ["m"]),
             helper.make_node("Neg", ["m"], ["n"]),
             helper.make_node("Concat", ["m", "n"], ["pair"], axis=1),
             helper.make_node("Softmax", ["pair"], ["scores"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("pixels", TensorProto.INT8, [1, 8, 8, 3])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2])],
                              initializer=[helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("same_process", [True, False])
def test_an_int8_input_without_quantisation_is_measured_with_mean_and_std(tmp_path, capsys, same_process):
    f = _int8_input(tmp_path / "i8in.onnx")
    extra = ["--same-process"] if same_process else []  # (the options reach the measuring process too)
    assert main(["bench", str(f), "--runs", "2", "--warmup", "0", "--json", "--mean", "128", "--std", "1",
                 *extra]) == 0
    (r,) = json.loads(capsys.readouterr().out)
    assert "error" not in r and r["input"] == "[1, 8, 8, 3] int8" and r["p50_ms"] > 0, r


def test_without_them_bench_says_what_run_says(tmp_path, capsys):
    f = _int8_input(tmp_path / "i8in.onnx")
    assert main(["bench", str(f), "--runs", "2", "--warmup", "0", "--same-process"]) == 2
    assert "pixel - 128 is --mean 128 --std 1" in capsys.readouterr().err
