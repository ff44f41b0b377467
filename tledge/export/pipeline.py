"""`tledge export`: one Keras model -> TFLite / ONNX files with the contract embedded, each
parity-checked against the model on real images."""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from tledge.artifacts import filename_of
from tledge.contract import Contract
from tledge.export.contracting import output_kind  # noqa: F401 (re-exported)
from tledge.errors import DataError, NothingConverted, TledgeError, TledgeWarning
from tledge.export import contracting, imagesets, savedmodel, unit
from tledge.export import formats as F
from tledge.export.parity import ParityReport, ParityResult, Thresholds, check_files, unconfirmed
from tledge.export.config import ExportConfig as ExportConfig, ExportResult as ExportResult  # (re-exported)


def warn_if_onednn_off(cfg: ExportConfig) -> None:
    """TF_ENABLE_ONEDNN_OPTS=0 (often set to silence TensorFlow) moves the repaired int8 weights by their last bit:
    `tledge export` drops it before TensorFlow loads; a library call can only say so."""
    if cfg.int8 and os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0":
        warnings.warn("TF_ENABLE_ONEDNN_OPTS=0: TensorFlow's oneDNN kernels are off, and the int8 repair can keep "
                      "other weights than `tledge export` keeps (unset it before TensorFlow is imported: "
                      "docs/int8-fidelity.md, Repeat exports)", TledgeWarning, stacklevel=3)


def export(model_path: str | Path, cfg: ExportConfig = ExportConfig()) -> ExportResult:
    """Convert, embed the contract, check parity, and swap the files into `cfg.out` as a unit with
    `manifest.json` written last (tledge.export.unit). Raises TledgeError for bad input (and when
    another export holds the folder); parity failures are in the returned report."""
    _check_call(model_path, cfg)
    warn_if_onednn_off(cfg)
    from tledge import log
    from tledge.export import float32, loader
    from tledge.export.unit import ExportFolder

    chosen = plan(cfg)
    _check_numbers(cfg)
    _check_calibration_source(cfg, chosen)
    thresholds = thresholds_for(cfg)
    out = Path(cfg.out) if cfg.out else Path(model_path).with_name(Path(model_path).stem + "_export")
    with ExportFolder(out) as folder, log.root_untouched(), float32.policy():  # locked first: a second export fails
        stage = folder.staging
        log.plan(3 + len(chosen) + _loop_planned(cfg, chosen))  # progress lines: load, images, each file, parity
        clock = time.perf_counter()
        with log.step(f"loading {Path(model_path).name}"):
            lm, contract, add_norm, serve, concrete = _load(model_path, cfg, chosen)
        steps, clock = {"load and trace": time.perf_counter() - clock}, time.perf_counter()
        with log.step("reading images and running the Keras model"):
            contract, val_x, val_y, val_files, reference, resize_note = _reference(cfg, contract, chosen, serve)
            calib, calib_files = _calib_images(cfg, contract, chosen)  # with the final contract: prepared once
        contract, val_y = contracting.final_contract(cfg, contract, reference, val_y, stage, lm.sigmoid_scores)
        steps["images and reference"] = time.perf_counter() - clock
        files, failed, seconds = _convert_all(chosen, serve, concrete, contract, calib, stage, cfg.int8_only)
        if not files:  # nothing to ship: the folder (an earlier export in it included) stays as it was
            why = [f"{r.file}: {r.failures[0].removeprefix('conversion failed: ')}" for r in failed]
            raise NothingConverted(f"no model file converted ({'; '.join(why[:3])}); "
                                   f"{out} is left as it was" + (f"; the model: {lm.opaque}" if lm.opaque else ""))
        clock = time.perf_counter()
        with log.step(f"parity: {len(files)} file{'s' if len(files) != 1 else ''} on {len(val_x)} images"):
            results = check_files(reference, [(stage / f.filename, f.kind, f.precision) for f in files], val_x,
                                  labels=val_y, thresholds=thresholds, threads=cfg.threads)
        steps.update({f"convert {name}": sec for name, sec in seconds.items()}, parity=time.perf_counter() - clock)
        report = ParityReport(images=len(val_x), results=results + failed, reference=str(model_path))
        report.notes += folder.notes + loader.report_notes(lm) + _notes(add_norm, cfg)
        report.notes += calibration_notes(cfg, calib, calib_files, val_files)
        report.notes += ([resize_note] if resize_note else []) + contracting.accuracy_note(cfg, val_y)
        report.notes += [n for n in (contracting.near_chance(cfg, reference, val_y, contract.independent),) if n]
        start = time.perf_counter()
        fx = FidelityInputs(lm, contract, add_norm, calib, reference, val_x, val_y, stage, thresholds,
                            (serve, concrete))
        if _fidelity(cfg, report, fx):
            seconds["int8 fidelity"] = round(time.perf_counter() - start, 2)
        steps["int8 loop and kernel paths"] = time.perf_counter() - start
        report.seconds = {k: round(v, 2) for k, v in steps.items()}
        derived = _compile_edgetpu(stage, report, out) if cfg.compile_edgetpu else {}
        _write_golden(stage, val_x, reference, val_y, val_files, cfg, thresholds, report)
        _finish_report(report, stage, cfg, val_x, reference, val_files)
        folder.commit(model_path, {r.file: (r.passed, _figures(r)) for r in report.results}, derived,
                      _inputs(stage, [r.file for r in report.results]),
                      {"signature": cfg.signature, "binary_output": cfg.binary_output})
    written = [out / r.file for r in report.results if "/" not in r.file and (out / r.file).is_file()]
    written += [out / name for name in derived if (out / name).is_file()]  # the compiled Edge TPU file
    return ExportResult(out, contract, written, report, seconds)


