"""How `tledge parity` loads each exported file (tledge.export.check): with its own contract, or, for a file made
elsewhere, with the contract `tledge run` infers, completed by --mean/--std or the reference's preprocessing, and
the reference's resize."""
from __future__ import annotations

import warnings
from pathlib import Path

from tledge.errors import ContractError, TledgeError
from tledge.runtime import load
from tledge.runtime.foreign import pixel_units

NORMALISATION = ("preprocess", "mean", "std")  # the options that say how a file made elsewhere takes pixels


def file_normalisation(preprocess: str | None, mean=None, std=None) -> dict:
    """The options that normalise a file without a contract: --mean/--std as `tledge run` takes them (--preprocess is
    then the reference's only: a reference that needs its mode and an int8 file that takes pixel - 128), else
    --preprocess, which goes to both."""
    given = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
    if given:  # values for 0..1 pixels refused before anything loads (a file that fits no normalisation is fed raw
        pixel_units(mean, std)  # pixels, and one that refused them 'could not run', exit 1)
    return given or ({"preprocess": preprocess} if preprocess else {})


def load_file(path: Path, has_contract: bool, normalisation: dict, size: tuple[int, int], threads,
              geometry: dict | None = None, raw_fed: list[Path] | None = None):
    """`path` loaded as parity runs it: with its contract, or inferred as `tledge run` does, completed by
    `normalisation` (file_normalisation) and the reference's resize (`geometry`), at the reference's `size` when its
    input is dynamic. A file made elsewhere fed raw pixels instead of `normalisation` (a uint8 input with no
    quantisation) joins `raw_fed`."""
    # a file without a contract resizes as the reference does (a TFLite file made elsewhere defaults to warp-linear
    # in tledge run, and the same graph as the ONNX file beside it failed parity, max abs 0.54)
    options = {} if has_contract else {**normalisation, **(geometry or {})}
    try:
        return _load_sized(path, has_contract, size, threads, options)
    except ContractError:
        if has_contract or not normalisation:
            raise
        model = _raw_pixels_file(path, size, threads, {k: v for k, v in options.items() if k not in NORMALISATION})
        if model is None:
            raise
    if raw_fed is not None:
        raw_fed.append(path)
    return model


def _load_sized(path: Path, has_contract: bool, size, threads, options: dict):
    try:
        return load(path, threads=threads, **options)
    except ContractError as exc:
        if has_contract or "dynamic" not in str(exc):
            raise
        return load(path, threads=threads, input_size=size, **options)


def _raw_pixels_file(path: Path, size, threads, options: dict):
    """The file loaded without --preprocess when its input is uint8 with no quantisation (raw pixels go in as they
    are), else None. Parity gave the reference's --preprocess to it, refused ("leave out --preprocess"), and without
    one the reference could not run: no way to check such a file against an unbaked reference."""
    try:
        with warnings.catch_warnings():  # (a float file's "feeding raw pixels": it is not loaded this way)
            warnings.simplefilter("ignore")
            model = _load_sized(path, False, size, threads, options)
    except ContractError:
        return None
    inp = model.backend.inp
    if inp.dtype == "uint8" and inp.quant is None:
        return model
    model.close()
    return None


def refuse_unused(files, contracts, given: dict, labels, labels_from) -> None:
    """--preprocess, --mean/--std (`given`: those given) or --labels where every exported file carries its own: used
    by nothing (`tledge run` refuses --preprocess the same way; --labels of any count passed, ignored)."""
    known = [c for c in contracts if c is not None]
    if given and files and len(known) == len(files):
        also = ", and the reference is checked with it" if "preprocess" in given else ""
        raise TledgeError(f"{' '.join(f'--{k} {v}' for k, v in given.items())}: every exported file carries its "
                          f"contract (normalisation {known[0].norm.value}){also}: drop "
                          f"{' '.join(f'--{k}' for k in given)}")
    if labels and not callable(labels) and files and all(c is not None and c.labels for c in contracts):
        raise TledgeError(f"{labels_from}: every exported file carries its labels, and each is scored by its own "
                          "(it was ignored, whatever it named): drop --labels")


def foreign_notes(files, names, contracts, unreadable, raw_fed, normalisation: dict, contract) -> list[str]:
    """What parity assumed for files made elsewhere: their input inferred, raw pixels for a uint8 input."""
    notes = []
    foreign = [n for f, c, n in zip(files, contracts, names) if c is None and f not in unreadable]
    raw = [n for f, n in zip(files, names) if f in raw_fed]
    given = " ".join(f"--{k} {v}" for k, v in normalisation.items())
    if foreign:
        notes.append(f"no tledge contract in {', '.join(foreign)}: input inferred from the file"
                     + (f" with {given}" if given and len(raw) < len(foreign) else "")
                     + f", resized as the reference ({contract.resize.value}, {contract.fit.value})")
    if raw:
        whose = f"{given} is the reference's" if "preprocess" in normalisation else f"{given} did not fit it"
        notes.append(f"{', '.join(raw)}: uint8 input with no quantisation, so raw pixels in, as tledge run "
                     f"feeds it without {' '.join(f'--{k}' for k in normalisation)} ({whose})")
    return notes
