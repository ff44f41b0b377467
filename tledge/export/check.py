"""Parity of existing exported files against a reference Keras model (`tledge parity`)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tledge.errors import ContractError, DataError
from tledge.export.parity import ParityReport, Thresholds, check_files

_SUFFIX_KIND = {".tflite": "tflite", ".onnx": "onnx"}


def exported_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files, or every .tflite / .onnx in the given folders, in a stable order."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix in _SUFFIX_KIND)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"exported file or folder not found: {p}")
    if not out:
        raise DataError(f"no .tflite or .onnx files in {', '.join(map(str, paths))}")
    return out


def precision_of(path: Path, contract) -> str:
    """From the file name tledge writes (model_int8.tflite), else from the embedded quantisation."""
    stem = path.stem.rsplit("_", 1)[-1]
    if stem in ("fp32", "fp16", "dynamic", "int8"):
        return stem
    return "int8" if contract is not None and contract.input_quant is not None else "fp32"


def parity(reference: str | Path, exported: Sequence[str | Path], images: str | Path, *,
           thresholds: dict[str, Thresholds] | None = None, preprocess: str | None = None,
           unsafe: bool = False, limit: int = 1000) -> ParityReport:
    """Run each exported file and the reference on the same prepared images; collect every failure."""
    from tledge.export import loader
    from tledge.export.pipeline import load_pixels
    from tledge.metadata import read_contract

    files = exported_files(exported)
    contracts = [read_contract(f) for f in files]
    known = [c for c in contracts if c is not None]
    if not known and preprocess is None:
        raise ContractError("the exported files carry no tledge contract: pass --preprocess")
    lm = loader.load_model(reference, unsafe=unsafe)
    base = known[0] if known else None
    mode = preprocess or (None if lm.baked_mode else base.norm.value)
    embedded = "the exported files' embedded contract"
    contract, add = loader.resolve_contract(lm, preprocess=mode, input_size=None,
                                            labels=base.labels if base else (), labels_from=embedded,
                                            preprocess_from="--preprocess" if preprocess else embedded,
                                            base=base, base_from=embedded)
    serve, _ = loader.trace(lm, contract, add)
    x, y = load_pixels(images, contract, limit, contract.labels)
    ref = loader.run_reference(serve, x)
    rows = [(f, _SUFFIX_KIND.get(f.suffix, f.suffix), precision_of(f, c)) for f, c in zip(files, contracts)]
    results = check_files(ref, rows, x, labels=y, thresholds=thresholds)
    report = ParityReport(images=len(x), results=results, reference=str(reference))
    report.notes += loader.report_notes(lm)
    return report