def _check_call(model_path, cfg) -> None:
    """A library caller's mistakes, named (not a TypeError from inside), before anything is loaded."""
    from tledge import fields
    from tledge.errors import ArgumentError

    if not isinstance(model_path, (str, os.PathLike)):
        raise ArgumentError(f"export() takes the model's path, got {type(model_path).__name__}")
    if not isinstance(cfg, ExportConfig):
        raise ArgumentError(f"export() takes an ExportConfig, got {type(cfg).__name__}")
    fields.check(cfg)
    unit.refuse_other_run(cfg.out, model_path)  # (another model's train run: its tledge.json replaced, exit 0)


def _load(model_path, cfg: ExportConfig, chosen):
    """The model loaded and traced with its export contract: (loaded, contract, add_norm, serve, concrete)."""
    from tledge.export import loader

    lm = loader.load_model(model_path, unsafe=cfg.unsafe, signature=cfg.signature, binary_output=cfg.binary_output)
    labels = contracting.labels_for(cfg, lm)
    contract, add_norm = contracting.export_contract(cfg, lm, labels)
    serve, concrete = loader.trace(lm, contract, add_norm)
    if lm.kind == "saved_model" and any(f.kind == "onnx" for f in chosen):
        savedmodel.check_any_batch(serve, contract, lm.path.name)
    return lm, contract, add_norm, serve, concrete


def _finish_report(report: ParityReport, stage: Path, cfg: ExportConfig, val_x, reference, val_files) -> None:
    """The machine, speed and client notes (MediaPipe, OpenCV... on the shipped files), then parity.md/json."""
    from tledge import clients
    from tledge.export import speed

    report.notes += [speed.machine_note(cfg.threads, loop=bool(report.fidelity))]
    report.notes += speed.slower_int8(report.results, stage, val_x, report.fidelity)
    report.notes += speed.float_ops_notes(report.results, stage)
    shipped = [r.file for r in report.results if "/" not in r.file]  # not the int8 files kept in rejected/
    report.clients = clients.measure(stage, shipped, val_x, reference, val_files, cfg.threads)
    report.notes += clients.notes(report.clients)
    report.write(stage)


def _reference(cfg: ExportConfig, contract, chosen, serve):
    """The val images and the Keras model's outputs on them, with the resize MediaPipe uses where it costs
    no accuracy (resize_choice): (contract, val_x, val_y, val_files, reference, the resize note or "")."""
    from tledge.export import loader, resize_choice

    val_x, val_y, val_files = _val_images(cfg, contract)
    reference, note = loader.run_reference(serve, val_x), ""
    val_y = contracting.folder_truth(cfg, contract, reference, val_y)  # folder i is output i only when it is
    if resize_choice.candidate(contract, cfg.resize):
        choice = resize_choice.choose(contract, val_files, val_y, reference, lambda x: loader.run_reference(serve, x))
        contract, note = choice.contract, choice.note
        if choice.pixels is not None:  # warp-linear: its val pixels and Keras outputs are made already
            val_x, reference = choice.pixels, choice.outputs
    return contract, val_x.astype(np.float32), val_y, val_files, reference, note


