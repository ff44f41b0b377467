"""Catalogue of bad inputs across every verb (issue 10, part 4).

Each case builds its hostile input under a fresh tmp folder and runs `tledge.cli.main`. Every one must
end with exit code 2 and exactly one line on stderr, `tledge VERB: error: ...`, naming the input, with
no traceback, nothing on stdout, and the folder exactly as it was (nothing half-written). Almost all
of them fail before any model or TensorFlow is loaded, so this file stays fast.
"""
from __future__ import annotations

import json
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from hostile import (bundle, d, dangling_class, export, export_dir, f, fifo, fifo_at, h5, images, parity, run, tfl, thresholds, train,
                     train_folder, truncated_keras, with_split)
from tiny import TINY

from tledge.cli import main
from tledge.errors import TledgeWarning


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Path], list[str]]
    expect: str  # a fragment of the message; {tmp} is the case's folder


CASES = [
    # ---- outputs onto inputs (helper 124) -------------------------------------------------------------------
    Case("parity-junit-is-the-exports-manifest", lambda t: ["parity", h5(t), export_dir(t) + "/model_int8.tflite",
                                                            "--images", images(t), "--junit", f"{t}/exp/manifest.json"],
         "{tmp}/exp/manifest.json, an input of this command"),  # the export was refused afterwards
    Case("parity-junit-is-the-references-contract", lambda t: parity(t, "--junit", f(t, "tledge.json", "{}")),
         "{tmp}/tledge.json, an input of this command"),
    Case("train-out-is-an-export", lambda t: ["train", images(t), "--out", export_dir(t)],
         "is a tledge export folder (it has manifest.json)"),  # its tledge.json was replaced, exit 0
    Case("train-loose-files-and-an-empty-class", lambda t: ["train", images(t), "--out", f"{t}/run"]
         + [f(t, "imgs/notes.txt"), d(t, "imgs/empty")][:0],  # two warnings came before the error: three lines
         "class folder(s) without images in {tmp}/imgs: empty"),
    Case("run-foreign-model-and-too-few-labels", lambda t: ["run", str(TINY / "foreign" / "model_fp32.onnx"), "--labels",
                                                          f(t, "l.txt", "one\n"), "--source", images(t)],
         "1 labels but the model has 3 outputs"),  # a "feeding raw 0..255 pixels" warning came first: two lines
    Case("train-a-class-of-dangling-links", lambda t: ["train", dangling_class(t), "--out", f"{t}/run"],
         "class folder(s) without images in {tmp}/links: b. Add images (.jpg, .png, ...) or move the empty folder(s) "
         "out of {tmp}/links (also found: ignoring 2 symbolic link(s) to missing files"),  # why b/ has none
    Case("parity-junit-inside-a-savedmodel-reference", lambda t: ["parity", str(Path(f(t, "sm/saved_model.pb")).parent),
                                                                tfl(t), "--images", images(t), "--junit",
                                                                f"{t}/sm/saved_model.pb"],
         "an input of this command"),  # the model was replaced by 207 bytes of XML, exit 0
    Case("export-out-inside-val", lambda t: export(t, "--out", f"{t}/imgs/out"), "is inside the --val folder"),
    Case("demo-out-holds-a-foreign-model", lambda t: ["demo", "--weights", "none", "--out",
                                                      str(Path(f(t, "D/train/model.keras", "x")).parents[1])],
         "holds model.keras, which tledge train did not write"),  # found after the data was made: exit 1, 5 lines
    Case("info-newline-in-the-path", lambda t: ["info", f"{t}/x\ny.tflite"], "x\\x0ay.tflite: model file not found"),
    # ---- export -----------------------------------------------------------------------------------------
    Case("export-split-found-then-a-bad-option", lambda t: ["export", with_split(t), "--fidelity", "1.5"],
         "--fidelity must be in (0, 1]"),  # the note naming split/ came first: two lines
    Case("export-split-leads-nowhere", lambda t: ["export", with_split(t, moved=True)],
         "split/ no longer leads to its images (the data folder moved or was deleted)"),
    Case("export-fp16-without-tflite", lambda t: export(t, "--formats", "onnx", "--fp16", "--dynamic"),
         "--fp16 and --dynamic: TFLite precisions, and --formats onnx writes no TFLite file"),
    Case("export-unknown-option", lambda t: export(t, "--bogus", "1"), "unrecognized arguments: --bogus 1"),
    Case("export-model-missing", lambda t: ["export", str(t / "no.h5")], "MODEL {tmp}/no.h5: model file not found"),
    Case("export-model-folder-not-savedmodel", lambda t: ["export", d(t, "m")], "not a SavedModel"),
    Case("export-model-is-a-train-folder", lambda t: ["export", train_folder(t)],
         "not a SavedModel (no saved_model.pb); it holds model.keras: pass {tmp}/run/model.keras"),
    Case("export-model-unsupported-suffix", lambda t: ["export", f(t, "m.pt")], "unsupported file type '.pt'"),
    Case("export-model-truncated-keras", lambda t: ["export", truncated_keras(t)], "cut.keras is truncated or corrupt"),
    Case("export-model-keras-not-zip", lambda t: ["export", f(t, "m.keras", "hello")], "not a .keras (zip) archive"),
    Case("export-model-keras-zip-without-config", lambda t: ["export", _zip_without_config(t)], "without config.json"),
    Case("export-model-empty-h5", lambda t: ["export", f(t, "m.h5", b"")], "m.h5 is empty"),
    Case("export-model-h5-not-hdf5", lambda t: ["export", f(t, "m.h5", "text")], "m.h5 is not an HDF5 file"),
    Case("export-out-is-a-file", lambda t: export(t, "--out", f(t, "out")), "--out {tmp}/out is a file"),
    Case("export-out-under-proc", lambda t: export(t, "--out", "/proc/tledge_out"), "/proc/tledge_out is under /proc"),
    Case("export-out-parent-is-a-file", lambda t: export(t, "--out", f(t, "p") + "/out"), "{tmp}/p is a file"),
    Case("export-thresholds-missing", lambda t: export(t, "--thresholds", str(t / "no.json")),
         "--thresholds {tmp}/no.json: file not found"),
    Case("export-thresholds-folder", lambda t: export(t, "--thresholds", d(t, "th")), "th is a folder"),
    Case("export-thresholds-not-json", lambda t: thresholds(t, "{int8: }"), "t.json: not valid JSON"),
    Case("export-thresholds-broken-toml", lambda t: thresholds(t, "[int8\nmin_agreement = ", "t.toml"),
         "t.toml: not valid TOML"),
    Case("export-thresholds-list", lambda t: thresholds(t, "[0.9, 0.98]"), "must be a table"),
    Case("export-thresholds-value-not-table", lambda t: thresholds(t, '{"int8": 0.97}'), "must be a table of fields"),
    Case("export-thresholds-unknown-field", lambda t: thresholds(t, '{"int8": {"min_agreemnt": 0.9}}'),
         "unknown field(s) ['min_agreemnt']"),
    Case("export-thresholds-agreement-above-1", lambda t: thresholds(t, '{"int8": {"min_agreement": 1.5}}'),
         "int8.min_agreement must be in [0, 1]"),
    Case("export-thresholds-negative-max-abs", lambda t: thresholds(t, '{"fp32": {"max_abs": -1}}'),
         "fp32.max_abs must be in"),
    Case("export-thresholds-string-value", lambda t: thresholds(t, '{"fp16": {"min_agreement": "high"}}'),
         "must be a number"),
    Case("export-val-missing", lambda t: ["export", h5(t), "--val", str(t / "val")], "--val {tmp}/val: folder not found"),
    Case("export-calib-is-a-file", lambda t: export(t, "--calib", f(t, "c.jpg")), "--calib {tmp}/c.jpg is a file"),
    Case("export-calib-without-images", lambda t: export(t, "--int8", "--calib", d(t, "empty")),
         "--calib {tmp}/empty: no images in it or in its class folders"),
    Case("export-val-class-folders-without-images",
         lambda t: ["export", h5(t), "--val", str(Path(f(t, "v/ants/notes.txt")).parents[1])],
         "--val {tmp}/v: no images in it or in its class folders"),
    Case("export-labels-missing", lambda t: export(t, "--labels", str(t / "l.txt")), "labels file not found"),
    Case("export-labels-empty", lambda t: export(t, "--labels", f(t, "l.txt", b"")), "l.txt is empty"),
    Case("export-labels-blank-lines", lambda t: export(t, "--labels", f(t, "l.txt", "\n \n")), "labels file is empty"),
    Case("export-input-size-huge", lambda t: export(t, "--input-size", "10000x10000"), "each side must be 1..4096"),
    Case("export-input-size-garbage", lambda t: export(t, "--input-size", "big"), "--input-size wants HxW"),
    Case("export-input-size-zero", lambda t: export(t, "--input-size", "0x5"), "--input-size 0x5"),
    Case("export-fidelity-above-1", lambda t: export(t, "--fidelity", "1.5"), "--fidelity must be in (0, 1]"),
    Case("export-repair-time-zero", lambda t: export(t, "--repair-time", "0"), "--repair-time must be > 0, got 0"),
    Case("export-repair-time-negative", lambda t: export(t, "--repair-time", "-30"), "--repair-time must be > 0"),
    Case("export-repair-time-nan", lambda t: export(t, "--repair-time", "nan"), "--repair-time must be > 0"),
    Case("export-repair-time-not-a-number", lambda t: export(t, "--repair-time", "5min"),
         "argument --repair-time: invalid float value: '5min'"),
    Case("export-repair-time-with-no-repair", lambda t: export(t, "--repair-time", "60", "--no-repair"),
         "--no-repair turns it off"),
    Case("export-calib-limit-zero", lambda t: export(t, "--calib-limit", "0"), "--calib-limit must be >= 1"),
    Case("export-unknown-format", lambda t: export(t, "--formats", "tflite,pt"), "unknown format 'pt'"),
    Case("export-unknown-preprocess", lambda t: export(t, "--preprocess", "bogus"), "unknown preprocessing 'bogus'"),
    Case("export-unknown-device", lambda t: export(t, "--device", "toaster"), "unknown device 'toaster'"),
    Case("export-force-without-auto", lambda t: export(t, "--force"), "--force only applies"),
    Case("export-preprocess-auto-without-val", lambda t: ["export", h5(t), "--preprocess", "auto"],
         "--preprocess auto needs labelled --val images"),
    Case("export-int8-without-images", lambda t: ["export", h5(t), "--int8"], "--int8 needs calibration images"),
    Case("export-without-images", lambda t: ["export", h5(t)], "parity needs real images: pass --val DIR"),
    Case("export-calib-random-without-int8", lambda t: ["export", h5(t), "--calib", "random"], "--calib random is noise"),
    Case("export-int8-only-without-int8", lambda t: export(t, "--int8-only"), "--int8-only is about int8 files"),
    Case("export-labels-file-names-fewer-classes-than-val", lambda t: export(t, "--labels", f(t, "l.txt", "a\n")),
         "(in --labels {tmp}/l.txt): make the file name every class folder"),  # said after 15 s of loading Keras
    Case("export-folders-contradict-model-labels", lambda t: _foreign_labels(t), "match none of the model's 2 labels"),
    # ---- run ---------------------------------------------------------------------------------------------
    Case("run-model-missing", lambda t: ["run", str(t / "m.tflite"), "--source", d(t, "s")], "model file not found"),
    Case("run-model-wrong-suffix", lambda t: ["run", f(t, "m.txt"), "--source", d(t, "s")], "unsupported file type"),
    Case("run-model-is-a-folder", lambda t: ["run", d(t, "m"), "--source", d(t, "s")], "m is not a tledge export folder"),
    Case("run-model-is-a-train-folder", lambda t: ["run", train_folder(t), "--source", d(t, "s")],
         "{tmp}/run holds a Keras model (model.keras), not exported files: export it first (tledge export "
         "{tmp}/run/model.keras)"),
    Case("run-model-empty", lambda t: ["run", f(t, "m.onnx", b""), "--source", d(t, "s")], "m.onnx is empty"),
    Case("run-source-missing", lambda t: ["run", tfl(t), "--source", str(t / "nope.jpg")], "source not found"),
    Case("run-source-a-device", lambda t: ["run", tfl(t), "--source", "/dev/null"],
         "source '/dev/null' is neither a regular file nor a folder"),
    Case("run-csv-is-a-folder", lambda t: run(t, "--csv", d(t, "out")), "--csv {tmp}/out is a folder"),
    Case("run-csv-is-a-fifo", lambda t: run(t, "--csv", fifo(t, "pipe.csv")), "is not a regular file"),
    Case("run-csv-parent-is-a-file", lambda t: run(t, "--csv", f(t, "x") + "/r.csv"), "{tmp}/x is a file"),
    Case("run-save-video-under-proc", lambda t: run(t, "--save", "/proc/out.mp4"), "is under /proc"),
    Case("run-save-folder-is-a-file", lambda t: run(t, "--save", f(t, "frames")), "--save {tmp}/frames is a file"),
    Case("run-workers-negative", lambda t: run(t, "--workers", "-2"), "--workers must be in [1, 64], got -2"),
    Case("run-workers-zero", lambda t: run(t, "--workers", "0"), "--workers must be"),
    Case("run-max-frames-negative", lambda t: run(t, "--max-frames", "-1"), "--max-frames must be >= 1, got -1"),
    Case("run-max-frames-zero", lambda t: run(t, "--max-frames", "0"), "--max-frames must be >= 1"),
    Case("run-threshold-above-1", lambda t: run(t, "--threshold", "5"), "--threshold must be in [0, 1], got 5"),
    Case("run-threshold-negative", lambda t: run(t, "--threshold", "-0.5"), "--threshold must be in [0, 1]"),
    Case("run-threshold-nan", lambda t: run(t, "--threshold", "nan"), "--threshold must be"),
    Case("run-providers-misspelt", lambda t: ["run", f(t, "m.onnx"), "--source", d(t, "s"), "--providers", "cdua"],
         "--providers: 'cdua' is not an onnxruntime execution provider"),
    Case("run-crop-with-fit-letterbox", lambda t: run(t, "--crop", "0.875", "--fit", "letterbox"),
         "--crop 0.875 centre-crops: it cannot go with --fit letterbox"),
    Case("run-top-k-zero", lambda t: run(t, "--top-k", "0"), "--top-k must be >= 1"),
    Case("run-top-k-not-int", lambda t: run(t, "--top-k", "x"), "argument --top-k: invalid int value: 'x'"),
    Case("run-reconnect-negative", lambda t: run(t, "--reconnect", "-1"), "--reconnect must be >= 0"),
    Case("run-reconnect-delay-negative", lambda t: run(t, "--reconnect-delay", "-1"), "--reconnect-delay must be"),
    Case("run-threads-zero", lambda t: run(t, "--threads", "0"), "--threads must be in [1, 1024]"),
    Case("run-labels-missing", lambda t: run(t, "--labels", str(t / "l.txt")), "--labels {tmp}/l.txt"),
    Case("run-input-size-huge", lambda t: run(t, "--input-size", "10000x10000"), "each side must be 1..4096"),
    Case("run-crop-zero", lambda t: run(t, "--crop", "0"), "--crop must be in (0, 1]"),
    Case("run-crop-above-1", lambda t: run(t, "--crop", "1.5"), "--crop must be in (0, 1]"),
    Case("run-mean-garbage", lambda t: run(t, "--mean", "red"), "--mean wants 1 or 3 numbers"),
    Case("run-mean-two-values", lambda t: run(t, "--mean", "1,2"), "--mean wants 1 or 3"),
    Case("run-std-zero", lambda t: run(t, "--std", "0"), "--std values must be > 0"),
    Case("run-unknown-preprocess", lambda t: run(t, "--preprocess", "bogus"), "unknown preprocessing 'bogus'"),
    Case("run-delegate-missing", lambda t: run(t, "--delegate", str(t / "lib" / "edgetpu.so")), "file not found"),
    Case("run-layout-invalid", lambda t: run(t, "--layout", "chw"), "argument --layout: invalid choice"),
    Case("run-providers-on-tflite", lambda t: run(t, "--providers", "cuda"),
         "--providers chooses onnxruntime execution providers and has no effect on .tflite files"),
    Case("info-delegate-on-onnx", lambda t: ["info", f(t, "m.onnx", b"\x08\x07" * 32), "--delegate", "libedgetpu.so.1"],
         "--delegate loads a TFLite delegate and has no effect on .onnx files"),
    Case("bench-providers-on-tflite-only", lambda t: ["bench", tfl(t), "--providers", "cpu"], "no effect on .tflite"),
    # ---- info --------------------------------------------------------------------------------------------
    Case("info-model-missing", lambda t: ["info", str(t / "m.onnx")], "m.onnx: model file not found"),
    Case("info-model-folder", lambda t: ["info", d(t, "m")], "is not a tledge export folder (no manifest.json)"),
    Case("info-model-empty", lambda t: ["info", f(t, "m.tflite", b"")], "is empty"),
    Case("info-model-garbage-tflite", lambda t: ["info", f(t, "m.tflite", b"not a flatbuffer" * 4)],
         "cannot load TFLite model {tmp}/m.tflite"),
    Case("info-model-garbage-onnx", lambda t: ["info", f(t, "m.onnx", b"not a protobuf" * 4)],
         "cannot load ONNX model {tmp}/m.onnx"),
    Case("info-threads-zero", lambda t: ["info", tfl(t), "--threads", "0"], "--threads must be"),
    # ---- bench -------------------------------------------------------------------------------------------
    Case("bench-model-missing", lambda t: ["bench", str(t / "m.tflite")], "model file not found"),
    Case("bench-folder-without-models", lambda t: ["bench", d(t, "e")], "no .tflite or .onnx files"),
    Case("bench-folder-without-manifest",  # benched every file, exit 0
         lambda t: ["bench", str(Path(f(t, "e/model_fp32.tflite", b"\0\0\0\0TFL3" + bytes(64))).parent)],
         "{tmp}/e has no manifest.json, so tledge bench cannot trust it as a folder (written by hand or by a tledge "
         "without manifests): pass one of its files ({tmp}/e/model_fp32.tflite)"),
    Case("bench-runs-zero", lambda t: ["bench", tfl(t), "--runs", "0"], "--runs must be in [1, 1000000], got 0"),
    Case("bench-warmup-negative", lambda t: ["bench", tfl(t), "--warmup", "-1"], "--warmup must be"),
    Case("bench-batch-zero", lambda t: ["bench", tfl(t), "--batch", "0"], "--batch must be in [1, 1024]"),
    Case("bench-batch-huge", lambda t: ["bench", tfl(t), "--batch", "100000"], "--batch must be in [1, 1024]"),
    # ---- train -------------------------------------------------------------------------------------------
    Case("train-data-missing", lambda t: ["train", str(t / "data")], "DATA_DIR {tmp}/data: folder not found"),
    Case("train-alpha-on-resnet", lambda t: train(t, "--backbone", "resnet50", "--alpha", "0.25"),
         "--alpha is the width multiplier of MobileNet backbones; resnet50 has none"),
    Case("train-data-is-a-file", lambda t: ["train", f(t, "data.zip")], "DATA_DIR {tmp}/data.zip is a file"),
    Case("train-out-is-a-file", lambda t: ["train", images(t), "--out", f(t, "run")], "--out {tmp}/run is a file"),
    Case("train-weights-missing", lambda t: train(t, "--weights", str(t / "w.h5")), "--weights {tmp}/w.h5"),
    Case("train-size-huge", lambda t: train(t, "--size", "100000"), "--size must be in [8, 4096]"),
    Case("train-batch-zero", lambda t: train(t, "--batch", "0"), "--batch must be in [1, 65536]"),
    Case("train-seed-negative", lambda t: train(t, "--seed", "-1"), "--seed must be in [0, 4294967295]"),
    Case("train-size-under-the-backbone-s", lambda t: train(t, "--size", "13"),
         "--size 13: mobilenet takes inputs of at least 32x32"),
    Case("train-size-under-xception-s", lambda t: train(t, "--backbone", "xception", "--size", "64"),
         "--size 64: xception takes inputs of at least 71x71"),
    Case("train-val-split-above-1", lambda t: train(t, "--val-split", "1.5"), "val split must be between 0 and 1"),
    Case("train-val-missing", lambda t: train(t, "--val", str(t / "v")), "--val {tmp}/v: folder not found"),
    Case("train-epochs-negative", lambda t: train(t, "--epochs", "-1"), "--epochs must be"),
    Case("train-max-drop-above-1", lambda t: train(t, "--fine-tune-max-drop", "1.5"),
         "--fine-tune-max-drop must be in [0, 1], got 1.5"),
    # ---- parity ------------------------------------------------------------------------------------------
    Case("parity-reference-missing", lambda t: ["parity", str(t / "r.h5"), tfl(t), "--images", images(t)],
         "REFERENCE {tmp}/r.h5: model file not found"),
    Case("parity-exported-missing", lambda t: ["parity", h5(t), str(t / "x.tflite"), "--images", images(t)],
         "EXPORTED {tmp}/x.tflite: model file not found"),
    Case("parity-exported-folder-empty", lambda t: ["parity", h5(t), d(t, "ex"), "--images", images(t)],
         "no .tflite or .onnx files"),
    Case("parity-images-missing", lambda t: ["parity", h5(t), tfl(t), "--images", str(t / "i")], "--images {tmp}/i"),
    Case("parity-images-without-images", lambda t: ["parity", h5(t), tfl(t), "--images", d(t, "i")],
         "--images {tmp}/i: no images in it or in its class folders"),
    Case("parity-junit-is-a-folder", lambda t: parity(t, "--junit", d(t, "j")), "--junit {tmp}/j is a folder"),
    Case("parity-thresholds-missing", lambda t: parity(t, "--thresholds", str(t / "t.toml")), "file not found"),
    Case("parity-thresholds-fifo", lambda t: parity(t, "--thresholds", fifo_at(t / "t.json")),
         "--thresholds {tmp}/t.json is not a regular file"),  # said "file not found" for a file that is there
    Case("parity-thresholds-broken-toml", lambda t: parity(t, "--thresholds", f(t, "t.toml", "a = [")),
         "not valid TOML"),
    Case("parity-unknown-preprocess", lambda t: parity(t, "--preprocess", "bogus"), "unknown preprocessing"),
    # ---- devices -----------------------------------------------------------------------------------------
    Case("devices-show-unknown", lambda t: ["devices", "show", "toaster"], "unknown device 'toaster'"),
    Case("devices-detect-root-missing", lambda t: ["devices", "detect", "--root", str(t / "r")], "--root {tmp}/r"),
    Case("devices-detect-root-is-a-file", lambda t: ["devices", "detect", "--root", f(t, "r")], "is a file"),
    Case("devices-unknown-action", lambda t: ["devices", "explode"], "invalid choice: 'explode'"),
    # ---- bundle ------------------------------------------------------------------------------------------
    Case("bundle-export-missing", lambda t: ["bundle", str(t / "e"), "--device", "rpi4"], "EXPORT_DIR {tmp}/e"),
    Case("bundle-export-is-a-file", lambda t: ["bundle", f(t, "e"), "--device", "rpi4"], "is a file"),
    Case("bundle-out-is-a-folder", lambda t: bundle(t, "--device", "rpi4", "--out", d(t, "o")),
         "--out {tmp}/o is a folder"),
    Case("bundle-out-wrong-suffix", lambda t: bundle(t, "--device", "rpi4", "--out", str(t / "b.zip")),
         "expected a name ending in .tar.gz"),
    Case("bundle-unknown-device", lambda t: bundle(t, "--device", "toaster"), "unknown device 'toaster'"),
    Case("bundle-threads-zero", lambda t: bundle(t, "--device", "rpi4", "--threads", "0"), "--threads must be"),
    # ---- demo --------------------------------------------------------------------------------------------
    Case("demo-out-is-a-file", lambda t: ["demo", "--out", f(t, "o")], "--out {tmp}/o is a file"),
    Case("demo-weights-missing", lambda t: ["demo", "--out", str(t / "o"), "--weights", str(t / "w.h5")],
         "--weights {tmp}/w.h5"),
    Case("demo-size-zero", lambda t: ["demo", "--size", "0"], "argument --size: must be >= 1"),
    Case("demo-size-huge", lambda t: ["demo", "--out", str(t / "o"), "--size", "100000"], "--size must be in"),
    Case("demo-n-train-zero", lambda t: ["demo", "--n-train", "0"], "argument --n-train: must be >= 1"),
    Case("demo-seed-negative", lambda t: ["demo", "--out", str(t / "o"), "--seed", "-1"], "--seed must be in"),
]


