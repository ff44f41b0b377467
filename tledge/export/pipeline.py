"""`tledge export`: one Keras model -> TFLite / ONNX files with the contract embedded, each
parity-checked against the model on real images."""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from tledge.contract import Contract, Output, read_labels
from tledge.errors import DataError, TledgeError, TledgeWarning
from tledge.export import formats as F
from tledge.export.parity import ParityReport, ParityResult, Thresholds, check_files


@dataclass(frozen=True)
class ExportConfig:
    out: Path | None = None
    formats: tuple[str, ...] = ("tflite", "onnx")
    int8: bool = False
    fp16: bool = False
    dynamic: bool = False
    calib: str | None = None  # folder, or "random"
    val: str | None = None
    labels: str | None = None
    preprocess: str | None = None  # a mode, a backbone name, or "auto"
    input_size: tuple[int, int] | None = None
    unsafe: bool = False
    calib_limit: int = 256
    val_limit: int = 1000
    thresholds: dict[str, Thresholds] = field(default_factory=dict)
    threads: int | None = None
    fidelity: float | None = None  # int8 top-1 agreement target (default: the int8 threshold, 0.98)
    repair: bool = True  # run the int8 fidelity loop on failing int8 files (tledge.export.fidelity)
    explain: bool = False  # per-layer int8 error table in parity.md even when int8 passes
    int8_only: bool = False  # the target runs int8 only (Edge TPU): no float layers, no fallback


@dataclass
class ExportResult:
    out: Path
    contract: Contract
    files: list[Path]
    report: ParityReport
    seconds: dict[str, float]

    @property
    def passed(self) -> bool:
        return self.report.passed


def export(model_path: str | Path, cfg: ExportConfig = ExportConfig()) -> ExportResult:
    """Convert, embed the contract, write atomically, check parity. Raises TledgeError for bad input;
    parity failures are in the returned report (see `report.raise_if_failed()`)."""
    from tledge.export import loader

    chosen = F.select(cfg.formats, int8=cfg.int8, fp16=cfg.fp16, dynamic=cfg.dynamic)
    _check_calibration_source(cfg, chosen)
    thresholds = _thresholds(cfg)
    lm = loader.load_model(model_path, unsafe=cfg.unsafe)
    labels = _labels(cfg, lm)
    contract, add_norm = _contract(cfg, lm, labels)
    serve, concrete = loader.trace(lm, contract, add_norm)
    calib, val_x, val_y = _images(cfg, contract, chosen)
    reference = loader.run_reference(serve, val_x)
    contract = contract.replace(output=_output_kind(reference))
    if contract.labels and reference.shape[1] != len(contract.labels):
        raise TledgeError(f"{len(contract.labels)} labels but the model has {reference.shape[1]} outputs")
    out = Path(cfg.out) if cfg.out else Path(model_path).with_name(Path(model_path).stem + "_export")
    out.mkdir(parents=True, exist_ok=True)
    contract.save(out / "tledge.json")
    if contract.labels:
        from tledge.io import atomic_write_text

        atomic_write_text(out / "labels.txt", "\n".join(contract.labels) + "\n")
    files, failed, seconds = _convert_all(chosen, serve, concrete, contract, calib, out)
    results = check_files(reference, [(out / f.filename, f.kind, f.precision) for f in files], val_x,
                          labels=val_y, thresholds=thresholds, threads=cfg.threads)
    report = ParityReport(images=len(val_x), results=results + failed, reference=str(model_path))
    report.notes += _notes(contract, add_norm, cfg)
    start = time.perf_counter()
    if _fidelity(cfg, report, FidelityInputs(lm, contract, add_norm, calib, reference, val_x, val_y, out, thresholds)):
        seconds["int8 fidelity"] = round(time.perf_counter() - start, 2)
    report.write(out)
    written = [out / r.file for r in report.results if "/" not in r.file and (out / r.file).is_file()]
    return ExportResult(out, contract, written, report, seconds)


@dataclass
class FidelityInputs:
    lm: object
    contract: Contract
    add_norm: str | None
    calib: np.ndarray | None
    reference: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray | None
    out: Path
    thresholds: dict[str, Thresholds]


def _thresholds(cfg: ExportConfig) -> dict[str, Thresholds]:
    if cfg.fidelity is None:
        return dict(cfg.thresholds)
    from dataclasses import replace

    if not 0.0 < cfg.fidelity <= 1.0:
        raise TledgeError(f"--fidelity is a top-1 agreement between 0 and 1, got {cfg.fidelity}")
    base = cfg.thresholds.get("int8") or Thresholds.for_precision("int8")
    return {**cfg.thresholds, "int8": replace(base, min_agreement=cfg.fidelity)}


def _fidelity(cfg: ExportConfig, report: ParityReport, x: FidelityInputs) -> bool:
    """The int8 fidelity loop on failing int8 files (and the per-layer table for --explain); then the
    final int8 ONNX files on onnxruntime's other kernel paths (a note with the CPU flags)."""
    from tledge.export import fidelity
    from tledge.export import onnx as onnx_export

    failing = [r for r in report.results if r.precision in ("int8", "dynamic") and not r.passed
               and np.isfinite(r.max_abs_error)]
    ran = False
    if x.calib is None:
        if failing and cfg.repair:
            report.notes.append("the repair loop needs calibration images: pass --calib DIR")
    elif (cfg.repair and failing) or cfg.explain:
        ctx = fidelity.FidelityContext(x.lm, x.contract, x.add_norm, x.calib, x.reference, x.val_x, x.val_y,
                                       x.out, x.thresholds, int8_only=cfg.int8_only, threads=cfg.threads,
                                       explain=cfg.explain)
        outcome = fidelity.improve(failing if cfg.repair else [], ctx)
        merged, seen = [], set()
        for r in (final for row in report.results for final in outcome.results.get(row.file, [row])):
            if r.file not in seen:  # a fallback's row may already be there (fp32 ONNX, --fp16)
                merged.append(r)
                seen.add(r.file)
        report.results = merged
        report.notes += outcome.notes
        report.fidelity, report.explain = outcome.attempts, outcome.explain_md
        ran = True
    report.notes += onnx_export.kernel_notes(report.results, x.out, x.val_x, cfg.threads)
    return ran


