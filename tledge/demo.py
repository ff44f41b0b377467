"""`tledge demo`: the whole chain on a data set the project generates, with nothing but a clone.

generate images -> train (transfer learning) -> export --int8 (TFLite + ONNX, parity-checked)
-> run the TensorFlow-free runtime on held-out images; print every artefact and the accuracy at
each step.
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tledge.errors import TledgeError


@dataclass
class DemoResult:
    out: Path
    weights: str
    steps: list[dict] = field(default_factory=list)
    passed: bool = False


def imagenet_reachable(timeout: float = 3.0) -> bool:
    """Whether Keras could download ImageNet weights (the storage host answers), without downloading."""
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def choose_weights(weights: str | None) -> tuple[str, str]:
    if weights:
        return weights, f"weights: {weights} (given)"
    if imagenet_reachable():
        return "imagenet", "weights: imagenet (download reachable)"
    return "none", ("weights: ImageNet download not reachable from here; continuing from random "
                    "initialisation (pass --weights PATH to a local no-top .h5 to start pretrained)")


def run_demo(out: str | Path = "demo_out", *, weights: str | None = None, size: int = 64,
             epochs: int = 12, fine_tune_epochs: int = 8, say=print) -> DemoResult:
    from tledge.datasets import make_shapes
    from tledge.export.pipeline import ExportConfig, export
    from tledge.train import TrainConfig, train

    out = Path(out)
    w, why = choose_weights(weights)
    res = DemoResult(out, w)
    say(f"[1/4] data: generating a 3-class image set in {out / 'data'}")
    data = out / "data"
    for split, n, seed in (("train", 40, 1), ("val", 12, 2), ("test", 12, 3)):
        if not (data / split).is_dir():
            make_shapes(data / split, n_per_class=n, size=96, seed=seed)
    say(f"[2/4] train: mobilenet alpha 0.25 at {size} px; {why}")
    t = time.perf_counter()
    tr = train(data / "train", TrainConfig(backbone="mobilenet", alpha=0.25, weights=w, size=size, epochs=epochs,
                                           fine_tune_epochs=fine_tune_epochs, val_dir=data / "val",
                                           out=out / "train", verbose=0))
    res.steps.append({"step": "train", "val_accuracy": tr.val_accuracy, "seconds": time.perf_counter() - t,
                      "artefacts": [str(tr.model_path), str(tr.h5_path), str(tr.out / "metrics.json")]})
    say(f"      val accuracy {tr.val_accuracy:.3f} -> {tr.model_path}")
    say("[3/4] export: TFLite + ONNX, fp32 and int8, parity against the Keras model")
    t = time.perf_counter()
    ex = export(tr.model_path, ExportConfig(out=out / "export", int8=True, calib=str(data / "train"),
                                            val=str(data / "val")))
    res.steps.append({"step": "export", "passed": ex.passed, "seconds": time.perf_counter() - t,
                      "artefacts": [str(f) for f in ex.files] + [str(ex.out / "parity.md")],
                      "parity": [{"file": r.file, "agreement": r.top1_agreement, "accuracy": r.accuracy,
                                  "passed": r.passed} for r in ex.report.results]})
    say(ex.report.table())
    say("[4/4] runtime (no TensorFlow): held-out test images through each exported file")
    res.steps.append(_runtime_step(ex.files, data / "test", say))
    res.passed = ex.passed and all(s["accuracy"] >= tr.val_accuracy - 0.1 for s in res.steps[-1]["files"])
    say(f"\ndemo {'OK' if res.passed else 'FINISHED WITH FAILURES'}: artefacts in {out}/ "
        f"(train/, export/ with parity.md)")
    return res


def _runtime_step(files, test_dir: Path, say) -> dict:
    from tledge.images import labelled_images
    from tledge.runtime import load

    rows = []
    for f in files:
        model = load(f)
        paths, y, names = labelled_images(test_dir, model.contract.labels)
        t = time.perf_counter()
        preds = [p[0].index for p in model.classify(paths, top_k=1)]
        ms = 1000 * (time.perf_counter() - t) / len(paths)
        acc = float(np.mean(np.asarray(preds) == y))
        rows.append({"file": f.name, "accuracy": acc, "ms_per_image": ms})
        say(f"      {f.name:22} test accuracy {acc:.3f}  ({ms:.1f} ms/image incl. decode)")
    if not rows:
        raise TledgeError("no exported files to run")
    return {"step": "runtime", "files": rows}
