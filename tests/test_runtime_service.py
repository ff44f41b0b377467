"""The runtime as a service uses it (helper 136): a TFLite model that another thread was running when the process
forked refused every call in the child for good, blaming "references to internal data"; uploads that are no image
raised PIL's, numpy's or Python's exceptions instead of tledge's ImageError, and a parsed JSON body (a dict) had its
keys read as file paths on the server."""
from __future__ import annotations

import io
import os
import shutil
import threading

import numpy as np
import pytest
from tiny import IMAGES, TINY, keras_label, need

from tledge.errors import ImageError


def _child_of_busy_fork(model) -> str:
    """What model.classify says in a child forked while another thread holds the model's interpreter."""
    backend = model.backend
    inside, leave = threading.Event(), threading.Event()

    def busy():  # as a thread inside invoke() holds the lock and its references to the interpreter
        with backend._lock:
            held = backend.interpreter._interpreter  # noqa: F841
            inside.set()
            leave.wait()

    t = threading.Thread(target=busy)
    t.start()
    inside.wait()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its copy of `busy` never unwinds
        try:
            said = model.classify(IMAGES[0])[0].label
        except BaseException as exc:  # noqa: BLE001
            said = f"{type(exc).__name__}: {exc}"
        os.write(w, said.encode()[:500])
        os._exit(0)
    os.close(w)
    leave.set()
    t.join()
    got = os.read(r, 600).decode()
    os.close(r)
    os.waitpid(pid, 0)
    return got


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX")
def test_a_model_busy_in_another_thread_at_fork_works_in_the_child(tmp_path):
    need("model_fp32.tflite")
    from tledge.runtime import load

    model = load(TINY / "model_fp32.tflite")
    got = _child_of_busy_fork(model)
    assert got == keras_label(IMAGES[0]), got
    assert model.classify(IMAGES[0])[0].label == got  # the parent's model as it was
    shutil.copy(TINY / "model_fp32.tflite", tmp_path / "m.tflite")
    moved = load(tmp_path / "m.tflite")
    shutil.copy(TINY / "model_int8.tflite", tmp_path / "m.tflite")  # a re-export replaced it: not run unchecked
    assert _child_of_busy_fork(moved).startswith("ModelRunError: m.tflite changed or went away since it was loaded")


def test_uploads_that_are_no_image_are_image_errors():
    Image = pytest.importorskip("PIL.Image")

    from tledge.images import as_rgb, one_image

    data = IMAGES[0].read_bytes()
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(jpeg, "JPEG")
    truncated = Image.open(io.BytesIO(jpeg.getvalue()[:len(jpeg.getvalue()) // 2]))
    closed = Image.open(io.BytesIO(data))
    closed.close()
    for bad, said in ((truncated, "truncated"), (closed, "closed"), ("upload\x00.jpg", "null byte")):
        with pytest.raises(ImageError, match=said):
            as_rgb(bad)
    with pytest.raises(ImageError, match="got dict"):
        one_image({"image": "cat.jpg"})
    step = np.frombuffer(bytes(b for pair in zip(data, data) for b in pair), np.uint8)
    assert np.array_equal(as_rgb(memoryview(step)[::2]), as_rgb(data))  # a strided view: BufferError before
