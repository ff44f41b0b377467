"""What `tledge export` is asked to do (ExportConfig) and what it made (ExportResult): tledge.export.pipeline runs
it, tledge.export.contracting reads it; the CLI and library callers build it."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tledge.contract import Contract
from tledge.export.parity import ParityReport, Thresholds
from tledge.export.repair_budget import REPAIR_SECONDS


@dataclass(frozen=True)
class ExportConfig:
    out: str | Path | None = None  # (a str, a Path or ~: Path-like values are taken as the CLI gives them)
    formats: tuple[str, ...] = ("tflite", "onnx")
    int8: bool = False
    fp16: bool = False
    dynamic: bool = False
    calib: str | Path | None = None  # folder, or "random"
    val: str | Path | None = None
    labels: str | Path | None = None
    preprocess: str | None = None  # a mode, a backbone name, or "auto"
    input_size: tuple[int, int] | None = None
    unsafe: bool = False
    signature: str | None = None  # a SavedModel's KEY[:OUTPUT] (tledge.export.signature)
    binary_output: str | None = None  # a one-output model's output when its graph cannot say: sigmoid | logit
    calib_limit: int = 256
    val_limit: int = 1000
    thresholds: dict[str, Thresholds] = field(default_factory=dict)
    threads: int | None = None
    fidelity: float | None = None  # int8 agreement target: top-1 (default 0.98), top-k from 20 classes (0.99)
    repair: bool = True  # run the int8 fidelity loop on failing int8 files (tledge.export.fidelity)
    repair_time: float | None = REPAIR_SECONDS  # no new rung after this many seconds of repair (None: no limit)
    explain: bool = False  # per-layer int8 error table in parity.md even when int8 passes
    int8_only: bool = False  # the target runs int8 only (Edge TPU): no float layers, no fallback
    pairs: tuple[tuple[str, str], ...] = ()  # (kind, precision) files of a device profile: replaces the flags
    compile_edgetpu: bool = False  # run edgetpu_compiler on the int8 TFLite file (when it is installed)
    force: bool = False  # --preprocess auto: export even when the best mode scores near chance
    resize: str | None = None  # area | linear | nearest | cubic (default: the sidecar's, else area)
    fit: str | None = None  # stretch | crop | letterbox
    crop: float | None = None  # crop fraction: fit=crop, short side to size/crop, centre crop
    onnx_layout: str = "nhwc"  # the ONNX files' input layout (TFLite stays NHWC)
    onnx_input: str = "float32"  # the ONNX files' input dtype: float32, or uint8 (a Cast inside)

    def __post_init__(self) -> None:
        """Folders as the CLI gives them: a pathlib.Path for calib / val / labels was refused ("expected str"), and a
        leading `~` made a folder named `~` in the current one (the CLI expands it)."""
        from tledge.paths import expand

        for name in ("out", "calib", "val", "labels"):
            v = getattr(self, name)
            if isinstance(v, str) and not v.strip():  # "" was the current folder
                from tledge.errors import ArgumentError

                raise ArgumentError(f"ExportConfig({name}='') is empty: give a path, or leave it out")
            if name == "out" and isinstance(v, (str, os.PathLike)):
                object.__setattr__(self, name, expand(v))
            elif isinstance(v, os.PathLike):  # a folder named random stays a folder (not the noise keyword)
                object.__setattr__(self, name, os.path.join(".", os.fspath(v)) if os.fspath(v) == "random"
                                   else os.fspath(expand(v)))
            elif isinstance(v, str) and v.startswith("~"):  # strings otherwise as given: "./random" is a folder
                object.__setattr__(self, name, os.fspath(expand(v)))


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
