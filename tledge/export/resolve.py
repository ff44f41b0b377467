"""The contract an export takes, resolved from the loaded model, the flags and the tledge.json beside the
model (its "sidecar"): what the model itself fixes first (its input size, a baked preprocessing layer),
then explicit flags, then the sidecar, which is refused when it contradicts the model."""
from __future__ import annotations

from tledge.contract import Contract, Norm
from tledge.errors import ContractError
from tledge.export.loaded import LoadedModel


def resolve_contract(lm: LoadedModel, *, preprocess: str | None, input_size: tuple[int, int] | None,
                     labels: tuple[str, ...] = (), labels_from: str = "--labels",
                     preprocess_from: str = "--preprocess", base: Contract | None = None,
                     base_from: str | None = None,
                     geometry_flags: dict[str, str] | None = None, auto: bool = True) -> tuple[Contract, str | None]:
    """The contract the exported files take (raw pixels), and the normalisation to add (or None).

    Precedence: what the model itself fixes (its input size, a baked preprocessing layer), then explicit
    flags (--preprocess, --labels, --input-size), then `base`: by default the tledge.json beside the
    model, refused when it disagrees with the model. Where each part came from is kept in
    `lm.contract_source` for the report. `auto`: whether the command takes --preprocess auto (export; parity does
    not, and its error advised it)."""
    from tledge.backbones import preprocess_mode_for

    if base is None and lm.contract is not None:
        check_sidecar(lm)
        base, base_from = lm.contract, f"the sidecar {lm.contract_path}"
    src: dict[str, str] = {}
    hw = _size(lm, input_size, base, base_from, src)
    mode, add = _norm(lm, preprocess and preprocess_mode_for(preprocess), preprocess_from, base, base_from, src, auto)
    if labels:
        if lm.num_outputs is not None and len(labels) != lm.num_outputs:
            has = ("one output, a binary classifier's (the files give two scores: labels for p < 0.5, then p >= 0.5)"
                   if lm.binary else f"{lm.num_outputs} outputs")
            raise ContractError(f"{len(labels)} labels from {labels_from} but {lm.path.name} has {has}")
        src["labels"] = labels_from
    elif base is not None and base.labels:
        labels, src["labels"] = base.labels, str(base_from)
    fields = dict(height=hw[0], width=hw[1], channels=lm.channels, color="gray" if lm.channels == 1 else "rgb",
                  norm=Norm(mode), baked=True, input_dtype="float32")
    if base is not None:
        if (base.channels == 1) != (lm.channels == 1):  # an RGB model against a gray export: said as such
            raise ContractError(f"{base_from} is for a {base.channels}-channel input but {lm.path.name} takes "
                                f"{lm.channels} channel(s) ({'gray' if base.channels == 1 else 'colour'} against "
                                f"{'colour' if base.channels == 1 else 'gray'})")
        contract = base.replace(**{k: v for k, v in fields.items() if k not in ("color",)}, labels=labels)
        kept = [part for part in ("resize", "fit") if part not in (geometry_flags or {})] + ["colour order"]
        src[", ".join(kept[:-1]) + " and " + kept[-1] if len(kept) > 1 else kept[0]] = str(base_from)
    else:
        contract = Contract(**fields, labels=labels)
    src.update(geometry_flags or {})  # {part: the flag}, applied by the caller (export's --resize / --fit / --crop)
    lm.contract_source = "contract: " + "; ".join(f"{k} from {v}" for k, v in src.items())
    return contract, add


def _size(lm: LoadedModel, flag, base, base_from, src: dict) -> tuple[int, int]:
    if flag is not None:
        if lm.input_hw is not None and tuple(flag) != lm.input_hw:
            raise ContractError(f"--input-size {flag[0]}x{flag[1]} but {lm.path.name} has a fixed "
                                f"{lm.input_hw[0]}x{lm.input_hw[1]} input")
        src["size"] = "--input-size"
        return tuple(flag)
    if lm.input_hw is not None:
        if base is not None and base.size != lm.input_hw:
            raise ContractError(f"{base_from} says {base.height}x{base.width} input but {lm.path.name} takes "
                                f"{lm.input_hw[0]}x{lm.input_hw[1]}")
        src["size"] = "the model's input"
        return lm.input_hw
    if base is not None:
        src["size"] = str(base_from)
        return base.size
    raise ContractError("the model's input size is dynamic: pass --input-size HxW")


