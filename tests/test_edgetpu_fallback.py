"""An Edge TPU file without its runtime falls back to the plain file of the same name only when that file is the
model it was compiled from (helper 143): any model of that name ran "instead" (1001 ImageNet classes beside a
2-class file: bees labelled "sea urchin", exit 0)."""
from __future__ import annotations

import struct

import pytest

from tledge import flatbuf as F
from tledge.errors import TledgeError, TledgeWarning

from tiny import TINY, need


def _rescaled_output(data: bytes) -> bytes:
    """The same file with its output's quantisation scale changed (another calibration of the same graph)."""
    buf = bytearray(data)
    sg = F.tflite_model(data).tables(F.MODEL_SUBGRAPHS)[0]
    out = sg.tables(F.SUBGRAPH_TENSORS)[sg.scalars(F.SUBGRAPH_OUTPUTS, "i")[0]]
    first, _ = out.table(F.TENSOR_QUANTIZATION)._vector(F.QUANT_SCALE, 4)
    struct.pack_into("<f", buf, first, 0.5 * struct.unpack_from("<f", buf, first)[0])
    return bytes(buf)


@pytest.mark.parametrize("other", ["another model", "another calibration"])
def test_the_file_beside_must_be_the_model_compiled(tmp_path, other):
    from tledge.devices.edgetpu import fallback_problem
    from tledge.runtime import load

    need("model_int8.tflite")
    compiled, cpu = tmp_path / "model_int8_edgetpu.tflite", tmp_path / "model_int8.tflite"
    compiled.write_bytes((TINY / "model_int8.tflite").read_bytes())
    cpu.write_bytes((TINY / "model_int8.tflite").read_bytes())
    assert fallback_problem(compiled, cpu) is None
    if other == "another model":
        cpu.write_bytes((TINY.parent / "heads" / "logits3_int8.tflite").read_bytes())  # (3 outputs, 8 px)
        match = "input/output shapes"
    else:
        cpu.write_bytes(_rescaled_output(cpu.read_bytes()))
        match = "quantisation differs"
    assert match in fallback_problem(compiled, cpu)
    with pytest.warns(TledgeWarning, match="Edge TPU runtime"), \
            pytest.raises(TledgeError, match=f"not the model it was compiled from .*{match}"):
        load(compiled, device="coral-usb")


def test_the_library_fallback_checks_it_too(tmp_path):
    from tledge.devices import load_for_device

    need("model_int8.tflite")
    compiled, cpu = tmp_path / "model_int8_edgetpu.tflite", tmp_path / "model_int8.tflite"
    compiled.write_bytes((TINY / "model_int8.tflite").read_bytes())
    cpu.write_bytes(_rescaled_output(compiled.read_bytes()))
    with pytest.warns(TledgeWarning, match="Edge TPU runtime"), \
            pytest.raises(TledgeError, match="not the model it was compiled from"):
        load_for_device(compiled, "coral-usb")


def test_a_compiled_file_not_made_yet_is_not_found_not_blamed_on_the_plain_one(tmp_path):
    """docs/devices.md's load_for_device("out/model_int8_edgetpu.tflite", "coral-usb") before edgetpu_compiler ran:
    "model_int8.tflite beside it is not the model it was compiled from" blamed the valid CPU file."""
    import shutil

    from tledge.devices import load_for_device
    from tledge.errors import ModelLoadError

    shutil.copy(TINY / "model_int8.tflite", tmp_path / "model_int8.tflite")
    with pytest.raises(ModelLoadError, match=r"^model file not found: .*model_int8_edgetpu\.tflite$"):
        load_for_device(tmp_path / "model_int8_edgetpu.tflite", "coral-usb")