def _zip_without_config(t: Path) -> str:
    with zipfile.ZipFile(t / "m.keras", "w") as z:
        z.writestr("readme.txt", "hi")
    return str(t / "m.keras")


def _foreign_labels(t: Path) -> list[str]:
    """A model with its own labels.txt (person / no_person) and --val folders named ants / bees."""
    model = h5(t, "vww/model.h5")
    f(t, "vww/labels.txt", "person\nno_person\n")
    return ["export", model, "--val", images(t, "hymenoptera", ("ants", "bees"))]


def snapshot(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def test_the_catalogue_is_large_and_covers_every_verb():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) >= 60
    verbs = {c.id.split("-")[0] for c in CASES}
    assert verbs == {"export", "run", "info", "bench", "train", "parity", "devices", "bundle", "demo"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
    assert_refused(case, tmp_path, capsys, monkeypatch)


def assert_refused(case, tmp_path, capsys, monkeypatch) -> None:
    """Exit 2, one line naming what is wrong, nothing on stdout, nothing written (also test_cli_options' cases)."""
    monkeypatch.chdir(tmp_path)
    argv = case.argv(tmp_path)
    before = snapshot(tmp_path)
    with warnings.catch_warnings():  # shown, as a user sees them (pyproject makes them errors): one line is checked
        warnings.simplefilter("default", TledgeWarning)
        rc = main(argv)
    cap = capsys.readouterr()
    lines = [ln for ln in cap.err.splitlines() if ln.strip()]
    assert rc == 2, cap.err
    assert "Traceback" not in cap.err
    assert len(lines) == 1, cap.err
    assert lines[0].startswith(f"tledge {argv[0]}: error: "), lines[0]
    assert case.expect.format(tmp=tmp_path) in lines[0], lines[0]
    assert cap.out == ""
    assert snapshot(tmp_path) == before, "something was written"


def test_json_thresholds_with_a_bom_are_read(tmp_path):
    """Not a bad input: Windows editors write a BOM; the file must still load."""
    from tledge.export.parity import load_thresholds

    p = tmp_path / "t.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps({"int8": {"min_agreement": 0.9}}).encode())
    assert load_thresholds(p)["int8"].min_agreement == 0.9


def test_bad_inputs_are_refused_before_tensorflow_is_imported(tmp_path):
    """export, parity and train check everything before importing TensorFlow or loading the model."""
    import subprocess
    import sys

    for sub in "abce":
        (tmp_path / sub).mkdir()
    cases = [thresholds(tmp_path / "a", "{int8: }"), parity(tmp_path / "b", "--junit", d(tmp_path / "b", "j")),
             train(tmp_path / "c", "--size", "100000"), export(tmp_path / "e", "--input-size", "10000x10000")]
    code = ("import sys, json; from tledge.cli import main; "
            "rcs = [main(a) for a in json.loads(sys.argv[1])]; "
            "print(json.dumps([rcs, 'tensorflow' in sys.modules, 'keras' in sys.modules]))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-c", code, json.dumps(cases)], capture_output=True, text=True, env=env,
                       timeout=120)
    rcs, tf_loaded, keras_loaded = json.loads(r.stdout.strip().splitlines()[-1])
    assert rcs == [2, 2, 2, 2] and not tf_loaded and not keras_loaded, r.stderr
