"""The TensorFlow-free runtime. `load(path)` -> a model with `.contract`, `.predict`, `.classify`.

Sources (`open_source`) and the overlapped pipeline (`Runner`) live in tledge.runtime.sources and
tledge.runtime.pipeline; importing this package imports neither TensorFlow nor OpenCV.
"""
from tledge.runtime.foreign import infer_contract
from tledge.runtime.model import EdgeModel, Prediction, load

__all__ = ["EdgeModel", "Prediction", "infer_contract", "load"]
