"""Parity of files being exported: run each through the tledge runtime on the prepared images and
compare with the reference model (`check_files`); which passes the val set can confirm (`confirmed`,
`unconfirmed`). The comparison, thresholds and report are
TensorFlow-free and live in tledge.parity (re-exported here)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from tledge.parity import (DEFAULT_THRESHOLDS as DEFAULT_THRESHOLDS, ParityReport as ParityReport,  # re-exported
                           ParityResult as ParityResult, Thresholds as Thresholds, compare as compare,
                           degenerate as degenerate, independent_scores as independent_scores,
                           load_thresholds as load_thresholds, thresholds_from_dict as thresholds_from_dict)


def check_files(reference: np.ndarray, files: Sequence[tuple[Path, str, str]], pixels: np.ndarray, *,
                labels: np.ndarray | None = None, thresholds: dict[str, Thresholds] | None = None,
                threads: int | None = None) -> list[ParityResult]:
    """Run each (path, format, precision) file through the tledge runtime on `pixels` and compare."""
    from tledge.runtime import load
    from tledge.runtime.bench import one_image_ms

    thresholds = thresholds or {}
    results = []
    for path, fmt, precision in files:
        t = Thresholds.lookup(thresholds, Path(path).name, precision)
        try:
            model = load(path, threads=threads)
            out = np.concatenate([model.predict(model.from_nhwc(pixels[i:i + 32]))  # NCHW ONNX files
                                  for i in range(0, len(pixels), 32)])
            latency = one_image_ms(model.predict, model.from_nhwc(pixels[:1]))
        except Exception as exc:  # a broken file is a parity failure, reported with the others
            results.append(ParityResult(Path(path).name, fmt, precision, len(pixels), float("inf"),
                                        float("inf"), float("inf"), 0.0, None, None, False,
                                        [f"could not run: {exc.__class__.__name__}: {exc}"]))
            continue
        r = compare(reference, out, file=Path(path).name, format=fmt, precision=precision,
                    thresholds=t, labels=labels, independent=independent_scores(model.contract))
        r.latency_ms, r.size_bytes = latency, Path(path).stat().st_size
        results.append(r)
    return results


def unconfirmed(results: Sequence[ParityResult], thresholds: dict[str, Thresholds]) -> list[ParityResult]:
    """Plain int8 files that pass but whose pass the val set cannot confirm (`confirmed`): weighed against the
    first repair rung (six plain-passing zoo files: 0.972-0.981 on 1300 other photos, repaired 0.981-0.990)."""
    return [r for r in results if r.precision == "int8" and r.passed and np.isfinite(r.max_abs_error)
            and not confirmed(r, Thresholds.lookup(thresholds, r.file, r.precision))]


def confirmed(r: ParityResult, t: Thresholds) -> bool:
    """The val set shows the pass: the lower 95 % bound of the gated agreement (top-k for many classes) is at
    or over its budget (1000 photos confirm a top-5 of 0.999; 153 photos never confirm a top-1 of 0.98)."""
    if r.topk_ci is not None:
        return r.topk_ci[0] >= t.min_topk_agreement
    return r.agreement_ci is not None and r.agreement_ci[0] >= t.min_agreement


def confirmable(r: ParityResult, t: Thresholds) -> bool:
    """Could any result on this many val images be `confirmed`: does even n/n agreement put the lower 95 % bound
    at its budget? (153 photos cannot confirm a top-1 of 0.98, 189 can; 1000 photos a top-5 of 0.99.)"""
    from tledge import stats

    budget = t.min_topk_agreement if r.topk_ci is not None else t.min_agreement
    return budget is not None and r.images >= stats.images_needed(budget)


TURN_THREADS = 1  # threads of the in-turn comparisons; see latencies_in_turns


def latencies_in_turns(files: dict[str, Path | bytes], pixels: np.ndarray, *, suffix: str,
                       threads: int = TURN_THREADS, rounds: int = 5, runs: int = 10) -> dict[str, float]:
    """Batch-1 latency (ms) of several files (paths, or bytes such as the plain int8 file a rung replaced), measured
    in turns so that load from other processes hits them alike: the best of `rounds` medians of `runs` calls.
    Rows measured one after the other during the ladder are not comparable: at load 2, an all-int8 repair of
    EfficientNetB0 measured 1.7x its plain file, which it matches in turns. On this project's 2-core VMs one
    onnxruntime file's 15-call medians vary 3.3-5.0 ms from round to round, so one round is not enough either.
    On one thread by default (TURN_THREADS): with as many threads as cores, a process busy on one core makes the
    ratio of the same two files wander (a MobileNet 0.25 stem-6 int8 TFLite file against its fp32 file on 2 threads
    of 2 cores: 0.35-1.20 over four measurements, ONNX 0.62-1.03), on one thread it holds (0.66-0.68, ONNX
    0.99-1.00; benchmarks/turn_threads.py, docs/int8-fidelity.md "Latency comparisons on one thread")."""
    import tempfile

    from tledge.runtime import load
    from tledge.runtime.bench import best_in_turns, one_image_ms

    with tempfile.TemporaryDirectory(prefix="tledge-latency-") as tmp:
        models = {}
        for name, f in files.items():
            if isinstance(f, bytes):
                path = Path(tmp) / f"{len(models)}{suffix}"
                path.write_bytes(f)
                f = path
            models[name] = load(f, threads=threads)
        return best_in_turns({name: (lambda m=m: one_image_ms(m.predict, m.from_nhwc(pixels[:1]), runs=runs, warmup=2))
                              for name, m in models.items()}, rounds)
