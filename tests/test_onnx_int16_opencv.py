"""An int8 ONNX file with an int16 activation (the sensitivity rung's TensorQuantOverrides) loads, runs and agrees in
OpenCV 5.1's dnn. It fuses DequantizeLinear -> int8-weight Conv -> QuantizeLinear into an 8-bit convolution whatever
the activations' type: an int16 tensor the tiny model's last Conv wrote made it refuse the file at the first forward
(getTypes), and one between two Convs ran with wrong answers (top-1 1/3 of onnxruntime's). quantize_int8 now writes
such a tensor float, clipped to its int16 range (tledge.quant.int16convs); uint8-weight files keep their int16
tensors, which OpenCV computes right. Skipped where OpenCV runs the unfixed file as onnxruntime does."""
from __future__ import annotations

import numpy as np
import pytest
from tiny import TINY

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")
cv2 = pytest.importorskip("cv2")

PIXELS = np.load(TINY / "golden.npz")["pixels"].astype(np.float32)


def _relus() -> list[str]:
    import onnx

    return [n.output[0] for n in onnx.load(str(TINY / "model_fp32.onnx")).graph.node if n.op_type in ("Relu", "Clip")]


def _quantize(dst, tensor: str, scheme: str):
    from onnxruntime.quantization import QuantType

    from tledge.export.onnx import SCHEMES, quantize_int8

    quantize_int8(TINY / "model_fp32.onnx", dst, PIXELS[:8], scheme=SCHEMES[scheme],
                  overrides={tensor: [{"quant_type": QuantType.QInt16}]})
    return dst


def _ort(path) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: PIXELS})[0]


def _opencv(path) -> np.ndarray | None:
    """OpenCV's outputs image by image, or None when it refuses the file (reading it or at a forward)."""
    try:
        net = cv2.dnn.readNetFromONNX(str(path))
        rows = []
        for x in PIXELS:
            net.setInput(np.ascontiguousarray(x[None]))
            rows.append(np.asarray(net.forward(), np.float32).reshape(-1))
    except cv2.error:
        return None
    return np.stack(rows)


def _agree(a, b, atol: float) -> bool:
    return a is not None and a.shape == b.shape and bool(np.abs(a - b).max() < atol) and \
        bool(np.all(a.argmax(1) == b.argmax(1)))


def _int16_zero_points(path) -> int:
    import onnx

    m = onnx.load(str(path))
    return sum(i.data_type == onnx.TensorProto.INT16 for i in m.graph.initializer)


@pytest.mark.parametrize("relu", [0, 1, 2], ids=["first-conv-to-depthwise", "depthwise-to-pointwise",
                                                  "last-conv-to-pool"])
def test_a_u8s8_file_with_an_int16_activation_runs_in_opencv_as_in_onnxruntime(tmp_path, monkeypatch, relu):
    tensor = _relus()[relu]
    with monkeypatch.context() as m:  # the file as onnxruntime's quantiser writes it
        m.setattr("tledge.quant.int16convs.float_int16_at_int8_convs", lambda model: [])
        unfixed = _quantize(tmp_path / "unfixed.onnx", tensor, "u8s8")
    assert _int16_zero_points(unfixed) > 0
    int16 = _ort(unfixed)
    if _agree(_opencv(unfixed), int16, 1e-4):
        pytest.skip(f"OpenCV {cv2.__version__} runs the int16 file as onnxruntime does")
    fixed = _quantize(tmp_path / "model_int8.onnx", tensor, "u8s8")
    ours = _ort(fixed)
    theirs = _opencv(fixed)
    assert theirs is not None, f"OpenCV {cv2.__version__} refuses the file"
    assert _agree(theirs, ours, 1e-4), np.abs(theirs - ours).max()
    # onnxruntime's answers are the int16 file's: it ran those Convs float on int8 weights before too
    assert _agree(ours, int16, 1e-3), np.abs(ours - int16).max()


def test_the_tensor_keeps_its_int16_range_and_the_file_reads_in_older_opencv(tmp_path):
    """The Relu the quantiser folded into the int16 pair stays (a Clip from 0, not a tensor left negative), and a file
    with no int16 tensor left takes OpenCV 4.7 again (OpenCV 4.8 and 4.10 measured running it)."""
    import onnx
    from onnx import numpy_helper

    from tledge import clients

    tensor = _relus()[2]
    path = _quantize(tmp_path / "model_int8.onnx", tensor, "u8s8")
    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    (clip,) = [n for n in m.graph.node if n.op_type == "Clip" and n.input[0] == tensor]
    assert float(inits[clip.input[1]]) == 0.0 and float(inits[clip.input[2]]) > 0
    assert _int16_zero_points(path) == 0
    assert clients.onnx_readers(path)["opencv"] == "4.7"


def test_a_u8u8_file_keeps_its_int16_activation(tmp_path):
    """OpenCV does not fuse uint8-weight Convs: the U8U8 file keeps the int16 tensor, and OpenCV computes it right."""
    path = _quantize(tmp_path / "model_int8.onnx", _relus()[2], "u8u8-grid")
    assert _int16_zero_points(path) > 0
    ours, theirs = _ort(path), _opencv(path)
    assert _agree(theirs, ours, 1e-4)
