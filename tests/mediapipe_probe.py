"""A TFLite "classifier" whose scores are its input pixels (one RESHAPE), with standard metadata: MediaPipe
Tasks ImageClassifier then returns the exact tensor its own image-to-tensor step made, one category per
pixel value. Built with the TFLite schema's object API and flatbuffers only (no TensorFlow), so the
MediaPipe venv can make it. Used by tests/test_clients_mediapipe.py.
"""
from __future__ import annotations

import numpy as np


def identity_classifier(height: int, width: int, dtype: str = "float32") -> bytes:
    """A .tflite taking [1, H, W, 3] `dtype` pixels (uint8: scale 1, zero point 0) and returning them as
    [1, H*W*3] scores, with the standard metadata MediaPipe needs (RGB image, mean 0 / std 1)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    from tledge.contract import Contract, Quant
    from tledge.export.metadata import embed_tflite

    ttype = schema.TensorType.UINT8 if dtype == "uint8" else schema.TensorType.FLOAT32
    n = height * width * 3
    model = schema.ModelT()
    model.version = 3
    model.description = "tledge MediaPipe probe"
    model.buffers = [schema.BufferT(), schema.BufferT(), schema.BufferT()]
    model.buffers[1].data = list(np.array([1, n], np.int32).tobytes())

    def tensor(name, shape, ttype_, buffer, quant=False):
        t = schema.TensorT()
        t.name, t.shape, t.type, t.buffer = name, list(shape), ttype_, buffer
        if quant:
            q = schema.QuantizationParametersT()
            q.scale, q.zeroPoint = [1.0], [0]
            t.quantization = q
        return t

    sg = schema.SubGraphT()
    quant = dtype == "uint8"
    sg.tensors = [tensor("pixels", (1, height, width, 3), ttype, 0, quant),
                  tensor("shape", (2,), schema.TensorType.INT32, 1),
                  tensor("scores", (1, n), ttype, 2, quant)]
    sg.inputs, sg.outputs = [0], [2]
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1], [2]
    sg.operators = [op]
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.RESHAPE
    code.version = 1
    model.operatorCodes = [code]
    model.subgraphs = [sg]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    q = Quant(1.0, 0, "uint8") if quant else None
    contract = Contract(height, width, input_dtype=dtype, baked=True, output="logits",
                        input_quant=q, output_quant=q)
    return embed_tflite(bytes(builder.Output()), contract)


def mediapipe_tensor(classifier, rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """The HxWx3 tensor MediaPipe made from `rgb`, read back through an identity_classifier's scores."""
    import mediapipe as mp

    cats = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))) \
        .classifications[0].categories
    out = np.zeros(height * width * 3, np.float32)
    for c in cats:
        out[c.index] = c.score
    return out.reshape(height, width, 3)
