"""The export's contract, resolved before anything is converted: labels (flags, the sidecar, or the class
folders when there is one per output), preprocessing, geometry (--resize/--fit/--crop), the ONNX
conventions and the resize each client family uses."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tledge.artifacts import CONTRACT_FILE, LABELS_FILE
from tledge.contract import INDEPENDENT, Contract, Output
from tledge.labels import check_names, read_labels, refuse_unicode_order
from tledge.errors import TledgeError, TledgeWarning

if TYPE_CHECKING:
    from tledge.export.config import ExportConfig


def _folder_of(model: Path) -> Path:
    return model if model.is_dir() else model.parent


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _say_duplicates(path, labels: tuple[str, ...]) -> None:
    """Two classes with one name (`ants` twice): `tledge run` names both the same. ImageNet's labels have such a
    pair (crane, the bird and the machine), so it is said, not refused."""
    import warnings

    from tledge.errors import TledgeWarning

    json_file = Path(path).suffix.lower() == ".json"  # entries 0, 1, ... (a JSON file may be one line)
    try:  # read_labels drops blank lines before the labels: count lines as the file has them
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
        first = 0 if json_file else next((k for k, ln in enumerate(lines) if ln.strip()), 0)
    except (OSError, UnicodeDecodeError):
        first = 0
    where: dict[str, list[int]] = {}
    for i, lab in enumerate(labels, 0 if json_file else first + 1):
        where.setdefault(lab, []).append(i)
    twice = [(lab, at) for lab, at in where.items() if len(at) > 1]
    if twice:
        unit = "entries" if json_file else "lines"
        shown = "; ".join(f"{lab!r} on {unit} {' and '.join(map(str, at))}" for lab, at in twice[:4]) + (
            f"; ... ({len(twice)} names)" if len(twice) > 4 else "")
        warnings.warn(f"labels file {path}: classes share a name ({shown}): their predictions carry one name; a --val "
                      "folder of such a name is mapped only by a number prefix (134_crane)", TledgeWarning,
                      stacklevel=3)


def labels_for(cfg: ExportConfig, lm) -> tuple[str, ...]:
    """--labels, else the sidecar's (checked against the model in resolve.resolve_contract), else the
    class folders of --val / --calib."""

    if cfg.labels:
        labels = _labels_file(cfg)
        _say_duplicates(cfg.labels, labels)
        if getattr(lm, "contract", None) is not None and lm.contract.labels:
            from tledge.labels import refuse_reordered

            refuse_reordered(labels, cfg.labels, lm.contract.labels, "the model's tledge.json")
        return labels
    if lm.contract is not None and lm.contract.labels:
        return lm.contract.labels
    return labels_folder(cfg, lm)[1]


def labels_folder(cfg: ExportConfig, lm) -> tuple[str | None, tuple[str, ...]]:
    """(the folder, its class names) whose class folders name the outputs: --val's, else --calib's, with one
    folder per output; (None, ()) when neither has."""
    from tledge.images import class_folders

    for folder in (cfg.val, cfg.calib):
        if folder and folder != "random" and Path(folder).is_dir():
            names = [n for n, files in class_folders(folder) if files]
            # a subset of the classes (725 folders of a 1000-class set) names nothing: no labels then
            if len(names) > 1 and lm.num_outputs in (None, len(names)):
                check_names(names, where=folder)  # as tledge train refuses them
                refuse_unicode_order(names, where=folder)
                return folder, tuple(names)
    return None, ()


def _labels_file(cfg: ExportConfig) -> tuple[str, ...]:
    """--labels: a numbered file (`0 ants`, `1 bees`: Teachable Machine's form) loses its numbers, unless the class
    folders of --val / --calib are named with them: tledge train's labels.txt of folders named `0 ants`, `1 bees`
    is the same text, and its numbers are the names."""
    from tledge.images import class_folders

    labels = read_labels(cfg.labels)
    verbatim = read_labels(cfg.labels, numbered=False)
    if verbatim == labels:
        return labels
    for folder in (cfg.val, cfg.calib):
        if folder and folder != "random" and Path(folder).is_dir():
            names = {n for n, files in class_folders(folder) if files}
            if names and names <= set(verbatim) and not names <= set(labels):
                return verbatim
    return labels


def parity_folder(cfg: ExportConfig) -> str | None:
    """The folder parity's images come from: --val, else a --calib folder (tledge.export.pipeline._val_images)."""
    return cfg.val or (cfg.calib if cfg.calib and cfg.calib != "random" else None)


def folder_truth(cfg: ExportConfig, contract: Contract, reference: np.ndarray, val_y):
    """Without labels, folder i is class i only when there is one folder per output: a subset of a
    1000-class set (725 folders) gives no accuracy rather than a wrong one."""
    from tledge.images import class_folders

    folder = parity_folder(cfg)
    if val_y is None or contract.labels or not folder or not Path(folder).is_dir():
        return val_y
    n = len(class_folders(folder))
    if n != reference.shape[1]:
        warnings.warn(f"accuracy not measured: {n} class folders in {folder} for {reference.shape[1]} outputs "
                      "and no labels to match them by name (pass --labels)", TledgeWarning, stacklevel=2)
        return None
    return val_y


def accuracy_note(cfg: ExportConfig, val_y) -> list[str]:
    """parity.md's word on an accuracy column left empty although --val has class folders (the warning said why
    on stderr only)."""
    from tledge.images import class_folders

    folder = parity_folder(cfg)
    if val_y is not None or not folder or not Path(folder).is_dir() or not class_folders(folder):
        return []
    return [f"accuracy not measured: the class folders of {folder} could not be matched to the model's outputs "
            "(no labels to match them by name: pass --labels)"]


def near_chance(cfg: ExportConfig, reference: np.ndarray, val_y, independent: bool = False) -> str | None:
    """What to say of an explicit `--preprocess MODE` whose Keras accuracy on the labelled --val images is near
    chance (auto refuses such a choice: tledge.export.autoprep); parity passes the files all the same, since they
    reproduce the model, wrong input and all. On the terminal and in parity.md (it was on the terminal only)."""
    if cfg.preprocess in (None, "auto") or val_y is None or len(val_y) < 20 or independent:  # (multi-label: its
        return None  # argmax, an always-on label, is no accuracy: "0.013, near chance" for a model right at 0.78)
    y = np.asarray(val_y)
    n_classes = max(reference.shape[1], 2)
    accuracy = float(np.mean(np.argmax(reference, 1) == y)) if reference.shape[1] > 1 else \
        float(np.mean((reference[:, 0] > 0.5) == y))
    if accuracy > 1.0 / n_classes + 0.1:
        return None
    return (f"--preprocess {cfg.preprocess}: Keras accuracy {accuracy:.3f} on {parity_folder(cfg)}, near chance for {n_classes} "
            "classes: the preprocessing is probably not the model's (`--preprocess auto` tries each), or the labels "
            "or images are wrong")


def check_given_preprocessing(cfg: ExportConfig, contract: Contract, reference: np.ndarray, val_y) -> None:
    said = near_chance(cfg, reference, val_y, contract.independent)
    if said:
        warnings.warn(said, TledgeWarning, stacklevel=2)


def export_contract(cfg: ExportConfig, lm, labels) -> tuple[Contract, str | None]:
    """Explicit flags win over a tledge.json beside the model; lm.contract_source says who gave what."""
    from tledge.export import resolve

    preprocess, preprocess_from = cfg.preprocess, "--preprocess"
    if cfg.preprocess == "auto" and lm.baked_mode is not None:
        preprocess = None  # the model normalises itself: nothing to choose
    elif cfg.preprocess == "auto":
        from tledge.export.autoprep import choose_preprocessing

        preprocess, preprocess_from = choose_preprocessing(lm, cfg, labels), "--preprocess auto"
    if cfg.labels:  # the CLI passes a labels.txt found beside the model on as --labels: not the user's flag
        beside = Path(cfg.labels).name == LABELS_FILE and _same_file(Path(cfg.labels).parent, _folder_of(lm.path))
        labels_from = f"the labels.txt beside the model ({cfg.labels})" if beside else f"--labels {cfg.labels}"
    elif lm.contract is not None and labels and labels == lm.contract.labels:
        labels, labels_from = (), ""  # the sidecar's: resolve_contract checks and names it
    else:
        labels_from = f"the class folders of {labels_folder(cfg, lm)[0]}"  # --val's, or --calib's when it has none
    geometry = {part: flag for part, flag, given in (("resize", "--resize", cfg.resize), ("fit", "--fit", cfg.fit),
                                                      ("fit", "--crop", cfg.crop is not None)) if given}
    contract, add_norm = resolve.resolve_contract(lm, preprocess=preprocess, input_size=cfg.input_size, labels=labels,
                                                 labels_from=labels_from, preprocess_from=preprocess_from,
                                                 geometry_flags=geometry)
    contract = with_export_options(contract, cfg)
    if lm.sigmoid_scores:  # known from here on: the resize choice and the golden set judge its label sets too
        contract = contract.replace(extra={**contract.extra, "scores": INDEPENDENT})
    return contract, add_norm


def with_export_options(contract: Contract, cfg: ExportConfig) -> Contract:
    """--resize / --fit / --crop (as `tledge run` takes them), the ONNX conventions and the resize of
    each client family, on the export contract: calibration and parity images are prepared with it."""
    from tledge.resize import client_resizes
    from tledge.export.onnx import Conventions

    geometry: dict = {}
    if cfg.resize:
        geometry["resize"] = cfg.resize
    if cfg.crop is not None:
        if cfg.fit not in (None, "crop"):
            raise TledgeError(f"--crop {cfg.crop:g} centre-crops: it cannot go with --fit {cfg.fit}")
        geometry.update(fit="crop", crop_fraction=float(cfg.crop))
    elif cfg.fit:
        geometry["fit"] = cfg.fit
    contract = contract.replace(**geometry)
    conv = Conventions(cfg.onnx_layout, cfg.onnx_input)
    # score_calibration: the runtime applies a TFLite Support file's own only, never one copied from a sidecar
    extra = {k: v for k, v in contract.extra.items() if k not in ("onnx", "resize_by_client", "score_calibration")}
    if conv != Conventions() and "onnx" in cfg.formats + tuple(k for k, _ in cfg.pairs):
        extra["onnx"] = conv.to_dict()
    extra["resize_by_client"] = client_resizes(contract)
    return contract.replace(extra=extra)


def final_contract(cfg: ExportConfig, contract, reference, val_y, stage: Path, sigmoid_scores: bool = False):
    """The contract with the model's output kind, written with labels.txt into `stage`; and the val truth, mapped
    to the model's labels (folder_truth). Raises TledgeError when labels and outputs disagree."""
    contract = contract.replace(output=output_kind(reference, sigmoid_scores))
    if sigmoid_scores:  # said in the contract, the ONNX description and the TFLite metadata (clients threshold each)
        contract = contract.replace(extra={**contract.extra, "scores": INDEPENDENT})
    val_y = folder_truth(cfg, contract, reference, val_y)
    check_given_preprocessing(cfg, contract, reference, val_y)
    if contract.labels and reference.shape[1] != len(contract.labels):
        raise TledgeError(f"{len(contract.labels)} labels but the model has {reference.shape[1]} outputs")
    contract.save(stage / CONTRACT_FILE)
    if contract.labels:
        from tledge.io import atomic_write_text

        atomic_write_text(stage / LABELS_FILE, "\n".join(contract.labels) + "\n")
    return contract, val_y


def output_kind(reference: np.ndarray, sigmoid_scores: bool = False) -> Output:
    """Probabilities when the outputs sum to one (softmax, tledge's binary head) or each comes from a sigmoid
    (multi-label: softmax over them would change the scores the model gives), else logits."""
    if sigmoid_scores:
        return Output.PROBABILITIES
    if reference.size and reference.min() >= -1e-6 and reference.max() <= 1 + 1e-6 and \
            np.allclose(reference.sum(axis=1), 1.0, atol=1e-3):
        return Output.PROBABILITIES
    return Output.LOGITS
