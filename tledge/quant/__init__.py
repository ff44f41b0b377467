"""int8 techniques that work on the converted graph or on any loader's model (issue 11).

- `onnx_bias`: bias correction on the float ONNX graph for its int8 weights (rungs onnx-bias, repaired+bias);
- `tflite_bias`: the same on the converted int8 TFLite file's int32 biases, against the fp32 TFLite file
  (rung tflite-bias: the TFLite repair a SavedModel gets);
- `deadchannels`: weight channels BN folding switched off are zeroed before onnxruntime quantises (else
  their int32 biases are clipped in U8U8 files); every ONNX int8 file;
- `subset`: the calibration images a technique measures on (spread over the classes);
- `saturation`: replays onnxruntime's AVX2 u8 x s8 pair sums to check a QDQ file for int16 saturation;
- `constadds`: Adds of a constant stay float in every ONNX int8 file (onnxruntime's fused QLinearAdd departs
  from the file's QDQ arithmetic and differs between x86 and ARM);
- `pixelgrid`: the baked preprocessing stays float up to the first convolution, whose input gets a grid that
  keeps the 256 pixel levels apart (onnxruntime's calibrated grid merged them in pairs); every ONNX int8 file;
- `rebuild`: a verified Keras 3 copy of a tf_keras model, so the Keras-level repairs apply;
- `unfused`: onnxruntime sessions that run a graph as written (optimisation off), inner tensors as outputs;
- `kernels`: each int8 ONNX file on onnxruntime's x86 kernel paths at export (a note with the CPU flags);
- `sensitivity`: which activations to keep precise (leave-one-out on the QDQ graph, held-out calibration
  images, greedy by gain per float cost) and how (TFLite float ops, ONNX int16 activations);
- `int16convs`: an int16 activation an int8-weight Conv writes or reads is written float, clipped to its range
  (OpenCV 5.1 computes that Conv as 8-bit: it refused such files or ran them wrong); every ONNX int8 file.

Keras-level techniques (any loader, through `rebuild` for tf_keras files):
- `repair`: BN folding, an exact input grid, adaptive rounding + bias correction of every kernel;
- `selective`: keep chosen layers float in the converted files (float stems), converter helpers;
- `floatweights`: which layers a mixed-precision choice runs in float (the repair keeps them float);
- `kerasgraph`: Keras 3 functional-graph surgery the techniques share.

Diagnosis, apart from the techniques: `explain` (per-layer error and sensitivity tables).
The registry the export loop reads is `registry.TECHNIQUES`. The loop itself (which rung, parity
against the original model, fallback) is tledge/export/fidelity.py: it orchestrates converters,
and this package never imports tledge.export. Experiments the product does not run (cross-layer
equalisation, quantisation-aware fine-tuning, the classifier-head refit) live in lab/quant/.
"""