def plan(cfg: ExportConfig) -> list[F.Format]:
    """The files an export with `cfg` converts, from tledge.artifacts' table."""
    if cfg.pairs:
        return F.select_pairs(cfg.pairs)
    return F.select(cfg.formats, int8=cfg.int8, fp16=cfg.fp16, dynamic=cfg.dynamic)


def _inputs(stage: Path, names: Sequence[str]) -> dict[str, dict]:
    """What each written file takes, from its embedded contract: for the manifest."""
    from tledge.metadata import read_contract

    out = {}
    for name in names:
        p = stage / name
        c = read_contract(p) if p.is_file() else None
        if c is not None:  # TFLite files take batches of exactly 1; ONNX files any batch (-1)
            batch = 1 if p.suffix.lower() == ".tflite" else -1
            out[name] = {"layout": c.layout.value, "dtype": c.input_dtype, "shape": [batch, *c.input_shape]}
    return out


def _figures(r: ParityResult) -> dict:
    keys = ("images", "top1_agreement", "max_abs_error", "accuracy", "reference_accuracy", "latency_ms")
    figures = {k: getattr(r, k) for k in keys}
    figures = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in figures.items()}
    return {**figures, "failures": list(r.failures)}


def _compile_edgetpu(stage: Path, report: ParityReport, out: Path) -> dict[str, str]:
    """edgetpu_compiler on the int8 TFLite file, inside the staging folder: the compiled file is listed in the manifest
    as derived from it (no Edge TPU here to run parity on it). The notes name the export folder `out`."""
    from tledge.devices.edgetpu import edgetpu_compile

    src = stage / filename_of("tflite", "int8")
    if not src.is_file():
        return {}
    res = edgetpu_compile(src, shown_dir=out)  # (the note named the staging folder, deleted by then)
    report.notes.append("edgetpu: " + res.summary(shown=str(out / res.output.name) if res.compiled else None))
    if res.compiled and res.output is not None and res.output.parent == stage:
        return {res.output.name: src.name}
    return {}


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
    traced: tuple | None = None  # (serve, concrete) of loader.trace: the loop reuses it


def thresholds_for(cfg: ExportConfig) -> dict[str, Thresholds]:
    if cfg.fidelity is None:
        return dict(cfg.thresholds)
    from dataclasses import replace

    if not 0.0 < cfg.fidelity <= 1.0:
        raise TledgeError(f"--fidelity is an agreement between 0 and 1, got {cfg.fidelity}")
    base = cfg.thresholds.get("int8") or Thresholds.for_precision("int8")  # the gate in force: top-k from 20 classes
    given = None if base.given is None else base.given | {"min_agreement", "min_topk_agreement"}  # golden.npz keeps them
    return {**cfg.thresholds, "int8": replace(base, min_agreement=cfg.fidelity, min_topk_agreement=cfg.fidelity,
                                              given=given)}


def _loop_planned(cfg: ExportConfig, chosen) -> bool:
    """Whether the progress lines count a step for the int8 fidelity loop: it runs when parity fails an int8 or
    dynamic file, which only parity tells, so the step is counted up front and says so when nothing needed it."""
    return bool(cfg.explain or (cfg.repair and any(f.precision in ("int8", "dynamic") for f in chosen)))


