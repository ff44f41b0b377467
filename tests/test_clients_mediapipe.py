"""MediaPipe Tasks ImageClassifier on tledge files (issue 13's acceptance). Runs where `mediapipe` is importable:
ci/clients_venv.sh makes such a venv (tledge[runtime,clients], no TensorFlow) and points TLEDGE_CLIENTS_EXPORT
at a real export (the hymenoptera MobileNet 0.25 with every TFLite precision, made with TensorFlow first).

- MediaPipe's own input tensor, read back through a probe model whose scores are its input pixels, is
  `warp-linear` bit for bit, on raw photos and on noise of many sizes, for float32 and uint8 inputs;
- on every .tflite of the export: the exported labels, top-1 equal to `tledge run` on every photo already at
  the input size, and on >= 99 % of the raw photos (all of them when the contract's resize is warp-linear);
- the export's "clients" section (tledge.clients.measure) measured there.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_asset

mp = pytest.importorskip("mediapipe")
pytest.importorskip("ai_edge_litert")

PHOTOS = "hymenoptera_data/val"


def _export() -> Path:
    path = os.environ.get("TLEDGE_CLIENTS_EXPORT")
    if not path or not (Path(path) / "manifest.json").is_file():
        pytest.skip("no export to check: set TLEDGE_CLIENTS_EXPORT (ci/clients_venv.sh makes one)")
    return Path(path)


def _tflite_files(export: Path) -> list[Path]:
    files = sorted(export.glob("*.tflite")) + sorted(export.glob("rejected/*.tflite"))
    assert files, export
    return files


@pytest.fixture(scope="module")
def photos():
    from tledge.images import labelled_images, load

    files, _, _ = labelled_images(shared_asset(PHOTOS))
    return files, [np.ascontiguousarray(load(f)) for f in files]


def _probe(tmp_path, dtype, h=224, w=224):
    from mediapipe.tasks.python import BaseOptions, vision
    from mediapipe_probe import identity_classifier

    path = tmp_path / f"probe_{dtype}_{h}x{w}.tflite"
    path.write_bytes(identity_classifier(h, w, dtype))
    opts = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)), max_results=-1)
    return vision.ImageClassifier.create_from_options(opts)


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_mediapipe_input_tensor_is_warp_linear_bit_for_bit_on_noise(tmp_path, dtype):
    from mediapipe_probe import mediapipe_tensor

    from tledge.resize import warp_linear

    rng = np.random.default_rng(1)
    with _probe(tmp_path, dtype, 64, 96) as clf:
        for h, w in [(375, 500), (333, 500), (100, 150), (64, 96), (40, 30), (1000, 1333), (97, 301)]:
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            np.testing.assert_array_equal(mediapipe_tensor(clf, img, 64, 96), warp_linear(img, 96, 64),
                                          err_msg=f"{h}x{w} {dtype}")


def test_mediapipe_input_tensor_is_warp_linear_bit_for_bit_on_raw_photos(tmp_path, photos):
    from mediapipe_probe import mediapipe_tensor

    from tledge.resize import warp_linear

    files, images = photos
    with _probe(tmp_path, "float32") as clf:
        for f, img in list(zip(files, images))[::8]:
            np.testing.assert_array_equal(mediapipe_tensor(clf, img, 224, 224), warp_linear(img, 224, 224),
                                          err_msg=f.name)


def test_mediapipe_on_every_precision_labels_and_top1_like_tledge_run(photos):
    """The issue's acceptance: labels, top-1 == tledge run on photos at the input size (all of them) and on
    raw photos (>= 99 %; every one when the export's resize is MediaPipe's own)."""
    from tledge.clients import mediapipe_scores
    from tledge.runtime import load

    export = _export()
    _, images = photos
    for path in _tflite_files(export):
        model = load(path)
        c = model.contract
        labels = list(c.labels)
        classifier_labels = _labels(path, images[0])
        assert classifier_labels == sorted(labels), path.name
        at_size = [np.ascontiguousarray(c.geometry(im)) for im in images]  # already H x W: no resize by anyone
        ours = np.stack([model.scores(model.run_inputs(model.to_input(im)[None]))[0] for im in at_size])
        theirs = mediapipe_scores(path, at_size)
        assert (ours.argmax(1) == theirs.argmax(1)).all(), path.name
        np.testing.assert_allclose(theirs, ours, atol=5e-6 if c.input_dtype != "uint8" else 1 / 256 + 1e-6)
        raw_ours = np.stack([model.scores(model.run_inputs(model.to_input(im)[None]))[0] for im in images])
        raw_theirs = mediapipe_scores(path, images)
        agree = float((raw_ours.argmax(1) == raw_theirs.argmax(1)).mean())
        assert agree >= 0.99, (path.name, agree, c.resize.value)
        if c.resize.value == "warp-linear" and c.fit.value == "stretch":
            assert agree == 1.0, path.name


def _labels(path: Path, image: np.ndarray) -> list[str]:
    from mediapipe.tasks.python import BaseOptions, vision

    opts = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)), max_results=-1)
    with vision.ImageClassifier.create_from_options(opts) as clf:
        cats = clf.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=image)).classifications[0].categories
    return sorted(c.category_name for c in cats)


def test_clients_section_measured_where_mediapipe_is_importable(photos):
    """tledge.clients.measure, as the export calls it, on the export's golden images (their Keras outputs are
    stored there): every .tflite measured, MediaPipe = tledge run on all of them for a warp-linear export."""
    from tledge.clients import markdown, measure
    from tledge.runtime import golden

    export = _export()
    g = np.load(export / golden.GOLDEN)
    files, _ = photos
    root = shared_asset(PHOTOS)
    by_name = {f.relative_to(root).as_posix(): f for f in files}
    names = [str(n) for n in g["names"]]
    if not all(n in by_name for n in names):
        pytest.skip("the export's golden images are not the shared hymenoptera photos")
    names_tflite = [str(p.relative_to(export)) for p in _tflite_files(export)]
    section = measure(export, names_tflite, g["pixels"].astype(np.float32), g["reference"],
                      [by_name[n] for n in names])
    assert section["measured"] is True and section["images"] == len(names)
    assert [r["file"] for r in section["files"]] == names_tflite
    for r in section["files"]:
        assert "error" not in r, r
        if r["resize"] == "warp-linear":
            assert r["tledge"] == len(names), r
        assert r["keras"] >= 0.9 * len(names), r
    assert "## Clients" in "\n".join(markdown(section))


def test_standard_metadata_read_back_with_mediapipes_own_schema():
    """Every .tflite's standard metadata parsed by the schema MediaPipe ships (not our reader): RGB image
    input, the normalisation the file declares, labels.txt as TENSOR_AXIS_LABELS, tledge's entries kept."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    from tledge import std_metadata as sm
    from tledge.metadata import read_contract, tflite_metadata

    for path in _tflite_files(_export()):
        entries = tflite_metadata(path.read_bytes())
        raw = entries[sm.ENTRY_NAME]
        assert fb.ModelMetadata.ModelMetadataBufferHasIdentifier(raw, 0), path.name
        md = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAsModelMetadata(raw, 0))
        inp = md.subgraphMetadata[0].inputTensorMetadata[0]
        out = md.subgraphMetadata[0].outputTensorMetadata[0]
        assert inp.content.contentProperties.colorSpace == fb.ColorSpaceType.RGB, path.name
        unit = inp.processUnits[0]
        assert unit.optionsType == fb.ProcessUnitOptions.NormalizationOptions
        assert list(unit.options.mean) == [0.0] * 3 and list(unit.options.std) == [1.0] * 3  # baked in the model
        assert out.associatedFiles[0].name.decode() == "labels.txt"
        assert out.associatedFiles[0].type == fb.AssociatedFileType.TENSOR_AXIS_LABELS
        assert read_contract(path).labels  # tledge's own entry survives beside the standard one
