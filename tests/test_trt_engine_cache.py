"""The Jetson profile's TensorRT engine cache is one folder per model file's content. onnxruntime names a cached
engine by the graph's names and shapes, not its weights: a retrained model of the same architecture in the same
file name (every bundle's model_fp32.onnx) ran the previous model's engine."""
from __future__ import annotations

import os
import shutil

import pytest
from tiny import TINY

from tledge.devices.profiles import PROFILES, TRT_CACHE_DIR
from tledge.runtime.onnxgraph import engine_cache_per_model

pytestmark = pytest.mark.runtime_only


def _trt(profile: str):
    for target in PROFILES[profile].targets:
        for p in getattr(target, "providers", ()):
            if p.name == "TensorrtExecutionProvider":
                return (p.name, dict(p.options))
    raise AssertionError("no TensorRT provider in the profile")


def test_a_retrained_model_in_the_same_file_name_gets_its_own_engine_folder(tmp_path):
    provider = _trt("jetson-orin")
    assert provider[1]["trt_engine_cache_path"] == TRT_CACHE_DIR
    a, b = tmp_path / "a" / "model_fp32.onnx", tmp_path / "b" / "model_fp32.onnx"
    for f, src in ((a, "model_fp32.onnx"), (b, "model_int8.onnx")):  # same name, other weights
        f.parent.mkdir()
        shutil.copy(TINY / src, f)
    ka, kb = engine_cache_per_model(provider, a), engine_cache_per_model(provider, b)
    assert os.path.dirname(ka[1]["trt_engine_cache_path"]) == TRT_CACHE_DIR
    assert ka[1]["trt_engine_cache_path"] != kb[1]["trt_engine_cache_path"]
    shutil.copy(a, tmp_path / "moved.onnx")  # the same content elsewhere: the same engine
    assert engine_cache_per_model(provider, tmp_path / "moved.onnx") == ka
    assert {k: v for k, v in ka[1].items() if k != "trt_engine_cache_path"} == \
           {k: v for k, v in provider[1].items() if k != "trt_engine_cache_path"}
    assert engine_cache_per_model("CPUExecutionProvider", a) == "CPUExecutionProvider"
