"""Inputs as people have them (the twenty-eighth session's walkthrough): a forged image size, float arrays in
0..255, thumbnail and macOS folders, a split layout with an extra folder, and `run --save/--csv` pointed at the
photos being classified."""
from __future__ import annotations

import os
import re
import struct
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from tiny import TINY

from tledge.cli import main
from tledge.errors import ImageError


def _png(path: Path, value: int = 0, size=(16, 16)) -> Path:
    """PNG bytes under any name (the decoder reads the content, the suffix decides what is listed)."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".png", np.full(size + (3,), value, np.uint8))
    path.write_bytes(data.tobytes())
    return path


def _forged_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height pixels (80 bytes on disk)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 7))
                     + chunk(b"IEND", b""))
    return path


def test_an_image_over_opencv_s_pixel_limit_is_an_image_error(tmp_path, monkeypatch):
    """OpenCV raises (not returns None) for a header over 2^30 pixels: train, export and parity crashed. (tledge's
    own header check refuses it first; without that check, OpenCV's raise is still an ImageError.)"""
    from tledge import images

    bomb = _forged_png(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(ImageError, match="its header says 10000 megapixels"):
        images.load(bomb)
    monkeypatch.setattr(images, "MAX_PIXELS", 1 << 40)
    with pytest.raises(ImageError, match="larger than OpenCV decodes"):
        images.load(bomb)


def test_float_arrays_in_0_255_are_not_white():
    """Keras's img_to_array gives float32 0..255: it was clipped as if 0..1 (a white image)."""
    from tledge.images import to_uint8_rgb

    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    assert np.array_equal(to_uint8_rgb(rgb.astype(np.float32)), rgb)
    assert np.array_equal(to_uint8_rgb(rgb.astype(np.float32) / 255.0), rgb)
    with pytest.raises(ImageError, match="NaN"):
        to_uint8_rgb(np.full((4, 4, 3), np.nan, np.float32))


@pytest.mark.parametrize("mode", ["P", "PA", "CMYK", "YCbCr", "HSV", "1", "I"])
def test_pil_images_of_any_mode_are_read_as_their_colours(mode):
    """A PIL palette image's array is its palette indices (read as gray) and a CMYK one's is 4 channels (read as
    RGBA): both gave other pixels than the same image as RGB."""
    from PIL import Image

    from tledge.images import to_uint8_rgb

    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[:3] = (200, 30, 90)
    rgb[3:] = (20, 220, 140)
    img = Image.fromarray(rgb).convert(mode)
    expected = np.asarray(img.convert("RGB"))
    assert np.array_equal(to_uint8_rgb(img), expected)  # (an in-memory CMYK image: PIL's; a CMYK JPEG: test_cmyk_images)
    if mode not in ("1", "I"):
        assert np.abs(expected.astype(int) - rgb).max() <= 60  # the colours (a dithered palette), not indices or ink


def test_thumbnail_and_macos_folders_are_not_data(tmp_path):
    from tledge.images import class_folders, iter_image_files

    root = tmp_path / "data"
    for rel in ("ants/a.jpg", "ants/.thumbnails/a.jpg", "ants/@eaDir/a.jpg/thumb.jpg", "ants/b.jfif",
                "bees/c.png", "bees/sub/d.png", "__MACOSX/ants/._a.jpg"):
        _png(root / rel)
    assert [f.relative_to(root).as_posix() for f in iter_image_files(root / "ants")] == ["ants/a.jpg", "ants/b.jfif"]
    assert [(n, len(fs)) for n, fs in class_folders(root)] == [("ants", 2), ("bees", 2)]


def test_symlinked_folders_inside_class_folders_are_data_and_a_link_loop_ends(tmp_path):
    """Python 3.11's rglob did not follow a symlinked sub-folder: its photos were silently not data."""
    from tledge.images import class_folders, iter_image_files

    elsewhere = tmp_path / "disk2"
    _png(elsewhere / "x.png")
    _png(elsewhere / "deep" / "y.png")
    root = tmp_path / "data"
    _png(root / "ants" / "a.png")
    _png(root / "bees" / "b.png")
    (root / "ants" / "more").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "deep" / "loop").symlink_to(root / "ants", target_is_directory=True)  # ants -> more -> deep -> ants
    names = [f.relative_to(root).as_posix() for f in iter_image_files(root / "ants")]
    assert names == ["ants/a.png", "ants/more/deep/y.png", "ants/more/x.png"]
    assert [(n, len(fs)) for n, fs in class_folders(root)] == [("ants", 3), ("bees", 1)]


def test_a_split_layout_with_an_extra_folder_is_still_a_split_layout(tmp_path):
    """train/ + val/ + unlabeled/ trained the classes "train", "unlabeled", "val"."""
    from tledge.errors import TledgeWarning
    from tledge.train.data import plan

    for split in ("train", "val"):
        for c in ("ants", "bees"):
            for i in range(3):
                _png(tmp_path / split / c / f"{i}.png", 40 * i)
    _png(tmp_path / "unlabeled" / "x.png")
    _png(tmp_path / "__MACOSX" / "train" / "y.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = plan(tmp_path)
    assert p.classes == ("ants", "bees") and len(p.train.files) == 6 and len(p.val.files) == 6
    said = [str(w.message) for w in caught if issubclass(w.category, TledgeWarning)]
    assert any("ignoring unlabeled/" in m for m in said) and not any("__MACOSX" in m for m in said)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    return (code,) + capsys.readouterr()


def test_run_never_writes_over_the_photos_it_classifies(tmp_path, capsys):
    photos = tmp_path / "photos"
    a = _png(photos / "ants" / "a.png", 10)
    before = a.read_bytes()
    model = TINY / "model_fp32.tflite"
    for argv, said in ((("--save", photos), "inside the source folder"),
                       (("--save", photos / "ants" / "annotated"), "inside the source folder"),
                       (("--csv", a), "is an input"),
                       (("--source", a, "--save", photos / "ants"), "holds input files"),
                       (("--source", str(photos / "*" / "*.png"), "--save", photos / "ants"), "holds input files")):
        source = () if "--source" in argv else ("--source", photos)
        code, out, err = _run(capsys, "run", model, *source, *argv)
        assert code == 2 and said in err and out == "", (argv, err)
    assert a.read_bytes() == before and sorted(p.name for p in photos.rglob("*")) == ["a.png", "ants"]


def test_run_save_keeps_every_output_of_a_glob(tmp_path, capsys):
    """A glob over folders gave every output its bare name: b/x.png overwrote a/x.png."""
    src = tmp_path / "src"
    for sub in ("a", "b"):
        _png(src / sub / "x.png", 50)
    _png(src / "a" / "y.gif")
    _png(src / "a" / "y.png")
    code, out, err = _run(capsys, "run", TINY / "model_fp32.tflite", "--source", str(src / "**" / "*.*"),
                          "--save", tmp_path / "saved")
    assert code == 0, err
    saved = sorted(p.relative_to(tmp_path / "saved").as_posix() for p in (tmp_path / "saved").rglob("*.*"))
    assert saved == [".tledge-save", "a/x.png", "a/y.gif.png", "a/y.png", "b/x.png"]  # the marker: tledge wrote these


@pytest.mark.skipif(sys.platform != "linux", reason="file names as raw bytes")
def test_run_save_of_a_file_name_that_is_not_utf8(tmp_path, capsys):
    """cv2.imwrite crashed the process (SIGSEGV, exit 139) on a Latin-1 file name: no summary, the --csv lost."""
    src = tmp_path / "src"
    _png(src / os.fsdecode(b"caf\xe9.png"), 50)
    _png(src / "ok.png", 60)
    code, out, err = _run(capsys, "run", TINY / "model_fp32.tflite", "--source", src, "--save", tmp_path / "saved",
                          "--csv", tmp_path / "r.csv")
    assert code == 0 and "2 ok" in out, err
    assert sorted(os.listdir(os.fsencode(tmp_path / "saved"))) == [b".tledge-save", b"caf\xe9.png", b"ok.png"]
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 3


def test_run_save_never_replaces_images_it_did_not_write(tmp_path, capsys):
    """`--source coll/a --save coll` replaced the user's coll/x.jpg with the annotated copy of coll/a/x.jpg, exit 0.
    A folder an earlier --save wrote (its marker) is reused; one holding other images is refused before anything."""
    coll = tmp_path / "coll"
    _png(coll / "a" / "x.png", 50)
    _png(coll / "x.png", 200)
    before = (coll / "x.png").read_bytes()
    code, out, err = _run(capsys, "run", TINY / "model_fp32.tflite", "--source", coll / "a", "--save", coll)
    assert code == 2 and "--save" in err and "already holds images" in err and "(x.png)" in err, err
    assert (coll / "x.png").read_bytes() == before and not (coll / ".tledge-save").exists()
    for _ in range(2):  # a new folder, then the same one again
        code, out, err = _run(capsys, "run", TINY / "model_fp32.tflite", "--source", coll / "a", "--save",
                              tmp_path / "saved")
        assert code == 0, err
    assert (tmp_path / "saved" / "x.png").is_file()


def test_a_refused_command_keeps_the_last_run_s_log(tmp_path, capsys):
    """A train refused for its data truncated the previous run's train.log; --out inside the data folder wrote one."""
    _png(tmp_path / "one" / "ants" / "a.png")
    _png(tmp_path / "one" / "ants" / "b.png")
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").write_text("the last run's messages\n")
    code, out, err = _run(capsys, "train", tmp_path / "one", "--out", run, "--size", "32")
    assert code == 2 and "only one class" in err
    assert (run / "train.log").read_text() == "the last run's messages\n"
    _png(tmp_path / "one" / "bees" / "c.png")
    code, out, err = _run(capsys, "train", tmp_path / "one", "--out", tmp_path / "one" / "ants", "--size", "32")
    assert code == 2 and "inside the data folder" in err and not (tmp_path / "one" / "ants" / "train.log").exists()


@pytest.mark.skipif(__import__("sys").platform != "linux", reason="file names as bytes: Linux")
def test_a_class_name_that_is_not_utf8_is_refused_before_training(tmp_path, capsys):
    """A Latin-1 folder name crashed train after training (labels.txt), leaving a run without its labels."""
    import os

    from tledge.errors import DataError
    from tledge.train.data import plan

    for name in (b"ants", b"abeill\xe9"):
        d = os.path.join(os.fsencode(tmp_path), name)
        os.makedirs(d)
        for i in range(3):
            _png(Path(os.fsdecode(os.path.join(d, b"%d.png" % i))))
    with pytest.raises(DataError, match=r"not UTF-8 .*abeill\\udce9"):
        plan(tmp_path)
    code, out, err = _run(capsys, "run", TINY / "model_fp32.tflite", "--source", tmp_path, "--csv", tmp_path / "r.csv")
    assert code == 0 and "abeill\\udce9" in (tmp_path / "r.csv").read_text(encoding="utf-8")


def test_labels_from_a_file_reach_the_terminal_escaped(tmp_path, capsys):
    """A label with a terminal escape sequence or a newline (faking a result line) came out as it was."""
    import json

    import onnx

    from tledge.runtime.outputs import printable

    m = onnx.load(str(TINY / "model_fp32.onnx"))
    hostile = ["ants\x1b]0;pwned\x07", "bees\nfake.jpg: ants 1.000", "wasps\u202e"]
    for prop in m.metadata_props:
        if prop.key == "tledge_contract":
            contract = json.loads(prop.value)
            contract["labels"] = hostile
            prop.value = json.dumps(contract)
        elif prop.key == "labels":
            prop.value = "\n".join(hostile)
    onnx.save(m, str(tmp_path / "m.onnx"))
    photo = _png(tmp_path / "p.png", 120)
    code, out, err = _run(capsys, "run", tmp_path / "m.onnx", "--source", photo, "--top-k", "3")
    assert code == 0 and "\x1b" not in out and "\u202e" not in out and not any(line.startswith("fake") for line in out.splitlines()), out
    assert "ants\\x1b]0;pwned\\x07" in out and "bees\\x0afake.jpg" in out
    code, out, err = _run(capsys, "info", tmp_path / "m.onnx")
    assert code == 0 and "\x1b" not in out and "ants\\x1b]0;pwned" in out
    assert printable("bées 🐝") == "bées 🐝"


def test_save_to_an_image_name_or_an_unwritable_video_says_why(tmp_path, capsys):
    """`--save out.gif` made a folder named out.gif; a video suffix with no encoder said "no such file"."""
    photo = _png(tmp_path / "in" / "p.png", 90)
    code, out, err = _run(capsys, "run", TINY / "model_fp32.tflite", "--source", photo, "--save", tmp_path / "o.gif")
    assert code == 2 and "pass a folder" in err and not (tmp_path / "o.gif").exists()
    from tledge.runtime.outputs import SaveSink

    sink = SaveSink(tmp_path / "o.webm")
    import cv2

    if cv2.VideoWriter(str(tmp_path / "probe.webm"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (16, 16)).isOpened():
        pytest.skip("this OpenCV writes mp4v into .webm")
    from tledge.errors import TledgeError

    with pytest.raises(TledgeError, match="no encoder"):
        sink._write_video(np.zeros((16, 16, 3), np.uint8))
    sink.close()  # nothing to move: the first error stands
    assert not (tmp_path / "o.webm").exists()


def test_train_val_folders_match_the_classes_as_export_does(tmp_path):
    """train --val refused `Ants/` and `BEES/` and NFD names that export and parity accept; `Bees/` beside `bees/`
    trained as two classes without a word; --val equal to the training folder said nothing."""
    import unicodedata

    from tledge.errors import TledgeWarning
    from tledge.train.data import plan

    for split, names in (("train", ("ants", "bées")), ("val", ("Ants", unicodedata.normalize("NFD", "BÉES")))):
        for c in names:
            for i in range(2):
                _png(tmp_path / split / c / f"{i}.png", 30 * i + (100 if split == "val" else 0) + 7 * len(c))
    p = plan(tmp_path / "train", val_dir=tmp_path / "val")
    assert p.classes == ("ants", "bées") and list(p.val.y) == [0, 0, 1, 1]
    _png(tmp_path / "train" / "Ants" / "x.png")
    _png(tmp_path / "train" / "Ants" / "y.png", 9)
    with pytest.warns(TledgeWarning) as said:  # (and: each class trains on a single image)
        plan(tmp_path / "train", val_split=0.5)
    assert any(re.search("differ only in case.*Ants / ants", str(w.message)) for w in said)
    with pytest.warns(TledgeWarning) as said:
        plan(tmp_path / "train", val_dir=tmp_path / "train")
    assert any("is the training folder" in str(w.message) for w in said)


def test_calibrating_on_a_handful_of_images_warns(tiny_model, shapes_dataset, tmp_path, capsys):
    """`--calib` on 2 photos of one class exported int8 without a word."""
    import shutil

    few = tmp_path / "few" / "circle"
    few.mkdir(parents=True)
    for f in sorted((shapes_dataset / "train" / "circle").iterdir())[:2]:
        shutil.copy(f, few / f.name)
    from tledge.errors import TledgeWarning

    with pytest.warns(TledgeWarning, match=r"calibrating int8 on only 2 image\(s\) from .*few"):
        _run(capsys, "export", tiny_model["keras"], "--int8", "--formats", "tflite", "--no-repair",
             "--calib", few.parent, "--val", shapes_dataset / "val", "--out", tmp_path / "o")


def test_calib_images_check_parity_without_int8(tiny_model, shapes_dataset, tmp_path, capsys):
    """`tledge export MODEL --calib DIR` (no --int8, no --val) was refused after loading with 'pass --val DIR (or
    --calib DIR)': the --calib folder is what parity runs on then, as the message says."""
    import shutil

    model = tmp_path / "m" / "model.keras"  # away from any training run's split/ links
    model.parent.mkdir()
    shutil.copy(tiny_model["keras"], model)
    assert _run(capsys, "export", model, "--formats", "tflite", "--calib", shapes_dataset / "val", "--out",
                tmp_path / "o")[0] == 0
    import json

    parity = json.loads((tmp_path / "o" / "parity.json").read_text())
    n = sum(1 for c in (shapes_dataset / "val").iterdir() for _ in c.iterdir())
    assert parity["passed"] and [r["images"] for r in parity["results"]] == [n]


def test_calib_folders_that_do_not_match_the_outputs_give_no_accuracy(tmp_path):
    """With parity's images from --calib, folder i was scored as output i whatever the folders were (0.008 on 725
    ImageNet folders, and a false 'near chance' warning): the --val rule applies to the folder parity reads."""
    from tledge.contract import Contract
    from tledge.errors import TledgeWarning
    from tledge.export.contracting import accuracy_note, folder_truth
    from tledge.export.pipeline import ExportConfig

    for name in ("a", "b"):
        (tmp_path / "calib" / name).mkdir(parents=True)
        _png(tmp_path / "calib" / name / "x.png", 10)
    cfg = ExportConfig(calib=str(tmp_path / "calib"))
    with pytest.warns(TledgeWarning, match="2 class folders in .*calib for 3 outputs"):
        assert folder_truth(cfg, Contract(8, 8), np.zeros((2, 3)), np.array([0, 1])) is None
    assert "could not be matched" in accuracy_note(cfg, None)[0]


def test_cropping_an_extreme_strip_does_not_resize_all_of_it():
    """--fit crop resized a 1x20000 strip to 256x5120000 (4.3 GB) before cropping it."""
    import resource

    from tledge.contract import Contract

    c = Contract(224, 224, fit="crop", crop_fraction=0.875)
    strip = np.full((1, 20000, 3), 128, np.uint8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = c.geometry(strip)
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert out.shape == (224, 224, 3) and (out == 128).all() and grew_mb < 200
    photo = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    import cv2

    big = cv2.resize(photo, (341, 256), interpolation=cv2.INTER_AREA)  # an ordinary photo: resize, then crop
    np.testing.assert_array_equal(c.geometry(photo), big[16:240, 58:282])


def test_a_report_name_ending_in_a_slash_is_a_folder_not_a_file(tmp_path, capsys):
    """`--junit reports/` wrote a file named `reports` (argparse's Path dropped the slash before the check)."""
    code, out, err = _run(capsys, "parity", "--golden", TINY, "--junit", f"{tmp_path / 'reports'}/")
    assert code == 2 and "is a folder; expected a file name" in err and not (tmp_path / "reports").exists()
    code, out, err = _run(capsys, "run", TINY / "model_fp32.tflite", "--source", _png(tmp_path / "p.png"),
                          "--csv", f"{tmp_path / 'results'}/")
    assert code == 2 and "is a folder" in err and not (tmp_path / "results").exists()
