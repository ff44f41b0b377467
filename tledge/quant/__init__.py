"""int8 techniques that work on the converted graph or on any loader's model (issue 11).

- `onnx_bias`: bias correction on the float ONNX graph for its int8 weights (rungs onnx-bias, repaired+bias);
- `saturation`: replays onnxruntime's AVX2 u8 x s8 pair sums to check a QDQ file for int16 saturation;
- `rebuild`: a verified Keras 3 copy of a tf_keras model, so the Keras-level repairs apply;
- `kernels`: each int8 ONNX file on onnxruntime's x86 kernel paths at export (a note with the CPU flags).

The Keras-level repairs of issue 7 (repair, selective, explain, cle, qat, _graph) still live in
tledge/export; moving them here is not done yet.
"""
