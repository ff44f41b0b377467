"""What loading an exported ONNX file takes (parity.md's Clients section): opset and IR version, the oldest
onnxruntime implementing them, the oldest OpenCV dnn that reads it. A file of the int16 sensitivity rung is opset 21:
onnxruntime 1.16 / 1.17 (NVIDIA's JetPack builds) refused it and OpenCV 4.8 had no int16 tensors, and nothing said so."""
from __future__ import annotations

import numpy as np
import pytest
from tiny import TINY

from tledge import clients

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")


def test_the_usual_files_take_onnxruntime_1_13_and_opencv_4_7():
    for name in ("model_fp32.onnx", "model_int8.onnx"):
        r = clients.onnx_readers(TINY / name)
        assert (r["opset"], r["ir"], r["onnxruntime"], r["opencv"]) == (17, 8, "1.13", "4.7"), (name, r)
    section = {"opencv": {"version": "5", "images": 0, "files": [],
                          "readers": {"model_int8.onnx": clients.onnx_readers(TINY / "model_int8.onnx")}}}
    assert clients.notes(section) == []
    assert "- model_int8.onnx: onnxruntime >= 1.13 (opset 17, IR 8), OpenCV dnn >= 4.7" in clients.markdown(section)


def test_a_file_with_int16_activations_says_what_it_takes(tmp_path):
    import onnx
    from onnxruntime.quantization import QuantType

    from tledge.export.onnx import quantize_int8

    src = TINY / "model_fp32.onnx"
    relu = [n.output[0] for n in onnx.load(str(src)).graph.node if n.op_type in ("Relu", "Clip")][0]
    calib = np.load(TINY / "golden.npz")["pixels"][:8].astype(np.float32)
    dst = tmp_path / "model_int8.onnx"
    quantize_int8(src, dst, calib, overrides={relu: [{"quant_type": QuantType.QInt16}]})
    r = clients.onnx_readers(dst)
    assert (r["opset"], r["onnxruntime"], r["opencv"]) == (21, "1.18", "5.0"), r
    section = {"opencv": {"version": "5", "images": 0, "files": [], "readers": {"model_int8.onnx": r}}}
    (note,) = clients.notes(section)
    assert note.startswith("model_int8.onnx takes onnxruntime >= 1.18 (opset 21") and "JetPack" in note


def test_a_file_the_measured_opencv_refuses_is_not_said_to_load_in_it(tmp_path, monkeypatch):
    """OpenCV 5.1 refuses a U8S8 file whose int16 activation an int8-weight Conv writes (docs/int8-fidelity.md, "What
    OpenCV refuses": the tiny model with its last ReLU int16, as onnxruntime's quantiser writes it; quantize_int8 now
    writes that tensor float, tests/test_onnx_int16_opencv.py); by its opset and tensor types alone onnx_readers says
    OpenCV 5.0 reads it. The Clients section must report the refusal on the readers line too, not "OpenCV dnn >= 5.0"
    under a table saying it cannot load it."""
    cv2 = pytest.importorskip("cv2")
    import onnx
    from onnxruntime.quantization import QuantType

    from tledge.export.onnx import SCHEMES, quantize_int8

    src = onnx.load(str(TINY / "model_fp32.onnx"))
    last_relu = [n.output[0] for n in src.graph.node if n.op_type in ("Relu", "Clip")][-1]
    calib = np.load(TINY / "golden.npz")["pixels"][:8].astype(np.float32)
    dst = tmp_path / "model_int8.onnx"
    monkeypatch.setattr("tledge.quant.int16convs.float_int16_at_int8_convs", lambda model: [])  # the unfixed file
    quantize_int8(TINY / "model_fp32.onnx", dst, calib, scheme=SCHEMES["u8s8"],
                  overrides={last_relu: [{"quant_type": QuantType.QInt16}]})
    q = onnx.load(str(dst))
    del q.metadata_props[:]
    q.metadata_props.extend(src.metadata_props)  # the contract tledge run loads it by
    onnx.save(q, str(dst))
    try:
        net = cv2.dnn.readNetFromONNX(str(dst))
        net.setInput(calib[:1])
        net.forward()  # 5.1 refuses it here, not when reading
        pytest.skip(f"OpenCV {cv2.__version__} runs this file")
    except cv2.error:
        pass
    section = {"opencv": clients.opencv(tmp_path, ["model_int8.onnx"], calib)}
    r = section["opencv"]["readers"]["model_int8.onnx"]
    assert r["opencv"] is None and r["opencv_refused"] == cv2.__version__, r
    text = "\n".join(clients.markdown(section))
    assert "cannot load or run it" in text and f"OpenCV dnn {cv2.__version__} refused it" in text
    assert "OpenCV dnn >=" not in text
    notes = clients.notes(section)
    assert any("cannot load or run it" in n for n in notes) and not any("OpenCV dnn >=" in n for n in notes), notes
