"""Builders of hostile (and of harmless) inputs for tests/test_bad_inputs.py: files that look like models to the
pre-load checks, image folders, FIFOs, and the command lines of each verb around them."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

HDF5_HEAD = b"\x89HDF\r\n\x1a\n"


def f(tmp: Path, name: str, data: bytes | str = b"x") -> str:
    p = tmp / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(p)


def d(tmp: Path, name: str) -> str:
    (tmp / name).mkdir(parents=True, exist_ok=True)
    return str(tmp / name)


def h5(tmp: Path, name: str = "m.h5") -> str:
    """Looks like an HDF5 model to the pre-load checks (they must stop before loading it)."""
    return f(tmp, name, HDF5_HEAD + bytes(64))


def keras_zip(tmp: Path, name: str = "m.keras") -> str:
    p = tmp / name
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("model.weights.h5", b"\0" * 4096)
    return str(p)


def truncated_keras(tmp: Path) -> str:
    full = Path(keras_zip(tmp, "full.keras")).read_bytes()
    os.unlink(tmp / "full.keras")
    return f(tmp, "cut.keras", full[: len(full) // 2])


def images(tmp: Path, name: str = "imgs", classes=("a", "b")) -> str:
    import cv2
    import numpy as np

    for i, c in enumerate(classes):
        (tmp / name / c).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp / name / c / "0.png"), np.full((8, 8, 3), 40 * i, np.uint8))
    return str(tmp / name)


def train_folder(tmp: Path) -> str:
    """What `tledge train --out run` leaves: model.keras, model.h5, tledge.json, labels.txt, metrics.json."""
    for name in ("model.keras", "model.h5", "tledge.json", "labels.txt", "metrics.json"):
        f(tmp, f"run/{name}", "x")
    return str(tmp / "run")


def with_split(tmp: Path, moved: bool = False) -> str:
    """A model `tledge train` left, with its split/ links to the images (to a deleted folder when `moved`)."""
    model = h5(tmp, "run/model.h5")
    data = Path(images(tmp, "photos"))
    for part in ("train", "val"):
        for c in ("a", "b"):
            (tmp / "run" / "split" / part / c).mkdir(parents=True)
            os.symlink(data / c / "0.png", tmp / "run" / "split" / part / c / "0.png")
    if moved:
        import shutil

        shutil.rmtree(data)
    return model


def fifo(tmp: Path, name: str) -> str:
    os.mkfifo(tmp / name)
    return str(tmp / name)


def fifo_at(path: Path) -> str:
    os.mkfifo(path)
    return str(path)


def tfl(tmp: Path) -> str:
    return f(tmp, "m.tflite", b"\0\0\0\0TFL3" + bytes(64))


def thresholds(tmp: Path, text: str, name: str = "t.json") -> list[str]:
    return ["export", h5(tmp), "--val", images(tmp), "--thresholds", f(tmp, name, text)]


def run(tmp: Path, *extra: str) -> list[str]:
    return ["run", tfl(tmp), "--source", d(tmp, "src"), *extra]


def export(tmp: Path, *extra: str) -> list[str]:
    return ["export", h5(tmp), "--val", images(tmp), *extra]


def parity(tmp: Path, *extra: str) -> list[str]:
    return ["parity", h5(tmp), tfl(tmp), "--images", images(tmp), *extra]


def train(tmp: Path, *extra: str) -> list[str]:
    return ["train", images(tmp), "--out", str(tmp / "run"), *extra]


def bundle(tmp: Path, *extra: str) -> list[str]:
    ex = d(tmp, "export")
    f(tmp, "export/model_int8.tflite", b"\0\0\0\0TFL3")
    return ["bundle", ex, *extra]




def export_dir(tmp: Path) -> str:
    """An export folder as `tledge export` leaves it, in miniature: a model file its manifest lists and vouches for,
    and a tledge.json that says `tledge train` (an export of a trained model copies that)."""
    import hashlib
    import json

    model = Path(f(tmp, "exp/model_int8.tflite", b"\0\0\0\0TFL3" + bytes(64)))
    f(tmp, "exp/tledge.json", json.dumps({"extra": {"trained_by": "tledge train"}}))
    entry = {"file": model.name, "role": "model", "bytes": model.stat().st_size, "kind": "tflite",
             "sha256": hashlib.sha256(model.read_bytes()).hexdigest(), "precision": "int8", "verdict": "pass"}
    f(tmp, "exp/manifest.json", json.dumps({"format": "tledge.export", "schema": 1, "source": {}, "files": [entry]}))
    return str(tmp / "exp")


def dangling_class(tmp: Path) -> str:
    """Class folders a/ (images) and b/ (links to a disk that is not mounted)."""
    import cv2
    import numpy as np

    (tmp / "links" / "a").mkdir(parents=True)
    (tmp / "links" / "b").mkdir()
    for i in range(2):
        cv2.imwrite(str(tmp / "links" / "a" / f"{i}.png"), np.full((8, 8, 3), 40, np.uint8))
        os.symlink(f"/mnt/not-mounted-{i}.jpg", tmp / "links" / "b" / f"{i}.jpg")
    return str(tmp / "links")
