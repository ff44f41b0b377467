"""ONNX files in forms tledge does not write itself (helper 109, session 39): dynamically quantised files, weights
as external data, errors onnxruntime gives at length."""
from __future__ import annotations

import numpy as np
import pytest
from tiny import FOREIGN, TINY

from tledge.runtime import load

onnx = pytest.importorskip("onnx")
quantization = pytest.importorskip("onnxruntime.quantization")


def test_a_dynamically_quantised_file_runs_one_image_per_call(tmp_path):
    """DynamicQuantizeLinear takes its scale from the whole batch: classify() on a list gave another label than
    one image at a time (1 of 153)."""
    dyn = tmp_path / "dyn.onnx"
    quantization.quantize_dynamic(str(FOREIGN / "model_fp32.onnx"), str(dyn))
    from tledge.runtime.onnxgraph import op_types

    assert "DynamicQuantizeLinear" in op_types(dyn) and "DynamicQuantizeLinear" not in op_types(FOREIGN /
                                                                                              "model_fp32.onnx")
    m = load(dyn, preprocess="raw")
    assert m.fixed_batch == 1 and any("one image per call" in n for n in m.load_info.notes)
    images = sorted((TINY / "images").glob("*"))
    x = np.stack([m.prepare(f) for f in images])
    together = m.predict(x)
    alone = np.concatenate([m.backend.run(m.quantize(x[i:i + 1])) for i in range(len(x))])
    assert np.array_equal(together, alone.astype(np.float32))
    assert load(FOREIGN / "model_fp32.onnx", preprocess="raw").fixed_batch is None


def test_weights_in_external_data_count_in_the_size(tmp_path):
    from tledge.runtime.onnxgraph import size_with_data

    m = onnx.load(str(FOREIGN / "model_fp32.onnx"))
    onnx.save_model(m, str(tmp_path / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.data", size_threshold=256)
    total = (tmp_path / "m.onnx").stat().st_size + (tmp_path / "m.data").stat().st_size
    assert (tmp_path / "m.data").stat().st_size > 1000 and size_with_data(tmp_path / "m.onnx") == total
    model = load(tmp_path / "m.onnx", preprocess="raw")
    assert model.info()["size_bytes"] == total
    assert size_with_data(FOREIGN / "model_fp32.onnx") == (FOREIGN / "model_fp32.onnx").stat().st_size


def test_load_errors_say_the_reason_not_a_cut_c_plus_plus_signature(tmp_path):
    from onnx import TensorProto, helper

    from tledge.errors import ModelLoadError
    from tledge.runtime.backends import load_reason

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 99  # newer than any onnxruntime reads
    onnx.save(m, str(tmp_path / "new.onnx"))
    with pytest.raises(ModelLoadError, match="max supported IR version: \\d+: the file is newer than this onnxruntime"):
        load(tmp_path / "new.onnx", preprocess="raw")
    long = "x" * 400 + " the reason at the end"
    assert load_reason(RuntimeError(long)).endswith("the reason at the end") and len(load_reason(RuntimeError(long))) < 300
