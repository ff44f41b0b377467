"""Golden outputs: a few parity images and the Keras model's outputs for them, stored with every export
(`golden.npz`, a side file of the manifest) so a board can re-run parity without TensorFlow.

    golden.npz
      pixels     uint8 N x H x W x C: the contract's prepared input (raw pixels: export files bake the
                 normalisation), exactly what export's parity fed every file
      reference  float32 N x K: the Keras outputs on those pixels, computed at export
      labels     int64 N (-1 when the images had no class folders)
      names      the source images (relative to the parity folder), sha256: their bytes' sha256
      meta       JSON: schema, how many parity images there were, which were kept, the thresholds
                 the export checked its files with

`check(folder)` runs every file the folder's manifest vouches for on the stored pixels through the
tledge runtime and compares its outputs with the stored reference, with the export's thresholds and
tledge.parity's comparison (the one `tledge export` uses): same pixels, same reference, same files ->
the same figures as parity.json. Numpy and the runtime only: no TensorFlow, no tledge.export.
"""
from __future__ import annotations

import io
import os
import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from tledge import artifacts
from tledge import trust
from tledge.runtime.bench import one_image_ms
from tledge.safejson import finite, loads_json
from tledge.errors import MissingDependency, TledgeError
from tledge.contract import DECISION
from tledge.parity import ParityReport, ParityResult, Thresholds, compare, independent_scores, thresholds_from_dict

GOLDEN = "golden.npz"
SCHEMA = 1
N_GOLDEN = 32
_KEYS = ("pixels", "reference", "labels", "names", "sha256", "meta")


@dataclass(frozen=True)
class Golden:
    pixels: np.ndarray  # N x input shape, uint8 (or float32 when the pixels are not whole numbers)
    reference: np.ndarray  # N x K float32
    labels: np.ndarray | None  # N ints, or None
    names: tuple[str, ...]
    sha256: tuple[str, ...]
    meta: dict

    @property
    def thresholds(self) -> dict[str, Thresholds]:
        return thresholds_from_dict(self.meta.get("thresholds") or {})

    @property
    def all_parity_images(self) -> bool:
        return int(self.meta.get("parity_images", -1)) == len(self.pixels)


