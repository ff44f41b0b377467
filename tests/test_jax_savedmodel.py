"""A JAX-backend Keras 3 `model.export()` SavedModel is one XlaCallModule op (session 37): the sigmoid of a
one-output model was not seen, so a second one was applied (every label flipped) and parity passed against the
same wrong head; its Rescaling was not seen either, and "does not bake its preprocessing" sent the user to
--preprocess tf (normalised twice). Files: tests/assets/jax (python -m tests.assets.make_jax, with jax)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from tledge.cli import main  # noqa: E402
from tledge.errors import ModelLoadError  # noqa: E402
from tledge.export import binary, loader  # noqa: E402

JAX = Path(__file__).resolve().parent / "assets" / "jax"


def test_an_opaque_sigmoid_is_never_guessed(shapes_dataset, tmp_path, capsys):
    import shutil

    val = tmp_path / "val"  # two classes for the two scores
    for c in ("circle", "hstripes"):
        shutil.copytree(shapes_dataset / "val" / c, val / c)
    with pytest.raises(ModelLoadError, match=r"one XlaCallModule op.*stayed in 0\.\.1.*--binary-output sigmoid"):
        loader.load_model(JAX / "sigmoid_sm")
    lm = loader.load_model(JAX / "sigmoid_sm", binary_output="sigmoid")
    assert lm.binary == binary.SIGMOID and lm.opaque
    args = ["export", str(JAX / "sigmoid_sm"), "--formats", "tflite", "--val", str(val),
            "--binary-output", "sigmoid"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 2  # the preprocessing cannot be read either
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: tledge cannot read sigmoid_sm's preprocessing" in err and "--preprocess raw" in err
    assert main(args + ["--out", str(tmp_path / "e"), "--preprocess", "raw"]) == 0
    assert json.loads((tmp_path / "e" / "manifest.json").read_text())["source"]["binary_output"] == "sigmoid"
    from tledge.images import iter_image_files
    from tledge.runtime import load

    files = sorted(iter_image_files(val))
    rt = load(tmp_path / "e" / "model_fp32.tflite")
    x = np.stack([rt.prepare(f) for f in files]).astype(np.float32)
    p = np.concatenate([np.asarray(lm.model(x[i:i + 1]), np.float32).reshape(-1) for i in range(len(x))])
    got = np.array([[s.score for s in sorted(r, key=lambda s: s.index)] for r in rt.classify(files, top_k=2)])
    assert np.abs(got[:, 1] - p).max() < 1e-5 and np.ptp(p) > 0.01  # p itself, not sigmoid(p)
    assert main(["parity", str(JAX / "sigmoid_sm"), str(tmp_path / "e" / "model_fp32.tflite"), "--images",
                 str(val)]) == 0  # the recorded --binary-output
    loose = tmp_path / "loose.tflite"  # no manifest beside it: said on the command line
    loose.write_bytes((tmp_path / "e" / "model_fp32.tflite").read_bytes())
    assert main(["parity", str(JAX / "sigmoid_sm"), str(loose), "--images", str(val)]) == 2
    assert main(["parity", str(JAX / "sigmoid_sm"), str(loose), "--images", str(val), "--binary-output",
                 "sigmoid"]) == 0


def test_an_opaque_logit_is_told_by_its_values():
    lm = loader.load_model(JAX / "logit_sm")
    assert lm.binary == binary.LOGIT and any("values outside 0..1" in n for n in lm.notes)
    with pytest.raises(ModelLoadError, match="--binary-output takes sigmoid or logit"):
        loader.load_model(JAX / "logit_sm", binary_output="x")
