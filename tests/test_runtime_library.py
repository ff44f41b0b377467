"""The runtime as a library in a service: one loaded model shared by threads, one image or a long list handed to
classify(), encoded bytes, and a bad call that must not break the model. On the committed tiny export (no
TensorFlow: also run in the tledge[runtime]-only venv)."""
from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from tiny import IMAGES, MODELS, TINY

from tledge.errors import ImageError, ModelRunError, TledgeError
from tledge.runtime import load


def _arrays():
    from tledge.images import load as load_image

    return [load_image(p) for p in IMAGES]


@pytest.mark.parametrize("name", ["model_fp32.tflite", "model_int8.tflite", "model_int8.onnx"])
def test_one_model_shared_by_threads_gives_each_call_its_own_answer(name):
    """Two threads in one TFLite interpreter raised RuntimeErrors and returned each other's scores (a walkthrough:
    up to 16 of 400 calls with another image's answer); batch sizes differ per call, so the interpreter resizes."""
    m = load(TINY / name, threads=1)
    arrays = _arrays()
    alone = [m.predict(m.prepare(a)) for a in arrays]
    start = threading.Barrier(8)

    def job(t):
        start.wait()
        rng = np.random.default_rng(t)
        out = []
        for _ in range(3):
            for i in rng.permutation(len(arrays)):
                k = 1 + (t + i) % 3  # batches of 1-3 holding image i first
                batch = np.stack([m.prepare(arrays[(i + j) % len(arrays)]) for j in range(k)])
                out.append((i, m.predict(batch)[0]))
        return out

    with ThreadPoolExecutor(8) as pool:
        results = [r for rs in pool.map(job, range(8)) for r in rs]
    assert len(results) == 8 * 3 * len(arrays)
    for i, y in results:
        np.testing.assert_array_equal(y, alone[i][0])