def _fidelity(cfg: ExportConfig, report: ParityReport, x: FidelityInputs) -> bool:
    """The int8 fidelity loop on failing int8 files (and the per-layer table for --explain); then the
    final int8 ONNX files on onnxruntime's other kernel paths (a note with the CPU flags)."""
    from tledge.export import fidelity
    from tledge.quant import kernels

    failing = [r for r in report.results if r.precision in ("int8", "dynamic") and not r.passed
               and np.isfinite(r.max_abs_error)]
    held = unconfirmed(report.results, x.thresholds) if cfg.repair and x.calib is not None else []
    ran = False
    if x.calib is None:
        if failing and cfg.repair:
            report.notes.append("the repair loop needs calibration images: pass --calib DIR")
    elif (cfg.repair and (failing or held)) or cfg.explain:
        from tledge import log

        if not _loop_planned(cfg, plan(cfg)):
            log.add_steps(1)
        ctx = fidelity.FidelityContext(x.lm, x.contract, x.add_norm, x.calib, x.reference, x.val_x, x.val_y,
                                       x.out, x.thresholds, int8_only=cfg.int8_only, threads=cfg.threads,
                                       explain=cfg.explain, traced=x.traced, repair_time=cfg.repair_time)
        with log.step(f"int8 fidelity: {len(failing) if cfg.repair else 0} file(s) to repair"
                      + (f", {len(held)} unconfirmed pass(es) to weigh against a repair" if held else "")
                      + (f" (no new rung after {cfg.repair_time:g} s)" if cfg.repair and (failing or held)
                         and cfg.repair_time not in (None, float("inf")) else "")
                      + (", per-layer table" if cfg.explain else "")):
            outcome = fidelity.improve((failing + held) if cfg.repair else [], ctx)
        merged, seen = [], set()
        for r in (final for row in report.results for final in outcome.results.get(row.file, [row])):
            if r.file not in seen:  # a fallback's row may already be there (fp32 ONNX, --fp16)
                merged.append(r)
                seen.add(r.file)
        report.results = merged
        report.notes += outcome.notes
        report.fidelity, report.explain = outcome.attempts, outcome.explain_md
        ran = True
    if not ran and _loop_planned(cfg, plan(cfg)):
        from tledge import log

        unmade = any(r.precision == "int8" and r.images == 0 for r in report.results)  # its conversion failed
        with log.step("int8 fidelity: " + ("no int8 file to repair (its conversion failed)" if unmade else
                                           "no repair needed, every file within its budget" if not failing else
                                           "no calibration images to repair with")):
            pass
    report.notes += kernels.kernel_notes(report.results, x.out, x.val_x, cfg.threads, x.contract.independent)
    return ran


def _check_calibration_source(cfg: ExportConfig, chosen: Sequence[F.Format]) -> None:
    if any(f.precision == "int8" for f in chosen) and not (cfg.calib or cfg.val):
        raise DataError("--int8 needs calibration images: pass --calib DIR (or --val DIR). "
                        "--calib random calibrates on noise and is only for smoke tests.")
    missing = _no_parity_images(cfg, chosen)
    if missing:  # before the model loads
        raise DataError(missing)


def _check_numbers(cfg: ExportConfig) -> None:
    """threads=0 ran the whole export and failed every file in parity ("could not run"); calib_limit=-1 failed
    inside numpy after the model loaded."""
    from tledge.runtime.backends import MAX_THREADS

    if cfg.repair_time is not None and not cfg.repair_time > 0:  # NaN too
        raise TledgeError(f"--repair-time must be > 0 seconds, got {cfg.repair_time:g} (--no-repair skips the repair "
                          "loop)")
    for name, lo, hi in (("calib_limit", 1, None), ("val_limit", 1, None), ("threads", 1, MAX_THREADS)):
        v = getattr(cfg, name)
        if v is not None and (v < lo or (hi is not None and v > hi)):
            raise TledgeError(f"ExportConfig({name}={v}): must be {lo}" + (f"..{hi}" if hi else " or more"))


def _write_golden(stage: Path, val_x, reference, val_y, val_files, cfg: ExportConfig, thresholds, report) -> None:
    """golden.npz: a few parity images and their Keras outputs, for `tledge parity --golden` on a board."""
    from tledge.runtime import golden

    root = cfg.val if cfg.val else (cfg.calib if val_files is not None else None)
    passed = [stage / r.file for r in report.results if r.passed and "/" not in r.file and (stage / r.file).is_file()
              and r.file.endswith((".tflite", ".onnx")) and "_edgetpu" not in r.file]
    golden.save(golden.from_export(val_x, reference, val_y, val_files, root, thresholds, models=passed,  # multi-label:
                                   independent=any(r.agreement_of == "label sets" for r in report.results)),
                stage / golden.GOLDEN)


def _needs_calibration(cfg: ExportConfig, chosen) -> bool:
    return any(f.precision == "int8" for f in chosen) or bool(cfg.calib and any(f.precision == "dynamic" for f in chosen))


def _noise(contract: Contract) -> np.ndarray:
    """--calib random: 32 images of uniform noise (the same every time)."""
    return np.random.default_rng(0).integers(0, 256, (32,) + contract.input_shape).astype(np.float32)