def _check_calibration_source(cfg: ExportConfig, chosen: Sequence[F.Format]) -> None:
    if any(f.precision == "int8" for f in chosen) and not (cfg.calib or cfg.val):
        raise DataError("--int8 needs calibration images: pass --calib DIR (or --val DIR). "
                        "--calib random calibrates on noise and is only for smoke tests.")


def _labels(cfg: ExportConfig, lm) -> tuple[str, ...]:
    from tledge.images import class_folders

    if cfg.labels:
        return read_labels(cfg.labels)
    if lm.contract is not None and lm.contract.labels:
        return lm.contract.labels
    for folder in (cfg.val, cfg.calib):
        if folder and folder != "random" and Path(folder).is_dir():
            names = [n for n, files in class_folders(folder) if files]
            if len(names) > 1:
                return tuple(names)
    return ()


def _contract(cfg: ExportConfig, lm, labels) -> tuple[Contract, str | None]:
    from tledge.export import loader

    if cfg.preprocess == "auto":
        from tledge.export.autoprep import choose_preprocessing

        mode = choose_preprocessing(lm, cfg, labels)
        return loader.resolve_contract(lm, preprocess=mode, input_size=cfg.input_size, labels=labels)
    return loader.resolve_contract(lm, preprocess=cfg.preprocess, input_size=cfg.input_size, labels=labels)


def load_pixels(folder: str | Path, contract: Contract, limit: int, labels: tuple[str, ...] = ()):
    """Prepared pixels (contract.prepare) of a folder's images; unreadable files are skipped and
    counted. Returns (pixels, y or None)."""
    from tledge.images import labelled_images

    files, y, _ = labelled_images(folder, labels or None)
    if len(files) > limit:  # an even spread over classes and files
        idx = np.linspace(0, len(files) - 1, limit).round().astype(int)
        files, y = [files[i] for i in idx], (None if y is None else y[idx])
    xs, keep, bad = [], [], []
    for i, f in enumerate(files):
        try:
            xs.append(contract.prepare(f))
            keep.append(i)
        except TledgeError as exc:
            bad.append(f"{f.name}: {exc}")
    if not xs:
        raise DataError(f"no readable images in {folder} ({len(bad)} unreadable: {'; '.join(bad[:2])})")
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s) in {folder}: {'; '.join(bad[:3])}",
                      TledgeWarning, stacklevel=2)
    return np.stack(xs), (None if y is None else y[keep])


def _images(cfg: ExportConfig, contract: Contract, chosen):
    labels = contract.labels
    calib = None
    if any(f.precision == "int8" for f in chosen) or (cfg.calib and any(f.precision == "dynamic" for f in chosen)):
        if cfg.calib == "random":
            warnings.warn("calibrating int8 on random noise: the int8 files will be inaccurate on real "
                          "images. Use --calib DIR with real images.", TledgeWarning, stacklevel=3)
            rng = np.random.default_rng(0)
            calib = rng.integers(0, 256, (32,) + contract.input_shape).astype(np.float32)
        else:
            calib, _ = load_pixels(cfg.calib or cfg.val, contract, cfg.calib_limit, labels)
    if cfg.val:
        val_x, val_y = load_pixels(cfg.val, contract, cfg.val_limit, labels)
    elif calib is not None:
        val_x, val_y = calib, None
        if cfg.calib != "random":
            val_x, val_y = load_pixels(cfg.calib, contract, cfg.val_limit, labels)
    else:
        raise DataError("parity needs real images: pass --val DIR (or --calib DIR)")
    if calib is not None:
        calib = calib.astype(np.float32)
    return calib, val_x.astype(np.float32), val_y


def _output_kind(reference: np.ndarray) -> Output:
    if reference.size and reference.min() >= -1e-6 and reference.max() <= 1 + 1e-6 and \
            np.allclose(reference.sum(axis=1), 1.0, atol=1e-3):
        return Output.PROBABILITIES
    return Output.LOGITS


def _convert_all(chosen, serve, concrete, contract, calib, out: Path):
    files, failed, seconds = [], [], {}
    for fmt in chosen:
        start = time.perf_counter()
        try:
            F.write(fmt, out / fmt.filename, serve=serve, concrete=concrete, contract=contract, calib=calib,
                    folder=out)
            files.append(fmt)
        except TledgeError as exc:
            failed.append(ParityResult(fmt.filename, fmt.kind, fmt.precision, 0, float("inf"), float("inf"),
                                       float("inf"), 0.0, None, None, False, [f"conversion failed: {exc}"]))
        seconds[fmt.filename] = round(time.perf_counter() - start, 2)
    return files, failed, seconds


def _notes(contract: Contract, add_norm: str | None, cfg: ExportConfig) -> list[str]:
    notes = []
    if add_norm:
        notes.append(f"preprocessing `{add_norm}` was added in front of the model; files take raw pixels")
    if cfg.calib == "random":
        notes.append("int8 calibrated on random noise (--calib random)")
    elif cfg.int8 and not cfg.calib:
        notes.append("int8 calibrated on the --val images (no --calib): parity on the same images is optimistic")
    return notes