# ---- choosing and writing (at export) -----------------------------------------------------------------
def select(reference: np.ndarray, labels: np.ndarray | None, n: int = N_GOLDEN, *,
           confident: bool = True, independent: bool = False) -> np.ndarray:
    """Indices of at most `n` images, deterministic: all when there are no more than `n`; otherwise
    (`confident`) the least confident quarter of the Keras outputs (smallest top-1 margin, where a
    kernel's rounding on another machine could flip the top-1; `independent` multi-label scores: the score nearest
    DECISION) is left out, and the rest is spread evenly over classes (labels, else the Keras top-1) and over files
    within each class."""
    ref = np.asarray(reference, np.float32).reshape(len(reference), -1)
    total = len(ref)
    if total <= n:
        return np.arange(total)
    srt = np.sort(ref, axis=1)
    margin = srt[:, -1] - srt[:, -2] if ref.shape[1] > 1 else np.abs(ref[:, 0])
    if independent:  # an always-on label made every margin the distance to it: the clear images were left out
        margin = np.abs(ref - DECISION).min(axis=1)
    floor = np.sort(margin)[min(total - n, total // 4)] if confident else -np.inf
    cand = np.flatnonzero(margin >= floor)  # at least n of them
    group = np.asarray(labels) if labels is not None else ref.argmax(1)
    members = {int(c): cand[group[cand] == c] for c in np.unique(group[cand])}
    quota, left = dict.fromkeys(members, 0), n
    while left:
        for c in sorted(members):
            if left and quota[c] < len(members[c]):
                quota[c] += 1
                left -= 1
    picked = [members[c][np.linspace(0, len(members[c]) - 1, q).round().astype(int)]
              for c, q in quota.items() if q]
    return np.sort(np.concatenate(picked))


def agreeing(pixels: np.ndarray, reference: np.ndarray, models: Sequence[Path]) -> np.ndarray:
    """Mask of the images on which every model file (run by the tledge runtime) decides as Keras: the same top-1, or
    for independent scores the same labels over DECISION (parity's label sets)."""
    from tledge.runtime import load

    x = np.asarray(pixels, np.float32)
    ref = np.asarray(reference).reshape(len(x), -1)
    ok = np.ones(len(x), bool)
    for path in models:
        m = load(path)
        out = np.concatenate([m.predict(m.from_nhwc(x[i:i + 32])) for i in range(0, len(x), 32)]).reshape(len(x), -1)
        ok &= np.all((out > DECISION) == (ref > DECISION), axis=1) if m.contract.independent else \
            out.argmax(1) == ref.argmax(1)
    return ok


def choose(pixels: np.ndarray, reference: np.ndarray, labels: np.ndarray | None, models: Sequence[Path] = (),
           n: int = N_GOLDEN, independent: bool = False) -> tuple[np.ndarray, int]:
    """(indices, images left out because a file disagreed). Up to `n` parity images: all of them when
    there are no more than `n`; else a pool of 4n (`select`), minus the images on which a file that
    passed parity disagreed with Keras at export (the check on a board must flag the board, not the
    export's known flips), spread again over classes."""
    if len(reference) <= n:
        return np.arange(len(reference)), 0
    pool = select(reference, labels, 4 * n, independent=independent)
    if models:
        ok = agreeing(np.asarray(pixels)[pool], np.asarray(reference)[pool], models)
        dropped, pool = int((~ok).sum()), (pool[ok] if ok.any() else pool)
    else:
        dropped = 0
    sub = select(np.asarray(reference)[pool], None if labels is None else np.asarray(labels)[pool], n,
                 confident=False)
    return pool[sub], dropped


def from_export(pixels: np.ndarray, reference: np.ndarray, labels: np.ndarray | None,
                files: Sequence[Path] | None, root: str | Path | None,
                thresholds: dict[str, Thresholds] | None = None, n: int = N_GOLDEN,
                models: Sequence[Path] = (), independent: bool = False) -> Golden:
    """The golden set of an export's parity images (`files`: their source files, None for noise;
    `models`: the files that passed parity, see `choose`; `independent`: multi-label scores)."""
    idx, dropped = choose(pixels, reference, labels, models, n, independent)
    x = np.asarray(pixels)[idx]
    if np.array_equal(x, np.clip(np.round(x), 0, 255)):
        x = x.astype(np.uint8)  # raw pixels: lossless as uint8
    else:
        x = x.astype(np.float32)
    names, hashes = [], []
    for i in idx:
        if files is None:
            names.append(f"(generated input {int(i)})")
            hashes.append("")
            continue
        f = Path(files[i])
        try:
            names.append(f.relative_to(root).as_posix() if root else f.name)
        except ValueError:
            names.append(f.name)
        hashes.append(artifacts.sha256_of(f))
    meta = {"format": "tledge.golden", "schema": SCHEMA, "images": int(len(idx)), "parity_images": int(len(pixels)),
            "indices": [int(i) for i in idx], "source": str(root) if root else None, "left_out_disagreeing": dropped,
            "thresholds": {k: t.overrides() for k, t in (thresholds or {}).items()}}
    y = None if labels is None else np.asarray(labels, np.int64)[idx]
    return Golden(x, np.asarray(reference, np.float32)[idx], y, tuple(names), tuple(hashes), meta)


def save(golden: Golden, path: str | Path) -> Path:
    from tledge.io import atomic_write_bytes

    buf = io.BytesIO()
    labels = golden.labels if golden.labels is not None else np.full(len(golden.pixels), -1, np.int64)
    np.savez_compressed(buf, pixels=golden.pixels, reference=golden.reference.astype(np.float32),
                        labels=labels.astype(np.int64), names=np.array(golden.names, dtype=str),
                        sha256=np.array(golden.sha256, dtype=str), meta=np.array(json.dumps(finite(golden.meta), allow_nan=False)))
    return atomic_write_bytes(Path(path), buf.getvalue())


MAX_MEMBER = 512 << 20  # bytes of one array: a golden file holds a few dozen images


def _check_size(zf: zipfile.ZipFile, name: str) -> None:
    """ValueError when an array's header declares more bytes than its member holds, or than MAX_MEMBER: numpy
    allocated what the header said first (a shape of 10**15: a MemoryError traceback, exit 1)."""
    info = zf.getinfo(name)
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)  # (numpy 1.24+ caps the header at 10000 bytes itself)
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if need > min(info.file_size, MAX_MEMBER):
        raise ValueError(f"{name} declares {need} bytes, holds {info.file_size}")


def read(path: str | Path) -> Golden:
    """A golden file, or TledgeError naming it (never unpickles anything)."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in _KEYS if k not in z.files]
            if missing:
                raise ValueError(f"no {', '.join(missing)}")
            for k in _KEYS:
                _check_size(z.zip, k + ".npy")
            arrays = {k: z[k] for k in _KEYS}
        meta = loads_json(str(arrays["meta"]))  # (a ValueError names JSON nested too deeply)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, MemoryError, EOFError, NotImplementedError,
            RuntimeError, zlib.error) as exc:  # (a damaged deflate stream, an unknown method, an encrypted flag: exit 1
        # with a traceback, which CI read as "the board disagrees")
        raise TledgeError(f"{p} is not a readable tledge golden file ({exc}): run tledge export again") from None
    schema = meta.get("schema", 0) if isinstance(meta, dict) else None
    if not isinstance(schema, int) or isinstance(schema, bool) or meta.get("format") != "tledge.golden" \
            or schema > SCHEMA:
        raise TledgeError(f"{p}: not a tledge golden file this tledge reads (schema {SCHEMA})")
    x, ref, y = arrays["pixels"], arrays["reference"], arrays["labels"]
    n = len(x)
    if x.dtype not in (np.uint8, np.float32) or ref.dtype != np.float32 or ref.ndim != 2 or len(ref) != n \
            or len(y) != n or len(arrays["names"]) != n or n == 0:
        raise TledgeError(f"{p}: inconsistent golden arrays (pixels {x.shape} {x.dtype}, reference {ref.shape} "
                          f"{ref.dtype}, labels {y.shape}): run tledge export again")
    labels = None if np.all(y < 0) else y
    return Golden(x, ref, labels, tuple(map(str, arrays["names"])), tuple(map(str, arrays["sha256"])), meta)


# ---- checking (on the board) --------------------------------------------------------------------------
def model_folder(path: str | Path) -> Path:
    """The folder holding manifest.json: an export folder, a bundle's model/ or the bundle itself."""
    p = Path(path)
    if p.is_dir() and not (p / artifacts.MANIFEST).is_file() and (p / "model" / artifacts.MANIFEST).is_file():
        return p / "model"
    return p


def check(path: str | Path, *, thresholds: dict[str, Thresholds] | None = None, device: str | None = None,
          threads: int | None = None) -> ParityReport:
    """Every model file the manifest vouches for, on the stored pixels, against the stored Keras outputs.
    TledgeError (exit 2) when the folder or its golden file cannot be trusted (changed since export).

    An export replacing the folder meanwhile (its manifest goes first and comes back last) mixed the two exports'
    files against one golden file, a false FAIL: a check during which the manifest changed is run again."""
    d = model_folder(path)
    for _ in range(3):
        before = _stamp(d)
        try:
            report = _check_once(d, thresholds, device, threads)
        except TledgeError:
            if _stamp(d) != before:
                continue
            raise
        if _stamp(d) == before:
            return report
    raise TledgeError(f"{d} kept changing while it was checked (an export replacing it?): check it again when that "
                      "is done")


def _stamp(d: Path) -> tuple | None:
    try:
        st = os.stat(d / artifacts.MANIFEST)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _check_once(d: Path, thresholds, device, threads) -> ParityReport:
    entry = trust.require(d, "tledge parity --golden").entry(GOLDEN)
    if entry is None:
        raise TledgeError(f"{d}: no {GOLDEN} in {artifacts.MANIFEST} (exported by a tledge without golden "
                          f"outputs): run tledge export again to check this folder without TensorFlow")
    problem = (trust.problems(d, [entry]) or [""])[0]
    if problem.endswith("missing"):
        raise TledgeError(f"{d / GOLDEN}: missing, but listed in {artifacts.MANIFEST}: copy the whole export "
                          "folder (or bundle)")
    if problem:
        raise TledgeError(f"{d / GOLDEN}: {problem.split(': ', 1)[1]}: the stored Keras outputs are not the "
                          "export's, so nothing can be compared; export (and bundle) again")
    m, ok, notes = trust.vouched(d, "tledge parity --golden")  # any other changed file is refused here
    gone = [e.file for e in m.vouched() if not (d / e.file).is_file()]
    if gone and (d.parent / "bundle.json").is_file():  # a bundle's manifest lists what it ships: damage, not choice
        raise TledgeError(f"the bundle {d.parent} is missing {', '.join(gone)} (listed in model/{artifacts.MANIFEST}): "
                          "copy the whole bundle again")
    g = read(d / GOLDEN)
    used = g.thresholds if thresholds is None else thresholds  # a thresholds file replaces the export's
    x = g.pixels.astype(np.float32)
    results, missing, skipped = [], [], []
    for e in ok:
        if e.derived_from and not device:
            skipped.append({"file": e.file, "reason": "compiled for an accelerator (pass --device NAME on the board)"})
            continue
        try:
            results.append(check_file(d / e.file, e, g, x, used, device=device, threads=threads))
        except MissingDependency as exc:  # a board with one runtime checks the files it can run
            missing.append(str(exc))
            skipped.append({"file": e.file, "reason": str(exc)})
    notes += [f"{s['file']}: not checked: {s['reason']}" for s in skipped]
    if missing and not results:  # the runtime is not installed (exit 2), not "the board disagrees" (exit 1)
        raise MissingDependency(f"{missing[0]}; nothing was compared")
    _refuse_bundle_model_unchecked(d, skipped)
    models = [e for e in m.files if e.role in ("model", "rejected")]
    if not results and models and not any(e.vouched for e in models):  # (not "copy the folder again")
        raise TledgeError(f"{d}: no file of this export passed parity at export ({', '.join(e.file for e in models)}): "
                          "there is nothing to check on a board; see parity.md, then export again")
    if not results:  # an empty table is no comparison: the folder (or bundle) is not what was exported
        raise TledgeError(f"{d}: no model file to check ({'; '.join(notes) or 'none vouched for'}): copy the whole "
                          "export folder (or bundle) again")
    src = m.source.get("path") or "the Keras model"
    report = ParityReport(images=len(x), results=results, reference=f"{GOLDEN}: outputs of {src} stored at export")
    report.notes += notes + _notes(g, m, results)
    report.skipped = skipped  # in the JUnit XML as skipped test cases: a board without onnxruntime is not all green
    return report


def check_file(path: Path, entry: artifacts.Entry, g: Golden, x: np.ndarray, thresholds: dict[str, Thresholds],
               *, device: str | None = None, threads: int | None = None) -> ParityResult:
    from tledge.runtime import load

    kind, precision = entry.kind or path.suffix.lstrip("."), entry.precision or "int8"
    try:
        model = load(path, threads=threads, device=device)
    except MissingDependency as exc:  # not a disagreement: check() says which files could not be checked
        raise MissingDependency(f"{path.name}: {str(exc).rstrip('.')}") from None
    except Exception as exc:  # a file the board cannot run is a parity failure, reported with the others
        return _not_run(path, kind, precision, len(x), exc)
    if model.path.name != path.name:  # an Edge TPU file whose runtime is missing: the CPU file would be checked
        raise TledgeError(f"{path.name} needs the Edge TPU runtime, which is not installed on this machine (see the "
                          "warning above): install it and check again; nothing was compared")
    try:
        c, xm = model.contract, model.from_nhwc(x)  # golden pixels are NHWC, the export's reference layout
        if not c.baked or tuple(c.input_shape) != tuple(xm.shape[1:]):
            raise TledgeError(f"its contract takes {'normalised ' if not c.baked else ''}input {c.input_shape}, "
                              f"the golden pixels are raw {tuple(x.shape[1:])}")
        out = np.concatenate([model.predict(xm[i:i + 32]) for i in range(0, len(xm), 32)])
        latency = one_image_ms(model.predict, xm)
    except Exception as exc:  # noqa: BLE001
        return _not_run(path, kind, precision, len(x), exc)
    t = Thresholds.lookup(thresholds, path.name, precision)
    r = compare(g.reference, out, file=path.name, format=kind, precision=precision, thresholds=t, labels=g.labels,
                independent=independent_scores(model.contract))
    r.latency_ms, r.size_bytes = latency, path.stat().st_size
    return r


def _not_run(path: Path, kind: str, precision: str, n: int, exc: Exception) -> ParityResult:
    return ParityResult(path.name, kind, precision, n, float("inf"), float("inf"), float("inf"), 0.0, None, None,
                        False, [f"could not run: {exc.__class__.__name__}: {exc}"])


def _refuse_bundle_model_unchecked(d: Path, skipped: list[dict]) -> None:
    """MissingDependency (exit 2) when `d` is a bundle's model folder and the model its run.sh runs (bundle.json's
    "model") was skipped for a runtime this board lacks: a Jetson bundle without onnxruntime said "parity: PASSED",
    exit 0, on its LiteRT fallback alone, and `./run.sh` then failed (outside audit of 2026-12-08)."""
    bundle = d.parent / "bundle.json"
    if not skipped or not bundle.is_file():
        return
    try:
        model = loads_json(bundle.read_bytes()).get("model")
    except (OSError, ValueError, AttributeError):  # (a changed bundle.json: --check refuses it elsewhere)
        return
    name = Path(model).name if isinstance(model, str) else None
    why = next((s["reason"] for s in skipped if s["file"] == name and "compiled for" not in s["reason"]), None)
    if why:
        raise MissingDependency(f"{name}, the model ./run.sh runs, cannot run here ({why}): install what it needs "
                                "(see README.md), then ./run.sh --check again")


def _notes(g: Golden, m: artifacts.Manifest, results: list[ParityResult]) -> list[str]:
    if not g.all_parity_images:
        return [f"{len(g.pixels)} golden images of the export's {g.meta.get('parity_images')} parity images "
                "(spread over classes; the least confident quarter and images a file got wrong at export left "
                "out): figures differ from parity.json"]
    notes = [f"the golden images are all {len(g.pixels)} parity images of the export: figures should equal "
             "parity.json's"]
    for r in results:
        f = (m.entry(r.file).figures if m.entry(r.file) else {}) or {}
        was = f.get("max_abs_error")
        if isinstance(was, (int, float)) and np.isfinite(r.max_abs_error):
            notes.append(f"{r.file}: max abs error {r.max_abs_error:.3g} (export: {was:.3g}), {r.agreement_of} "
                         f"agreement {r.top1_agreement:.3f} (export: {f.get('top1_agreement', float('nan')):.3f})")
    return notes