def _calib_images(cfg: ExportConfig, contract: Contract, chosen) -> tuple[np.ndarray | None, list[Path] | None]:
    """(float32 calibration pixels, their files), or (None, None) when no file calibrates (files None: noise)."""
    if not _needs_calibration(cfg, chosen):
        return None, None
    if cfg.calib == "random":
        warnings.warn("calibrating int8 on random noise: the int8 files will be inaccurate on real "
                      "images. Use --calib DIR with real images.", TledgeWarning, stacklevel=3)
        return _noise(contract), None
    # no labels: calibration needs none (class folders day/, night/ were refused as matching none of the labels)
    calib, _, files = imagesets.load_images(cfg.calib or cfg.val, contract, cfg.calib_limit)
    if len(calib) < FEW_CALIBRATION_IMAGES:  # the activation ranges are those few images' ranges
        warnings.warn(f"calibrating int8 on only {len(calib)} image(s) from {cfg.calib or cfg.val}: the activation "
                      "ranges may not cover other photos; pass --calib with a few hundred images of every class",
                      TledgeWarning, stacklevel=3)
    return calib.astype(np.float32), files


def calibration_notes(cfg: ExportConfig, calib, calib_files, val_files) -> list[str]:
    """What the int8 files were calibrated on, and a warning when parity checks them on those same images: the
    repair loop fits its weights to the calibration images, so a pass there is optimistic (a repaired file at
    0.980 on the 153 images it was repaired on was 0.971 on 245 others)."""
    if calib is None or calib_files is None:
        return ["int8 calibrated on random noise (--calib random)"] if calib is not None else []
    where = cfg.calib or f"{cfg.val} (the --val images: no --calib)"
    notes = [f"int8 calibrated on {len(calib)} image(s) of {where}"]
    shared = {os.path.realpath(f) for f in calib_files} & {os.path.realpath(f) for f in val_files or ()}
    if shared:
        why = (f"{len(shared)} of the {len(val_files)} parity images are calibration images: the int8 files were "
               "calibrated (and repaired) on them, so parity on them is optimistic; pass --val DIR of other images")
        from tledge import log

        log.note(why)  # on stderr too, not only in parity.md
        notes.append(why)
    return notes


FEW_CALIBRATION_IMAGES = 10  # fewer: a warning (a walkthrough calibrated on 2 photos of one class)


def _val_images(cfg: ExportConfig, contract: Contract):
    """(pixels, labels or None, files or None) parity runs on: --val, else the --calib folder."""
    if cfg.val:
        return imagesets.load_images(cfg.val, contract, cfg.val_limit, contract.labels)
    if cfg.calib == "random":  # int8 smoke tests (_no_parity_images refused it otherwise, before loading)
        return _noise(contract), None, None
    # a --calib folder without int8 too: the message offers it (it was ignored, and the export refused)
    return imagesets.load_images(cfg.calib, contract, cfg.val_limit, contract.labels)


def _no_parity_images(cfg: ExportConfig, chosen) -> str | None:
    """Why parity has no images to run on (no --val, and no --calib folder; noise only for int8 smoke tests)."""
    if cfg.val or (cfg.calib and (cfg.calib != "random" or _needs_calibration(cfg, chosen))):
        return None
    return "parity needs real images: pass --val DIR " + ("(--calib random is noise, for int8 smoke tests)"
                                                          if cfg.calib else "(or --calib DIR)")


def _step_title(fmt: F.Format, calib) -> str:
    what = f"{fmt.precision} {'TFLite' if fmt.kind == 'tflite' else 'ONNX' if fmt.kind == 'onnx' else fmt.kind}"
    if fmt.precision == "int8" and calib is not None:
        return f"{what}: calibrating {len(calib)} images"
    return f"{what}: converting"


def _convert_all(chosen, serve, concrete, contract, calib, out: Path, int8_only: bool = False):
    from tledge import log

    files, failed, seconds = [], [], {}
    for fmt in chosen:
        start = time.perf_counter()
        try:
            with log.step(_step_title(fmt, calib)):
                F.write(fmt, out / fmt.filename, serve=serve, concrete=concrete, contract=contract, calib=calib,
                        folder=out, int8_only=int8_only)
            files.append(fmt)
        except TledgeError as exc:
            failed.append(ParityResult(fmt.filename, fmt.kind, fmt.precision, 0, float("inf"), float("inf"),
                                       float("inf"), 0.0, None, None, False, [f"conversion failed: {exc}"]))
        seconds[fmt.filename] = round(time.perf_counter() - start, 2)
    return files, failed, seconds


def _notes(add_norm: str | None, cfg: ExportConfig) -> list[str]:
    return [f"preprocessing `{add_norm}` was added in front of the model; files take raw pixels"] if add_norm else []
