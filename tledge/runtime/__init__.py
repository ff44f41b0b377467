"""The TensorFlow-free runtime. `load(path)` -> a model with `.contract`, `.predict`, `.classify`."""
from tledge.runtime.model import EdgeModel, load

__all__ = ["EdgeModel", "load"]