def _norm(lm: LoadedModel, flag: str | None, flag_from: str, base, base_from, src: dict, auto: bool = True):
    """(mode, mode to add in front of the model or None)."""
    or_auto = " or --preprocess auto with labelled --val images" if auto else ""
    if lm.integer_input and flag not in (None, "raw", lm.baked_mode):  # normalised pixels would be cast inside
        raise ContractError(f"{lm.path.name} takes {lm.integer_input} pixels: raw values 0..255, which it normalises "
                            f"itself if at all; {flag_from} `{flag}` would be cast to {lm.integer_input} inside the "
                            "file (drop it, or pass raw)")
    if lm.integer_input and lm.baked_mode is None:
        src["normalisation"] = f"the model's {lm.integer_input} input (raw pixels)"
        return "raw", None
    if lm.baked_mode is not None:
        if flag not in (None, "raw", lm.baked_mode):  # raw: "the model normalises itself", which it does
            raise ContractError(f"{lm.path.name} normalises its input itself (a baked `{lm.baked_mode}` "
                                f"preprocessing layer): {flag_from} `{flag}` would normalise twice; drop it")
        src["normalisation"] = f"the model's baked preprocessing layer ({lm.baked_mode})"
        return lm.baked_mode, None
    if flag is not None:
        src["normalisation"] = f"{flag_from} ({flag})"
        return flag, flag
    if base is not None:
        src["normalisation"] = f"{base_from} ({base.norm.value}{', inside the model' if base.baked else ''})"
        return base.norm.value, (None if base.baked else base.norm.value)
    if lm.opaque or lm.unread_preprocessing:  # "does not bake" sent a model with a Rescaling inside to
        # --preprocess tf: normalised twice
        why = lm.opaque or lm.unread_preprocessing
        raise ContractError(f"tledge cannot read {lm.path.name}'s preprocessing: {why}. Pass --preprocess raw "
                            "if the model normalises its input itself (a Rescaling or preprocess_input inside), "
                            f"else its mode (tf, caffe, torch, scale){or_auto}")
    raise ContractError(
        "this model does not bake its preprocessing and none was given. Pass --preprocess MODE "
        "(tf = x/127.5-1 for MobileNet/Inception; caffe = BGR minus ImageNet means for ResNet50/VGG; "
        "torch = x/255 then ImageNet mean/std for DenseNet; scale = x/255; raw = the model normalises "
        f"itself, e.g. EfficientNet, MobileNetV3){',' if auto else ' or'} a backbone name such as mobilenet_v2 or "
        f"resnet50{',' + or_auto if auto else ''}.")


def check_sidecar(lm: LoadedModel) -> None:
    """A tledge.json beside the model that contradicts the model is another model's: refuse it."""
    side, c = lm.contract_path, lm.contract
    if c is None:
        return
    problems = []
    if lm.num_outputs is not None and c.labels and len(c.labels) != lm.num_outputs:
        problems.append(f"it lists {len(c.labels)} labels but the model has {lm.num_outputs} outputs")
    if lm.input_hw is not None and c.size != lm.input_hw:
        problems.append(f"it says {c.height}x{c.width} input but the model takes "
                        f"{lm.input_hw[0]}x{lm.input_hw[1]}")
    if c.channels != lm.channels:
        problems.append(f"it says {c.channels} channel(s) but the model takes {lm.channels}")
    if problems:
        raise ContractError(f"{side} does not describe {lm.path.name}: {'; '.join(problems)}. It was probably "
                            "written for another model: move it away (flags such as --labels and --preprocess "
                            "do not make a contradicting tledge.json safe to use)")
