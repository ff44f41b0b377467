"""A profile -> runtime options (backend, providers, delegates, threads) and export options
(which format/precision files to produce). An explicit user value always wins over the profile.

    opts = resolve("rpi4", threads=2)            # Options(backend="tflite", precision="int8", threads=2, ...)
    model = load_for_device("out/model_int8.tflite", "coral-usb")
"""
from __future__ import annotations

import numbers

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:
    from tledge.runtime.model import EdgeModel

from tledge.devices.profiles import Accel, Format, Precision, Profile, Target, get_profile
from tledge.errors import ArgumentError, TledgeError, TledgeWarning

EXPLICIT_KEYS = ("backend", "precision", "threads", "providers", "delegates", "formats", "precisions")


@dataclass(frozen=True)
class Options:
    """What a command does for one device. Runtime half: backend..model_file; export half: pairs."""

    device: str | None
    backend: str  # "tflite" | "onnx"
    precision: str
    threads: int | None
    providers: tuple = ()  # onnxruntime form: names or (name, {options})
    delegates: tuple[str, ...] = ()  # TFLite delegate libraries to load (libedgetpu.so.1)
    model_file: str = ""  # the file to look for in an export folder
    pairs: tuple[tuple[str, str], ...] = ()  # (format, precision) files export should produce
    compile_edgetpu: bool = False  # export/bundle should run edgetpu_compiler on the int8 file
    target: Target | None = field(default=None, compare=False, repr=False)

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f for f, _ in self.pairs))

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p for _, p in self.pairs))

    def load_kwargs(self) -> dict:
        """Keyword arguments for `tledge.runtime.load` (delegates: `load_for_device` loads them with a
        warning and the CPU fallback instead of failing)."""
        kw: dict[str, Any] = {"threads": self.threads}
        if self.backend == "onnx" and self.providers:
            kw["providers"] = list(self.providers)
        return kw

    def to_dict(self) -> dict:
        return {"device": self.device, "backend": self.backend, "precision": self.precision,
                "threads": self.threads, "model_file": self.model_file,
                "providers": [list(p) if isinstance(p, tuple) else p for p in self.providers],
                "delegates": list(self.delegates), "export": [list(p) for p in self.pairs],
                "compile_edgetpu": self.compile_edgetpu}


def _enum_value(enum, value, what: str) -> str:
    try:
        return enum(str(value).lower()).value
    except ValueError:
        raise TledgeError(f"unknown {what} {value!r}: choose one of {', '.join(e.value for e in enum)}") from None


def _expand_provider(p: Any):
    """Provider options with paths made absolute (onnxruntime does not expand `~`)."""
    if not isinstance(p, tuple):
        return p
    name, opts = p
    opts = {k: (os.path.expanduser(v) if isinstance(v, str) and k.endswith("_path") else v)
            for k, v in opts.items()}
    return (name, opts)


def _library_names(delegates: Sequence[str]) -> tuple[str, ...]:
    """Abstract delegate names -> the shared library to load on this OS ("edgetpu" -> libedgetpu.so.1)."""
    from tledge.devices.edgetpu import edgetpu_library

    return tuple(edgetpu_library() if d == "edgetpu" else d for d in delegates)


def _matching(targets: Iterable[Target], backend: str | None, precision: str | None) -> list[Target]:
    return [t for t in targets if (backend is None or t.format.value == backend)
            and (precision is None or t.precision.value == precision)]


def _choose_target(profile: Profile | None, backend: str | None, precision: str | None,
                   available: Sequence[str] | None) -> Target:
    targets = list(profile.targets) if profile else []
    cands = _matching(targets, backend, precision)
    if available is not None:
        cands = [t for t in cands if t.filename in set(available)]
    if cands:
        return cands[0]
    fmt = Format(backend or "tflite")
    prec = Precision(precision or ("int8" if fmt is Format.TFLITE else "fp32"))
    accel = Accel.XNNPACK if fmt is Format.TFLITE else Accel.CPU
    synth = Target(fmt, prec, accel, "chosen explicitly")
    if available is not None and synth.filename not in set(available):
        where = f" for {profile.name}" if profile else ""
        raise TledgeError(f"no usable model file{where}: looked for "
                          f"{[t.filename for t in _matching(targets, backend, precision)] or [synth.filename]}, "
                          f"found {sorted(available)}")
    return synth


