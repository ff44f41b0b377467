"""caffe preprocessing (RGB -> BGR, minus the ImageNet means) in front of an int8 TFLite file: the file's uint8 input
must take raw pixels (scale 1, zero point 0), as MediaPipe and every other client feeds it. Added by the export
(--preprocess caffe) or baked by tledge's older Preprocess layer, the channel flip was slices + concat, and the
converter gave the input the concat's range: scale 1.49, zero point 83 (MediaPipe right on 11 of 15 photos)."""
import pytest

pytest.importorskip("tensorflow")

from conftest import build_tiny_classifier, train_tiny  # noqa: E402
from tledge.contract import Contract  # noqa: E402
from tledge.export.pipeline import ExportConfig, export  # noqa: E402

LABELS = ("circle", "hstripes", "vstripes")


def input_quant(path):
    from ai_edge_litert.interpreter import Interpreter

    d = Interpreter(model_path=str(path)).get_input_details()[0]
    return d["dtype"].__name__, d["quantization"]


@pytest.mark.parametrize("baked", [False, True], ids=["added-by-export", "old-preprocess-layer"])
def test_caffe_int8_tflite_takes_raw_pixels(baked, shapes_dataset, tmp_path):
    c = Contract(48, 48, norm="caffe", baked=baked, input_dtype="float32", labels=LABELS)
    model = train_tiny(build_tiny_classifier(mode="caffe", baked=baked), shapes_dataset / "train", c, epochs=30)
    model.save(tmp_path / "model.keras")
    (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    result = export(tmp_path / "model.keras", ExportConfig(
        out=tmp_path / "export", formats=("tflite",), int8=True, repair=False, preprocess=None if baked else "caffe",
        calib=str(shapes_dataset / "train"), val=str(shapes_dataset / "val")))
    dtype, (scale, zero_point) = input_quant(result.out / "model_int8.tflite")
    assert (dtype, scale, zero_point) == ("uint8", 1.0, 0)
    assert Contract.load(result.out / "tledge.json").norm.value == "caffe"


def test_an_input_that_is_not_raw_pixels_is_a_conversion_failure(monkeypatch):
    """Whatever the converter does next: a uint8 input at another scale is refused, not shipped."""
    import numpy as np

    from tledge.errors import ExportError
    from tledge.export import formats

    class Fake:
        def __init__(self, model_content):
            pass

        def get_input_details(self):
            return [{"quantization": (1.485, 83), "dtype": np.uint8}]

        def get_output_details(self):
            return [{"quantization": (0.0039, 0), "dtype": np.uint8}]

    import ai_edge_litert.interpreter as li

    monkeypatch.setattr(li, "Interpreter", Fake)
    with pytest.raises(ExportError, match="scale 1.485, zero point 83, not raw pixels"):
        formats.tflite_io(b"")
