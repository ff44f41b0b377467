"""The sensitivity tests' shared QDQ graphs of the tiny trained model (test_sensitivity.py, and the lab's role groups in
test_lab_role_groups.py): a module-scoped `graphs` fixture and a helper that damages one activation's grid."""
import functools

import numpy as np
import pytest


@pytest.fixture(scope="module")
def graphs(tiny_model, shapes_dataset, tmp_path_factory):
    """(float ONNX path, QDQ model fit on 2/3 of the calibration images, held-out pixels, quantiser)."""
    import onnx

    from tledge.export import onnx as onnx_export
    from tledge.images import labelled_images
    from tledge.quant import sensitivity
    from lab.quant import quick

    d = tmp_path_factory.mktemp("sensitivity")
    files, _, _ = labelled_images(shapes_dataset / "train")
    calib = np.stack([tiny_model["contract"].prepare(f) for f in files]).astype(np.float32)
    src = d / "fp32.onnx"
    src.write_bytes(quick.onnx_float(tiny_model["model"]))
    quantize = functools.partial(onnx_export.quantize_int8, scheme=onnx_export.SCHEMES["u8s8"])
    fit, held = sensitivity.split(len(calib))
    quantize(src, d / "q.onnx", calib[fit])
    return src, onnx.load(str(d / "q.onnx")), calib, held, quantize, d


def damaged(qdq, tensor: str, factor: float = 32.0):
    """A copy with `tensor`'s activation grid `factor` times coarser (same zero point)."""
    import copy

    from onnx import numpy_helper

    model = copy.deepcopy(qdq)
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    init = next(i for i in model.graph.initializer if i.name == q.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name))
    return model