def _export_pairs(profile: Profile | None, formats, precisions) -> tuple[tuple[str, str], ...]:
    targets = list(profile.targets) if profile else []
    pairs = [(t.format.value, t.precision.value) for t in targets
             if (not formats or t.format.value in formats) and (not precisions or t.precision.value in precisions)]
    if not pairs:
        fs = formats or [t.format.value for t in targets] or ["tflite"]
        ps = precisions or [t.precision.value for t in targets] or ["fp32"]
        pairs = [(f, p) for f in fs for p in ps]
    covered = {f for f, _ in pairs}  # a named format the profile has no file of was dropped without a word
    pairs += [(f, p) for f in (formats or ()) if f not in covered for p in (precisions or ["fp32"])]
    return tuple(dict.fromkeys(pairs))


def resolve(profile: "str | Profile | None", *, available: Sequence[str] | None = None,
            **explicit: Any) -> Options:
    """Options for `profile` (a name, a Profile or None), explicit values (not None) overriding it.

    explicit: backend ("tflite"/"onnx"; `format` is an alias), precision, threads, providers,
    delegates (a list, [] disables the profile's), formats, precisions (the export half).
    `available`: file names present in an export folder; the first preferred target among them wins.
    """
    if "format" in explicit:
        explicit.setdefault("backend", explicit.pop("format"))
    unknown = set(explicit) - set(EXPLICIT_KEYS)
    if unknown:
        raise TypeError(f"resolve() got unknown options {sorted(unknown)}; known: {', '.join(EXPLICIT_KEYS)}")
    prof = get_profile(profile) if profile is not None else None
    ex = {k: v for k, v in explicit.items() if v is not None}
    for key in ("providers", "delegates", "formats", "precisions"):
        if isinstance(ex.get(key), (str, bytes)):  # "edgetpu" was 7 delegates e, d, g, ...
            raise ArgumentError(f"{key} is a list of names, got one string {ex[key]!r}: {key}=[{ex[key]!r}]")
    if isinstance(available, (str, bytes)):
        raise ArgumentError(f"available is a list of file names, got one string {available!r}")
    backend = _enum_value(Format, ex["backend"], "backend") if "backend" in ex else None
    precision = _enum_value(Precision, ex["precision"], "precision") if "precision" in ex else None
    target = _choose_target(prof, backend, precision, available)
    formats = [_enum_value(Format, f, "format") for f in ex.get("formats", ())]
    precisions = [_enum_value(Precision, p, "precision") for p in ex.get("precisions", ())]
    pairs = _export_pairs(prof, formats, precisions)
    providers = ex["providers"] if "providers" in ex else [p.to_ort() for p in target.providers]
    if target.format is Format.ONNX and not providers:
        providers = ["CPUExecutionProvider"]
    threads = ex.get("threads", prof.threads if prof else None)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1):
        raise TledgeError(f"threads must be an integer >= 1, got {threads!r}")  # 2.5 was 2, True 1, "2.7" a ValueError
    return Options(
        device=prof.name if prof else None, backend=target.format.value, precision=target.precision.value,
        threads=None if threads is None else int(threads),
        providers=tuple(_expand_provider(p) for p in providers) if target.format is Format.ONNX else (),
        delegates=tuple(ex["delegates"]) if "delegates" in ex else _library_names(target.delegates),
        model_file=target.filename, pairs=pairs,
        compile_edgetpu=any(t.compiled_for == "edgetpu" for t in (prof.targets if prof else ())),
        target=target)


def pick_model(export_dir: "str | Path", profile: "str | Profile | None", **explicit: Any) -> tuple[Path, Options]:
    """The best model file in an export folder for `profile` among those its manifest.json vouches
    for (tledge.artifacts), and the options to run it with."""
    from tledge import trust

    d = Path(export_dir)
    names = [e.file for e in trust.vouched(d, "pick_model")[1]]
    opts = resolve(profile, available=names, **explicit)
    return d / opts.model_file, opts