def test_classify_takes_one_image_or_a_sequence_and_runs_long_lists_in_chunks(monkeypatch):
    m = load(TINY / "model_int8.tflite", threads=1)
    arrays = _arrays()
    listed = m.classify(list(IMAGES), top_k=2)
    assert len(listed) == len(IMAGES) and all(len(p) == 2 for p in listed)
    # one image, whichever way it comes, is one list of predictions (a 500x366 array gave 500 results, one per row)
    assert m.classify(arrays[0], top_k=2) == listed[0]
    assert m.classify(IMAGES[0], top_k=2) == listed[0]
    assert m.classify(str(IMAGES[0]), top_k=2) == listed[0]  # was "cannot read image /"
    encoded = IMAGES[0].read_bytes()
    assert m.classify(encoded, top_k=2) == listed[0]
    assert m.classify(io.BytesIO(encoded), top_k=2) == listed[0]
    assert m.classify([encoded, IMAGES[1]], top_k=2) == listed[:2]
    o = load(TINY / "model_fp32.onnx", threads=1)  # a dynamic batch (the tiny int8 TFLite file takes 1)
    sizes = []
    run = o.backend.run
    monkeypatch.setattr(o.backend, "run", lambda x: (sizes.append(len(x)), run(x))[1])
    chunked = o.classify(list(IMAGES) * 3, top_k=2, batch=4)
    assert chunked == o.classify(list(IMAGES), top_k=2) * 3
    assert sizes == [4] * (len(IMAGES) * 3 // 4) + [len(IMAGES)]  # chunks of 4, then the list in one (32 a call)
    with pytest.raises(ValueError, match="top_k"):
        m.classify(arrays[0], top_k=0)
    with pytest.raises(ImageError, match="None"):
        m.classify([None])
    with pytest.raises(ImageError, match="bytes"):
        m.classify(b"not an image")


@pytest.mark.parametrize("name", [n for n in MODELS if n.endswith((".tflite", ".onnx"))])
def test_a_wrong_input_is_one_error_and_the_model_still_works(name):
    """A TFLite interpreter resized for a bad input stayed at that shape: every later call failed."""
    m = load(TINY / name, threads=1)
    want = m.classify(IMAGES[0], top_k=3)
    c = m.contract
    for bad in (np.zeros((c.height, c.width), np.float32), np.zeros((1, 7, 9, c.channels), np.float32),
                np.zeros((2, c.height + 1, c.width, c.channels), np.float32)):
        with pytest.raises(ModelRunError, match="takes inputs of shape"):
            m.predict(bad)
    assert isinstance(ModelRunError("x"), TledgeError)
    assert m.classify(IMAGES[0], top_k=3) == want


@pytest.mark.parametrize("name", ["model_int8.tflite", "model_fp32.onnx"])
def test_a_model_closes_and_its_arguments_are_checked(name):
    with load(TINY / name, threads=1) as m:
        assert m.classify(IMAGES[0])
    with pytest.raises(ModelRunError, match="is closed"):
        m.classify(IMAGES[0])
    for threads in (0, -1, 1.5, True, 100000):  # -1 was accepted by onnxruntime; 100000 segfaulted LiteRT
        with pytest.raises(ValueError, match=r"threads must be an integer in \[1, 1024\]"):
            load(TINY / name, threads=threads)
    with pytest.raises(TledgeError, match="takes the path"):
        load(None)


@pytest.mark.parametrize("name", ["model_int8.tflite", "model_int8.onnx"])
def test_a_model_pickles_as_what_loaded_it(name):
    """multiprocessing / ProcessPoolExecutor pickle their arguments: an EdgeModel raised 'cannot pickle' on the
    interpreter. It is pickled as its path and load() arguments, and loaded again (with the same checks) there."""
    import pickle
    from concurrent.futures import ProcessPoolExecutor

    model = load(TINY / name, threads=1)
    again = pickle.loads(pickle.dumps(model))
    assert again is not model and again.path == model.path and again.contract == model.contract
    assert np.array_equal(again.predict(np.stack([model.contract.prepare(IMAGES[0])])),
                          model.predict(np.stack([model.contract.prepare(IMAGES[0])])))
    import multiprocessing

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:  # no fork under TF threads
        got = pool.submit(_top_label, model, str(IMAGES[1])).result(timeout=120)
    assert got == model.classify(IMAGES[1])[0].label
    model.loaded_with = None  # not made by load(): said, not a half-built copy
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(model)


def _top_label(model, image: str) -> str:
    return model.classify(image)[0].label


def test_what_is_not_an_image_is_said_and_an_open_file_reads_as_its_path():
    """A bug hunt found: an open file (its .mode is "rb") taken for a PIL image; HxWx2, CHW and 1-D arrays iterated
    into rows of grey images (48 results for one array); None, a number, predict("x") and an empty batch as
    TypeError / ValueError."""
    from tledge.errors import ArgumentError

    m = load(TINY / "model_int8.onnx", threads=1)
    a = _arrays()[0]
    with open(IMAGES[0], "rb") as f:
        assert m.classify(f, top_k=3) == m.classify(IMAGES[0], top_k=3)
    for bad in (a[..., :2], np.ascontiguousarray(a.transpose(2, 0, 1)), np.dstack([a, a[..., :2]]), a.reshape(-1)):
        with pytest.raises(ImageError, match=rf"shape \({bad.shape[0]},"):
            m.classify(bad)
    for bad in (None, 3):
        with pytest.raises(ImageError, match=type(bad).__name__):
            m.classify(bad)
    with pytest.raises(ModelRunError, match="as numbers"):
        m.predict("x")
    assert m.predict(np.zeros((0, *a.shape[:0], m.contract.height, m.contract.width, 3), np.float32)).shape == (0, 3)
    assert m.classify([]) == []
    assert issubclass(ArgumentError, ValueError) and issubclass(ArgumentError, TledgeError)


def test_a_pil_image_is_turned_by_its_exif_orientation_as_its_file_is(tmp_path):
    """Image.open() leaves EXIF orientation to the caller: a turned photo passed as a PIL image was classified
    sideways, the same file by path upright. (Pillow is not in tledge[runtime]: skipped where it is absent.)"""
    Image = pytest.importorskip("PIL.Image")
    m = load(TINY / "model_int8.onnx", threads=1)
    # a photo taken with the camera turned: pixels stored sideways, EXIF orientation 6 (rotate 90 degrees clockwise)
    upright = Image.open(next(p for p in IMAGES if "hstripes" in p.name)).convert("RGB")  # sideways: vstripes
    img = upright.transpose(Image.Transpose.ROTATE_90)  # stored sideways; orientation 6 turns it back upright
    exif = img.getexif()
    exif[274] = 6
    for suffix in (".jpg", ".png"):
        path = tmp_path / f"turned{suffix}"
        img.save(path, exif=exif, quality=95)
        as_file = m.classify(path, top_k=3)
        assert m.classify(Image.open(path), top_k=3) == as_file
        assert as_file[0].label == m.classify(upright)[0].label == "hstripes"


def test_tledge_threads_out_of_range_is_refused_not_ignored_or_taken(monkeypatch):
    """TLEDGE_THREADS=abc / 0 were silently ignored, 100000 taken whole (a segfault, or 14,000 threads)."""
    from tledge.errors import ArgumentError

    for value in ("abc", "0", "-2", "100000"):
        monkeypatch.setenv("TLEDGE_THREADS", value)
        with pytest.raises(ArgumentError, match=r"TLEDGE_THREADS=.*expected a number of threads in \[1, 1024\]"):
            load(TINY / "model_int8.tflite")
    monkeypatch.setenv("TLEDGE_THREADS", " 2 ")
    assert load(TINY / "model_int8.tflite").backend.threads == 2


def test_load_arguments_of_the_wrong_kind_are_named():
    """delegates="edgetpu" was split into letters (OSError: 'e: cannot open shared object file'); contract="tf" an
    AttributeError; labels=5 a TypeError; providers=["FooProvider"] dropped silently."""
    from tledge.errors import ArgumentError

    for kwargs, said in ((dict(delegates="edgetpu"), "not one string"), (dict(contract="tf"), "tledge.Contract"),
                         (dict(labels=5), "labels file or a list"), (dict(providers="CPUExecutionProvider"),
                                                                     "not one string")):
        with pytest.raises(ArgumentError, match=said):
            load(TINY / "model_int8.tflite", **kwargs)
    with pytest.raises(ArgumentError, match="'FooProvider' not an onnxruntime execution provider"):
        load(TINY / "model_int8.onnx", providers=["FooProvider"])
    assert load(TINY / "foreign" / "model_fp32.onnx", labels=TINY / "labels.txt",
                preprocess="tf").contract.labels == ("circle", "hstripes", "vstripes")


def test_a_folder_exported_before_manifests_points_to_its_files(tmp_path):
    """A folder from a tledge without manifests was refused with "run tledge export again" (TensorFlow and the Keras
    model, which a board does not have) and named `tledge run` to a library caller; each of its files runs as is."""
    import shutil

    from tledge.errors import TledgeError
    from tledge.runtime import load

    old = tmp_path / "old_export"
    old.mkdir()
    shutil.copy(TINY / "model_int8.tflite", old)
    shutil.copy(TINY / "tledge.json", old)
    with pytest.raises(TledgeError, match=r"so tledge.runtime.load cannot trust it as a folder .*: pass one of its "
                                          r"files \(.*model_int8.tflite\), which carries its contract"):
        load(old)
    assert load(old / "model_int8.tflite").contract.labels
