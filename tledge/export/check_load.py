"""How `tledge parity` loads each exported file (tledge.export.check): with its own contract, or, for a file made
elsewhere, with the contract `tledge run` infers, completed by the reference's preprocessing and resize."""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

from tledge.errors import ContractError
from tledge.runtime import load
from tledge.runtime.foreign import RAW_PIXELS, RawPixelsAssumed


def load_file(path: Path, has_contract: bool, preprocess: str | None, size: tuple[int, int], threads,
              geometry: dict | None = None, raw_fed: list[Path] | None = None):
    """`path` loaded as parity runs it: with its contract, or inferred as `tledge run` does, completed by the
    reference's --preprocess and resize (`geometry`), at the reference's `size` when its input is dynamic. A file
    made elsewhere fed raw pixels instead of --preprocess (a uint8 input with no quantisation) joins `raw_fed`."""
    # a file without a contract resizes as the reference does (a TFLite file made elsewhere defaults to warp-linear
    # in tledge run, and the same graph as the ONNX file beside it failed parity, max abs 0.54)
    options = {} if has_contract else {"preprocess": preprocess, **(geometry or {})}
    try:
        with _parity_wording():
            return _load_sized(path, has_contract, size, threads, options)
    except ContractError:
        if has_contract or not preprocess:
            raise
        model = _raw_pixels_file(path, size, threads, {**options, "preprocess": None})
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


@contextlib.contextmanager
def _parity_wording():
    """The runtime's "feeding raw pixels" warning, advising what parity takes: it named --mean/--std, which parity
    has not (the reference could not take them). Other warnings are shown as they are."""
    shown = warnings.showwarning

    advice = RAW_PIXELS + " If that is wrong, pass --preprocess MODE|BACKBONE."

    def show(message, category, *rest):
        shown(RawPixelsAssumed(advice) if issubclass(category, RawPixelsAssumed) else message, category, *rest)

    warnings.showwarning = show
    try:
        yield
    except RawPixelsAssumed:  # the warning raised as an error (-W error, pytest's filters): never shown, same advice
        raise RawPixelsAssumed(advice) from None
    finally:
        warnings.showwarning = shown
