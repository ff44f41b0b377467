"""Which function of a SavedModel tledge exports: `--signature KEY[:OUTPUT]`.

A SavedModel can hold several signatures (TF Serving exports often add one that takes encoded JPEG strings as
`serving_default` and another that takes image tensors) and a signature several outputs (Estimator-era
classifiers give `probabilities`, `classes` and `logits`). Without the option tledge takes `serving_default`,
else the only signature there is, and the only output; anything it cannot choose is refused with what there is
to choose from.
"""
from __future__ import annotations

from dataclasses import dataclass

from tledge.errors import ModelLoadError

DEFAULT_KEY = "serving_default"


@dataclass(frozen=True)
class Choice:
    key: str | None = None  # the signature key; None: serving_default, else the only one
    output: str | None = None  # the output name; None: the only one

    @classmethod
    def parse(cls, text: str | None) -> "Choice":
        """KEY, KEY:OUTPUT or :OUTPUT (serving_default's OUTPUT); ModelLoadError for anything else."""
        if text is None:
            return cls()
        key, _, output = str(text).partition(":")
        if not key.strip() and not output.strip() or ":" in output:
            raise ModelLoadError(f"--signature {text!r}: give KEY, KEY:OUTPUT or :OUTPUT (a signature key and/or "
                                 "one of its output names)")
        return cls(key.strip() or None, output.strip() or None)


@dataclass
class Chosen:
    fn: object  # the concrete function
    key: str
    input_name: str
    output_name: str
    note: str | None  # what was chosen without being asked for


def _listing(names) -> str:
    names = sorted(names)
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def choose(signatures, name: str, choice: Choice) -> Chosen:
    """The signature and output `choice` names in `signatures` (a SavedModel's), refused in one line with what
    there is when it cannot be chosen. `name`: the model's name for messages."""
    keys = list(signatures)
    note = None
    if choice.key is not None:
        if choice.key not in keys:
            raise ModelLoadError(f"SavedModel {name} has no signature {choice.key!r}; it has: "
                                 f"{_listing(keys) or 'none'}")
        key = choice.key
    elif DEFAULT_KEY in keys:
        key = DEFAULT_KEY
    elif len(keys) == 1:
        key, note = keys[0], f"signature {keys[0]!r}, the SavedModel's only one (it has no {DEFAULT_KEY})"
    else:
        raise ModelLoadError(f"SavedModel {name} has no {DEFAULT_KEY} signature" + (
            f"; choose one of {_listing(keys)} with --signature KEY" if keys else " (no signatures at all)"))
    fn = signatures[key]
    inputs = fn.structured_input_signature[1]
    specs = list(inputs.values())
    if len(specs) != 1 or specs[0].shape.rank != 4 or not (specs[0].dtype.is_floating or specs[0].dtype.is_integer):
        what = ", ".join(f"{k} {v.dtype.name}{list(v.shape) if v.shape.rank is not None else ''}"
                         for k, v in inputs.items()) or "nothing"
        others = [k for k in keys if k != key]
        raise ModelLoadError(f"SavedModel {name}'s signature {key!r} takes {what}, not one image tensor (batch, "
                             f"height, width, channels)" + (f"; its other signatures: {_listing(others)} (choose "
                                                           "with --signature KEY)" if others else ""))
    outputs = list(fn.structured_outputs)
    if choice.output is not None:
        if choice.output not in outputs:
            raise ModelLoadError(f"SavedModel {name}'s signature {key!r} has no output {choice.output!r}; it has: "
                                 f"{_listing(outputs)}")
        out = choice.output
    elif len(outputs) == 1:
        out = outputs[0]
    else:
        raise ModelLoadError(f"SavedModel {name}'s signature {key!r} has {len(outputs)} outputs "
                             f"({_listing(outputs)}): tledge exports one classifier output; choose it with "
                             f"--signature {key}:OUTPUT")
    spec = fn.structured_outputs[out]
    dtype = getattr(spec, "dtype", None)
    if dtype is None or not dtype.is_floating:  # class ids, class names: no scores to compare or rank
        floats = [k for k in outputs if getattr(getattr(fn.structured_outputs[k], "dtype", None), "is_floating",
                                                False)]
        raise ModelLoadError(f"SavedModel {name}'s output {out!r} of signature {key!r} is "
                             f"{getattr(dtype, 'name', type(spec).__name__)}, not scores" +
                             (f"; its float outputs: {_listing(floats)} (--signature {key}:OUTPUT)" if floats else ""))
    return Chosen(fn, key, list(inputs)[0], out, note)
