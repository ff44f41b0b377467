"""A thin optional hook to the device profiles of `tledge.devices`.

`tledge.devices.resolve(name, backend=FORMAT)` returns the profile's options; the runtime reads
only `threads`, `providers` (onnxruntime form, in order) and `delegates` (TFLite delegate library
names), as attributes or dict keys. `auto` asks `tledge.devices.detect()`. Delegates are only used
for `*_edgetpu.tflite` files (a plain file would not run on the Edge TPU), loaded with
`tledge.devices.load_delegates` when it exists. Explicit arguments of `load` win over all of it.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path

from tledge.errors import TledgeError


@dataclass(frozen=True)
class DeviceHints:
    name: str
    threads: int | None = None
    providers: tuple | None = None
    delegates: tuple = ()
    notes: tuple = ()  # for the model's load notes (a plain file on an accelerator profile runs on the CPU)
    fallback: Path | None = None  # the plain int8 file to run instead of an Edge TPU file whose runtime is missing


def _devices():
    try:
        devices = importlib.import_module("tledge.devices")
    except ImportError:
        devices = None
    if not callable(getattr(devices, "resolve", None)):
        raise TledgeError("device profiles are not available in this tledge (tledge.devices.resolve is "
                          "missing): use --threads / --providers instead of --device")
    return devices


def device_hints(name: str, fmt: str | None = None, path: str | Path | None = None) -> DeviceHints:
    devices = _devices()
    profile = name
    if str(name).lower() == "auto" and hasattr(devices, "detect"):
        profile = devices.detect().profile
    takes_backend = "backend" in inspect.signature(devices.resolve).parameters or \
        any(p.kind is p.VAR_KEYWORD for p in inspect.signature(devices.resolve).parameters.values())
    opts = devices.resolve(profile, backend=fmt) if fmt and takes_backend else devices.resolve(profile)
    if opts is None:
        raise TledgeError(f"unknown device {name!r}: see `tledge devices`")

    def get(key):
        return opts.get(key) if isinstance(opts, dict) else getattr(opts, key, None)

    threads, providers, delegates = get("threads"), get("providers"), tuple(get("delegates") or ())
    notes = ()
    if delegates and not (path and Path(path).stem.endswith("_edgetpu")):
        delegates = ()  # a plain file: the accelerator's delegate would run none of it
        if path:
            f = Path(path)
            how = (f"on an x86-64 Linux machine `edgetpu_compiler -s -o {f.parent} {f}` makes "
                   f"{f.stem}_edgetpu{f.suffix}" if _integer_input(f) else  # (the compiler takes int8 files only)
                   "the accelerator runs int8 files only: export with --device coral-usb and compile its int8 file")
            notes = (f"{f.name} is not compiled for the {getattr(profile, 'name', profile)} accelerator: it runs on "
                     f"the host CPU ({how})",)
    fallback = None
    if delegates and callable(getattr(devices, "load_delegates", None)):
        delegates = tuple(devices.load_delegates(delegates))  # warns and skips what cannot load
        if not delegates:
            f = Path(path)
            fallback = f.with_name(f.stem[: -len("_edgetpu")] + f.suffix)
            if not fallback.is_file():
                raise TledgeError(f"{f.name} needs the Edge TPU runtime, which could not be loaded, and there is no "
                                  f"{fallback.name} beside it to run on the CPU instead")
            from tledge.devices.edgetpu import refuse_other_model

            refuse_other_model(f, fallback)
            notes = (f"{f.name} needs the Edge TPU runtime: {fallback.name}, the same model for the CPU, runs instead",)
    return DeviceHints(str(name), int(threads) if threads else None,
                       tuple(providers) if providers and fmt != "tflite" else None, delegates, notes, fallback)


def _integer_input(path: Path) -> bool:
    """Whether a TFLite file takes integer pixels (a fully quantised file, which edgetpu_compiler takes)."""
    from tledge import flatbuf

    try:
        return flatbuf.tflite_io_tensors(path.read_bytes())["inputs"][0]["type"] in ("uint8", "int8")
    except Exception:  # noqa: BLE001 - a note only: the load says what is wrong with the file
        return False


def with_device(device: str, path: Path, trust: list[str], threads, providers, delegates) -> tuple:
    """load()'s file, notes, threads, providers and delegates once the device profile has its say (explicit
    arguments win); an Edge TPU file without its runtime becomes the plain int8 file beside it."""
    from tledge.trust import check_file
    from tledge.runtime.backends import backend_for

    hints = device_hints(device, backend_for(path).name, path)
    if hints.fallback is not None:
        path, trust = hints.fallback, check_file(hints.fallback)
    return (path, trust + list(hints.notes), threads or hints.threads, providers or hints.providers,
            delegates or hints.delegates)
