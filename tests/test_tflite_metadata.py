"""Standard TFLite metadata and TFLite conventions of exported files; files made elsewhere read with theirs.

Independent readers where they exist: the LiteRT interpreter (signatures, shapes), the TFLite schema's own
generated code (metadata entries), zipfile (packed labels), MediaPipe's generated metadata schema and
MediaPipe Tasks ImageClassifier itself (skipped where `mediapipe` is not importable).
"""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from dataclasses import replace
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, shared_asset
from tledge import flatbuf, std_metadata as sm
from tledge.contract import METADATA_KEY
from tledge.metadata import read_standard_metadata, read_tflite_contract, tflite_metadata

PRECISIONS = ("fp32", "fp16", "dynamic", "int8")


def _tflite_files(tiny_export) -> dict[str, Path]:
    files = {p: tiny_export.out / f"model_{p}.tflite" for p in PRECISIONS}
    assert all(f.is_file() for f in files.values())
    return files


def test_metadata_flatbuffer_round_trip_and_packed_files():
    md = sm.StandardMetadata(
        name="m", description="d", version="v", author="a", license="Apache-2.0",
        inputs=(sm.TensorMd("pixels", "in", sm.CONTENT_IMAGE, "gray", (127.5,), (127.5,), (-1.0,), (1.0,)),),
        outputs=(sm.TensorMd("scores", "out", sm.CONTENT_FEATURE, stats_min=(0.0,), stats_max=(1.0,),
                             files=(sm.AssociatedFile("fr.txt", locale="fr"), sm.AssociatedFile("l.txt"))),))
    raw = sm.build(md)
    assert raw[4:8] == b"M001"
    back = sm.parse(raw, {"l.txt": b"a\nb\n\n", "fr.txt": b"x\ny\n"})
    assert back == replace(md, min_parser_version=sm.MIN_PARSER_VERSION)
    assert back.labels() == ("a", "b")  # the file without a locale first
    packed = sm.pack_files(b"\x00" * 100, {"l.txt": b"a\nb\n"})
    assert packed[:100] == b"\x00" * 100 and sm.packed_files(packed) == {"l.txt": b"a\nb\n"}
    assert sm.packed_files(b"\x00" * 100) == {}


def test_every_tflite_precision_has_the_conventions_and_standard_metadata(tiny_export):
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter

    labels = tiny_export.contract.labels
    for precision, path in _tflite_files(tiny_export).items():
        data = path.read_bytes()
        it = Interpreter(model_path=str(path))
        assert it.get_signature_list() == {"serving_default": {"inputs": ["pixels"], "outputs": ["scores"]}}
        inp, out = it.get_input_details()[0], it.get_output_details()[0]
        assert (inp["name"], out["name"]) == ("pixels", "scores"), precision
        assert list(inp["shape_signature"]) == [1, 48, 48, 3] and list(out["shape_signature"]) == [1, 3], precision
        x = np.full((1, 48, 48, 3), 100, inp["dtype"])
        it.allocate_tensors()
        it.set_tensor(inp["index"], x)
        it.invoke()
        sig = it.get_signature_runner("serving_default")(pixels=x)["scores"]
        np.testing.assert_array_equal(sig, it.get_tensor(out["index"]))
        # the TFLite schema's generated reader sees the same entries as tledge.flatbuf
        model = schema.Model.GetRootAs(data, 0)
        names = [model.Metadata(i).Name().decode() for i in range(model.MetadataLength())]
        assert {METADATA_KEY, "labels", sm.ENTRY_NAME} <= set(names) and list(tflite_metadata(data)) == names
        with zipfile.ZipFile(BytesIO(data)) as zf:
            info = zf.getinfo("labels.txt")
            assert info.compress_type == zipfile.ZIP_STORED
            assert zf.read("labels.txt").decode().split() == list(labels)
        md = read_standard_metadata(path)
        assert md.labels() == labels and md.min_parser_version == "1.0.0" and md.author == "tledge"
        i, o = md.inputs[0], md.outputs[0]
        assert (i.content, i.color_space, i.mean, i.std) == (sm.CONTENT_IMAGE, "rgb", (0.0,) * 3, (1.0,) * 3)
        assert (i.stats_min, i.stats_max) == (((0.0,), (255.0,)) if precision == "int8" else ((0.0,) * 3, (255.0,) * 3))
        assert o.files[0].type == sm.FILE_TENSOR_AXIS_LABELS and o.stats_max == ((255.0,) if precision == "int8" else (1.0,))
        assert read_tflite_contract(path).labels == labels  # tledge's own entry survives
        assert tflite_metadata(data)["labels"].decode().split() == list(labels)


