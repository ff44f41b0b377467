"""Our parity matrix: preprocessing modes x colour x every format and precision, on tiny trained
models (confident predictions, so agreement means something). The keras.applications families
run in the slow matrix (`-m slow`)."""
import json

import pytest

pytest.importorskip("tensorflow")

from conftest import build_tiny_classifier, train_tiny  # noqa: E402
from tledge.contract import Contract  # noqa: E402
from tledge.export.pipeline import ExportConfig, export  # noqa: E402

CASES = [(mode, gray) for mode in ("tf", "caffe", "torch") for gray in (False, True)]


@pytest.fixture(scope="module", params=CASES, ids=[f"{m}-{'gray' if g else 'rgb'}" for m, g in CASES])
def matrix_export(request, shapes_dataset, tmp_path_factory):
    mode, gray = request.param
    c = Contract(48, 48, channels=1 if gray else 3, color="gray" if gray else "rgb", norm=mode, baked=True,
                 input_dtype="float32", labels=("circle", "hstripes", "vstripes"))
    model = train_tiny(build_tiny_classifier(channels=c.channels, mode=mode), shapes_dataset / "train", c)
    d = tmp_path_factory.mktemp(f"matrix_{mode}_{gray}")
    model.save(d / "model.keras")
    return mode, gray, export(d / "model.keras", ExportConfig(
        out=d / "export", int8=True, fp16=True, dynamic=True,
        calib=str(shapes_dataset / "train"), val=str(shapes_dataset / "val")))


def test_every_file_passes_parity(matrix_export):
    mode, gray, result = matrix_export
    report = json.loads((result.out / "parity.json").read_text())
    assert len(report["results"]) == 6
    failing = {r["file"]: r["failures"] for r in report["results"] if not r["passed"]}
    assert not failing
    assert min(r["reference_accuracy"] for r in report["results"]) > 0.9


def test_contract_records_mode_and_channels(matrix_export):
    mode, gray, result = matrix_export
    c = Contract.load(result.out / "tledge.json")
    assert c.norm.value == mode and c.channels == (1 if gray else 3) and c.baked
