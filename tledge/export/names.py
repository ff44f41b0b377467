"""The names every exported file gives its tensors and its signature (TFLite and ONNX alike): clients address
the input as `pixels` and the output as `scores`, and a TFLite file's one signature is `serving_default`."""
INPUT_NAME, OUTPUT_NAME = "pixels", "scores"
SIGNATURE_KEY = "serving_default"