def test_metadata_reads_without_litert_schema_flatbuffers_or_tensorflow(tiny_export, shapes_dataset):
    """Issue 12: metadata reading needed ai_edge_litert's schema; with it (and flatbuffers, TensorFlow)
    unimportable, `tledge run` still reads the contract and the standard metadata."""
    script = """
import importlib.abc, json, sys, contextlib, io
BLOCKED = ("ai_edge_litert.schema_py_generated", "flatbuffers", "tensorflow", "tflite_support", "mediapipe")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith(BLOCKED):
            raise ImportError(f"blocked {name}")
sys.meta_path.insert(0, Block())
from tledge.cli import main
from tledge.metadata import read_standard_metadata
model, src = sys.argv[1], sys.argv[2]
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    code = main(["run", model, "--source", src, "--json"])
rows = [json.loads(line) for line in buf.getvalue().splitlines()]
print(json.dumps({"code": code, "labels": sorted({r["top"][0]["label"] for r in rows}),
                  "standard": list(read_standard_metadata(model).labels())}))
"""
    model = tiny_export.out / "model_int8.tflite"
    proc = subprocess.run([sys.executable, "-c", script, str(model), str(shapes_dataset / "val")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    labels = list(tiny_export.contract.labels)
    assert result == {"code": 0, "labels": labels, "standard": labels}


def _as_made_elsewhere(data: bytes, mean=None, std=None, threshold=None) -> bytes:
    """The file without tledge's entries (standard metadata kept, optionally with other NormalizationOptions, or
    ScoreThresholdingOptions on the output)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    model.metadata = [m for m in model.metadata if m.name.decode() not in (METADATA_KEY, "labels")]
    if mean is not None:
        entry = next(m for m in model.metadata if m.name.decode() == sm.ENTRY_NAME)
        old = sm.parse(bytes(model.buffers[entry.buffer].data))
        new = replace(old, inputs=(replace(old.inputs[0], mean=mean, std=std),))
        model.buffers[entry.buffer].data = list(sm.build(new))
    if threshold is not None:
        entry = next(m for m in model.metadata if m.name.decode() == sm.ENTRY_NAME)
        old = sm.parse(bytes(model.buffers[entry.buffer].data))
        new = replace(old, outputs=(replace(old.outputs[0], score_threshold=threshold),))
        model.buffers[entry.buffer].data = list(sm.build(new))
    b = flatbuffers.Builder(len(data))
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return sm.pack_files(bytes(b.Output()), sm.packed_files(data))


def test_foreign_float_file_gets_labels_and_normalisation_from_standard_metadata(tiny_export, shapes_dataset,
                                                                                  tmp_path):
    from tledge.runtime import load
    from tledge.runtime.foreign import STANDARD_ORIGIN

    src = tiny_export.out / "model_fp32.tflite"
    plain = tmp_path / "plain.tflite"
    plain.write_bytes(_as_made_elsewhere(src.read_bytes()))
    assert METADATA_KEY not in tflite_metadata(plain.read_bytes())
    images = sorted((shapes_dataset / "val").rglob("*.png"))[:9]
    ours, theirs = load(src), load(plain)  # no warning about raw pixels: the metadata says mean 0 / std 1
    assert theirs.load_info.contract_origin == STANDARD_ORIGIN and theirs.contract.labels == ours.contract.labels
    assert [p[0].label for p in theirs.classify(images)] == [p[0].label for p in ours.classify(images)]
    scaled = tmp_path / "scaled.tflite"
    scaled.write_bytes(_as_made_elsewhere(src.read_bytes(), mean=(127.5,), std=(127.5,)))
    c = load(scaled).contract
    assert (c.norm.value, c.baked, c.mean, c.std) == ("custom", False, (127.5,) * 3, (127.5,) * 3)
    assert float(c.prepare(np.full((48, 48, 3), 255, np.uint8)).max()) == 1.0
    assert load(scaled, labels=("x", "y", "z")).contract.labels == ("x", "y", "z")  # an option wins


def test_coral_files_get_their_labels_without_flags(capsys):
    from tledge.cli import main

    root = shared_asset("coral_tflite_classifiers")
    images = root / "test_images"
    for model in sorted(root.glob("*.tflite")):
        assert main(["run", str(model), "--source", str(images / "*"), "--json"]) == 0
        rows = {Path(r["source"]).name: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
        # the 0.25 file's Egyptian cat / tiger cat is a near-tie that the resize decides (area: Egyptian)
        assert rows["cat.bmp"]["top"][0]["label"] in ("Egyptian cat", "tiger cat"), model.name
        assert rows["parrot.jpg"]["top"][0]["label"] == "macaw", model.name
    assert main(["info", str(root / "mobilenet_v1_0.25_128_quant.tflite"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["labels"] == 1001 and info["contract"]["labels"][0] == "background"
    assert info["contract"]["extra"]["origin"] == "standard TFLite metadata"


def _mediapipe_schema():
    for name in ("mediapipe.tasks.metadata.metadata_schema_py_generated",
                 "tflite_support.metadata_schema_py_generated"):
        try:
            return __import__(name, fromlist=["ModelMetadata"])
        except ImportError:
            continue
    pytest.skip("neither mediapipe nor tflite-support (their generated metadata schema) is importable")


def test_standard_metadata_read_by_the_generated_schema_of_mediapipe(tiny_export):
    fb = _mediapipe_schema()
    for precision, path in _tflite_files(tiny_export).items():
        raw = tflite_metadata(path.read_bytes())[sm.ENTRY_NAME]
        assert fb.ModelMetadata.ModelMetadataBufferHasIdentifier(raw, 0)
        md = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAsModelMetadata(raw, 0))
        assert md.author.decode() == "tledge" and md.minParserVersion.decode() == "1.0.0"
        inp, out = md.subgraphMetadata[0].inputTensorMetadata[0], md.subgraphMetadata[0].outputTensorMetadata[0]
        assert inp.content.contentPropertiesType == fb.ContentProperties.ImageProperties
        assert inp.content.contentProperties.colorSpace == fb.ColorSpaceType.RGB
        unit = inp.processUnits[0]
        assert unit.optionsType == fb.ProcessUnitOptions.NormalizationOptions
        assert list(unit.options.mean) == [0.0] * 3 and list(unit.options.std) == [1.0] * 3
        assert out.associatedFiles[0].name.decode() == "labels.txt"
        assert out.associatedFiles[0].type == fb.AssociatedFileType.TENSOR_AXIS_LABELS
        assert list(out.stats.max) == ([255.0] if precision == "int8" else [1.0])


def test_mediapipe_image_classifier_reads_every_precision_like_tledge_run(tiny_export, shapes_dataset):
    """MediaPipe Tasks on images already at the model's input size (48x48): the exported labels and
    the same top-1 as the tledge runtime, for every TFLite precision."""
    mp = pytest.importorskip("mediapipe")
    from mediapipe.tasks.python import BaseOptions, vision

    from tledge.images import load as load_image
    from tledge.runtime import load

    images = sorted((shapes_dataset / "val").rglob("*.*"))
    labels = tiny_export.contract.labels
    for precision, path in _tflite_files(tiny_export).items():
        ours = [p[0] for p in load(path).classify(images)]
        opts = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)), max_results=-1)
        with vision.ImageClassifier.create_from_options(opts) as classifier:
            for image, mine in zip(images, ours):
                rgb = np.ascontiguousarray(load_image(image))
                assert rgb.shape == (48, 48, 3)
                cats = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)) \
                    .classifications[0].categories
                assert sorted(c.category_name for c in cats) == sorted(labels), precision
                assert (cats[0].index, cats[0].category_name) == (mine.index, mine.label), (precision, image.name)


def test_corrupt_files_raise_model_load_error_only(tiny_export):
    from tledge.errors import ModelLoadError

    data = (tiny_export.out / "model_int8.tflite").read_bytes()
    raw = tflite_metadata(data)[sm.ENTRY_NAME]
    rng = np.random.default_rng(0)
    with pytest.raises(ModelLoadError):
        tflite_metadata(b"1234TFL3")
    with pytest.raises(ModelLoadError):
        sm.parse(raw[:40])
    failures = 0
    for _ in range(300):  # random bytes flipped in the flatbuffers: a clean error or a result, nothing else
        blob, meta = bytearray(data), bytearray(raw)
        for buf in (blob, meta):
            idx = rng.integers(0, len(buf), 4)
            buf[idx[0]:idx[0] + 1] = bytes([int(rng.integers(0, 256))])
            for i in idx[1:]:
                buf[i] = int(rng.integers(0, 256))
        for fn, arg in ((read_standard_metadata, bytes(blob)), (sm.parse, bytes(meta))):
            try:
                fn(arg)
            except ModelLoadError:
                failures += 1
    assert failures > 0  # some flips do hit offsets


def test_embedding_again_replaces_every_entry_and_the_packed_labels(tiny_export):
    from tledge.export.metadata import embed_tflite

    data = (tiny_export.out / "model_int8.tflite").read_bytes()
    again = embed_tflite(data, read_tflite_contract(data).replace(labels=("a", "b", "c")))
    names = [n for n, _ in flatbuf.tflite_metadata_entries(again)]
    assert len(names) == len(set(names)) and len(again) <= len(data) + 16
    assert read_standard_metadata(again).labels() == read_tflite_contract(again).labels == ("a", "b", "c")
    with zipfile.ZipFile(BytesIO(again)) as zf:
        assert zf.namelist() == ["labels.txt"] and zf.read("labels.txt") == b"a\nb\nc\n"


def test_packed_files_do_not_carry_the_time_of_packing(monkeypatch):
    """The labels zip appended to a TFLite file had the export's time in it: two exports of the same model differed
    in 4 bytes. Packed at two different times, the bytes are now the same, and the files still read back."""
    import io
    import time
    import zipfile

    from tledge.std_metadata import pack_files

    files = {"labels.txt": b"ants\nbees\n"}
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)
    first = pack_files(b"model", files)
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0)
    assert pack_files(b"model", files) == first
    with zipfile.ZipFile(io.BytesIO(first)) as zf:
        assert zf.read("labels.txt") == b"ants\nbees\n" and zf.getinfo("labels.txt").compress_type == zipfile.ZIP_STORED


def test_a_files_score_threshold_is_the_default_of_tledge_run(tiny_export, shapes_dataset, tmp_path, capsys):
    """ScoreThresholdingOptions: MediaPipe and the Task Library drop results scoring under it unless told; tledge run
    showed every top-1 however low."""
    from tledge.cli import main
    from tledge.runtime import load

    src, val = tiny_export.out / "model_fp32.tflite", shapes_dataset / "val"
    scores = sorted(p[0].score for p in load(src).classify(sorted(val.rglob("*.png"))))
    assert scores[0] < scores[-1]
    t = float(np.float32(scores[len(scores) // 2]))  # some images fall under it
    made = tmp_path / "thresholded.tflite"
    made.write_bytes(_as_made_elsewhere(src.read_bytes(), threshold=t))
    assert sm.parse(tflite_metadata(made.read_bytes())[sm.ENTRY_NAME]).outputs[0].score_threshold == t
    assert load(made).score_threshold == t and load(src).score_threshold is None

    def tops(*options):
        assert main(["run", str(made), "--source", str(val), "--json", *options]) == 0
        out, err = capsys.readouterr()
        return [r["top"] for r in map(json.loads, out.splitlines())], err

    default, err = tops()
    shown, _ = tops("--threshold", "0")
    assert "ScoreThresholdingOptions" in err and len(default) == len(shown) > 0
    assert all(t and t[0]["score"] for t in shown)
    assert all(row == ([] if full[0]["score"] < t else full[:1]) for row, full in zip(default, shown))
    assert any(not row for row in default) and any(row for row in default)
    assert main(["info", str(made)]) == 0 and f"threshold {t:g}" in capsys.readouterr().out
