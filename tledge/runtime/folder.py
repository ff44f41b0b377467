"""An export folder -> the file in it to run: what its manifest vouches for, in the device's or the default order."""
from __future__ import annotations

from pathlib import Path

from tledge.errors import ArgumentError, ModelLoadError


def model_in_folder(folder: Path, device: str | None = None, *, providers=None,
                    delegates=None) -> tuple[Path, list[str]]:
    """The file of an export folder to run: among the files its manifest vouches for (listed, passed
    parity, sha256 unchanged), the device profile's first preference, else tledge.artifacts'
    DEFAULT_ORDER. Explicit providers ask for an ONNX file, delegates for a TFLite one (the other kind's file ran
    with the option ignored). Returns (path, notes about files left out)."""
    from tledge import artifacts
    from tledge import trust

    if providers and delegates:
        raise ArgumentError("providers are onnxruntime's and delegates TFLite's: an export folder runs one file, "
                            "pass one of them (or the file itself)")
    suffix, why = (".onnx", "--providers") if providers else (".tflite", "--delegate") if delegates else (None, "")

    _, ok, notes = trust.vouched(folder, "tledge.runtime.load")  # (tledge run's too)
    names = [e.file for e in ok]
    if names and suffix:
        names = [n for n in names if n.lower().endswith(suffix)]
        if not names:
            raise ModelLoadError(f"{folder}: {why} applies to {suffix} files, and no {suffix} file there passed "
                                 f"parity and still matches {artifacts.MANIFEST}")
    if not names:
        raise ModelLoadError(f"{folder}: no model file there passed parity and still matches "
                             f"{artifacts.MANIFEST}" + (f" ({'; '.join(notes)})" if notes else ""))
    if device:
        import importlib

        devices = importlib.import_module("tledge.devices")
        profile = devices.detect().profile if str(device).lower() == "auto" else device
        name = devices.resolve(profile, available=names).model_file
    else:
        order = [artifacts.ARTIFACTS[n].filename for n in artifacts.DEFAULT_ORDER]
        name = next((n for n in order if n in names), names[0])
    return Path(folder) / name, notes + [f"{name} chosen from {folder}: vouched for by its {artifacts.MANIFEST}"]
