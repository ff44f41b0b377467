"""A TFLite file with a NaN, infinite or non-positive per-tensor quantisation scale crashed the process inside LiteRT
(SIGSEGV or abort, exit 139/134, nothing printed) from `tledge run`, `info` and parity. It is refused in one line."""
from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tledge import flatbuf as F

TINY = Path(__file__).parent / "assets" / "tiny"


def _scale_slots(data: bytes):
    """(tensor index, position of its first scale, scale count, constant?) of every quantised tensor, subgraph 0."""
    model = F.tflite_model(data)
    sg, bufs = model.tables(F.MODEL_SUBGRAPHS)[0], model.tables(F.MODEL_BUFFERS)
    for i, t in enumerate(sg.tables(F.SUBGRAPH_TENSORS)):
        q = t.table(F.TENSOR_QUANTIZATION)
        first, n = q._vector(F.QUANT_SCALE, 4) if q is not None else (0, 0)
        if n:
            yield i, first, n, bool(bufs[t.scalar(2, "I", 0)].blob(0))


def _patched(tmp_path: Path, value: float, pick) -> Path:
    data = bytearray((TINY / "model_int8.tflite").read_bytes())
    slot = next(s for s in _scale_slots(bytes(data)) if pick(s, bytes(data)))
    struct.pack_into("<f", data, slot[1], value)
    out = tmp_path / f"patched_{value}.tflite"
    out.write_bytes(bytes(data))
    return out


def _output(slot, data):
    return slot[0] == F.tflite_model(data).tables(F.MODEL_SUBGRAPHS)[0].scalars(F.SUBGRAPH_OUTPUTS, "i")[0]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0, -1.0])
def test_a_broken_output_scale_is_refused_not_a_crash(tmp_path, value):
    path = _patched(tmp_path, value, _output)
    for verb in (["info", str(path)], ["run", str(path), "--source", str(TINY / "images")]):
        r = subprocess.run([sys.executable, "-m", "tledge", *verb], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, (verb, r.returncode, r.stderr[-400:])
        assert "quantisation scale" in r.stderr and "corrupt" in r.stderr
        assert "Traceback" not in r.stderr


def test_a_zero_scale_of_a_constant_is_found_and_a_good_file_has_none(tmp_path):
    assert F.tflite_bad_scales((TINY / "model_int8.tflite").read_bytes()) == []
    path = _patched(tmp_path, 0.0, lambda s, d: s[2] == 1 and s[3])
    assert [scale for _, scale in F.tflite_bad_scales(path.read_bytes())] == [0.0]


def test_a_zero_among_per_channel_scales_is_left_to_litert(tmp_path):
    """A weight channel of zeros may carry a zero scale: LiteRT runs such a file (or refuses it with an error)."""
    path = _patched(tmp_path, 0.0, lambda s, d: s[2] > 1)
    assert F.tflite_bad_scales(path.read_bytes()) == []
    nan = _patched(tmp_path, float("nan"), lambda s, d: s[2] > 1)
    assert len(F.tflite_bad_scales(nan.read_bytes())) == 1