# ---- loading ---------------------------------------------------------------------------------
def _is_edgetpu(name) -> bool:
    return isinstance(name, str) and "edgetpu" in name.lower()


def load_delegates(names: Sequence) -> list:
    """Delegate names -> loaded delegates; one that cannot be loaded is skipped with a TledgeWarning.

    The Edge TPU ("edgetpu" or its library name) goes through `load_edgetpu_delegate`, whose
    warning says how to install it. Objects (delegates already loaded) pass through.
    """
    from tledge.devices.edgetpu import load_edgetpu_delegate

    loaded = []
    for name in names:
        if not isinstance(name, str):
            d = name
        elif _is_edgetpu(name):
            d = load_edgetpu_delegate(library=None if name == "edgetpu" else name)
        else:
            d = _load_other_delegate(name)
        if d is not None:
            loaded.append(d)
    return loaded


def _load_other_delegate(name: str):
    from tledge.devices.edgetpu import delegate_loaders

    loaders = delegate_loaders()
    try:
        if not loaders:
            raise ValueError("no TFLite interpreter installed (pip install ai-edge-litert)")
        return loaders[0][1](name)
    except (ValueError, OSError, RuntimeError) as exc:
        warnings.warn(f"delegate {name} could not be loaded ({str(exc).strip()}); running without it",
                      TledgeWarning, stacklevel=3)
        return None


def load_for_device(path: "str | Path", device: "str | Profile | None" = None, **explicit: Any) -> "EdgeModel":
    """`tledge.runtime.load` with the device's threads/providers/delegates (explicit values win).

    An Edge TPU file whose delegate cannot be loaded falls back to the plain int8 file beside it
    (`model_int8_edgetpu.tflite` -> `model_int8.tflite`), with the delegate's warning; a plain file
    does not try the Edge TPU unless delegates are given explicitly.
    """
    from tledge import runtime

    p = Path(path)
    if isinstance(device, str) and device.lower() == "auto":  # as `load(device="auto")` and `--device auto`
        from tledge.devices.detect import detect

        device = detect().profile
    if p.is_dir():  # an export folder: the profile's file among those its manifest vouches for (was its .tflite)
        p, _ = pick_model(p, device, **explicit)
    elif not p.is_file():  # a compiled file not made yet blamed the plain file beside it ("not the model ...")
        from tledge.errors import ModelLoadError

        raise ModelLoadError(f"model file not found: {p}")
    backend = "onnx" if p.suffix == ".onnx" else "tflite"
    opts = resolve(device, backend=backend, **{k: v for k, v in explicit.items() if k != "backend"})
    names = opts.delegates
    if "delegates" not in explicit and not p.stem.endswith("_edgetpu"):
        names = ()  # a plain file: the profile's Edge TPU delegate would not run any of it
    if backend == "onnx" or not names:
        return runtime.load(p, **opts.load_kwargs())
    delegates = load_delegates(names)
    if not delegates and p.stem.endswith("_edgetpu"):
        cpu = p.with_name(p.stem[: -len("_edgetpu")] + p.suffix)
        if not cpu.is_file():
            raise TledgeError(f"{p.name} needs the Edge TPU runtime and there is no {cpu.name} beside it to fall back to")
        from tledge.devices.edgetpu import refuse_other_model

        refuse_other_model(p, cpu)
        return runtime.load(cpu, threads=opts.threads)
    return runtime.load(p, threads=opts.threads, delegates=delegates)


# ---- for other commands: `--device` --------------------------------------------------------------
def add_device_argument(parser, wins: str = "explicit options such as --threads") -> None:
    """Add `--device NAME` (a profile name, or `auto` to detect this machine) to an argparse parser; `wins` names the
    verb's options that override the profile."""
    from tledge.devices.profiles import profile_names

    parser.add_argument("--device", metavar="NAME", default=None,
                        help=f"device profile: {', '.join(profile_names())}, or auto (detect this machine); "
                             f"{wins} win over it")


def device_from_args(args) -> Profile | None:
    """The profile named by `args.device` (`auto` detects), or None when not given."""
    name = getattr(args, "device", None)
    if not name:
        return None
    if str(name).lower() == "auto":
        from tledge.devices.detect import detect

        return detect().profile
    return get_profile(name)
