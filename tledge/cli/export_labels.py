"""Which labels `tledge export` gives a model: --labels, else the model's own (its tledge.json or a labels.txt beside
it), checked against the class folders of --val / --calib. Raises TledgeError (exit code 2) with one line."""
from __future__ import annotations

from pathlib import Path

from tledge.artifacts import CONTRACT_FILE, LABELS_FILE
from tledge.errors import TledgeError


def own_labels(model: Path) -> tuple[tuple[str, ...], str]:
    """The labels a model brings: its tledge.json, else a labels.txt beside it."""
    from tledge.contract import Contract
    from tledge.labels import read_labels

    folder = model if model.is_dir() else model.parent
    text = read_labels(folder / LABELS_FILE) if (folder / LABELS_FILE).is_file() else ()
    if (folder / CONTRACT_FILE).is_file():
        labels = Contract.load(folder / CONTRACT_FILE).labels
        if labels and text and tuple(text) != tuple(labels) and \
                read_labels(folder / LABELS_FILE, numbered=False) != tuple(labels):  # an edited one was ignored
            i = next((i for i, (a, b) in enumerate(zip(text, labels)) if a != b), None)
            what = f"line {i + 1}: {text[i]!r} against {labels[i]!r}" if i is not None else \
                f"{len(text)} names against {len(labels)}"
            raise TledgeError(f"{folder / LABELS_FILE} and the {CONTRACT_FILE} beside it name other labels ({what}): "
                              "pass --labels FILE to say which, or make them agree")
        if labels:
            return labels, str(folder / CONTRACT_FILE)
    if text:
        return text, str(folder / LABELS_FILE)
    return (), ""


def given_or_own_labels(model, labels: str | None) -> tuple[tuple[str, ...], str]:
    """(labels, where from): the --labels file (refused when it names the model's own labels in another order), else
    the model's own (own_labels); ((), "") when neither."""
    if not labels:
        return own_labels(Path(str(model)))
    from tledge.labels import read_labels, refuse_reordered

    own, where = read_labels(labels), f"--labels {labels}"
    try:
        model_own, model_where = own_labels(Path(str(model)))
    except TledgeError:  # its labels.txt and tledge.json disagree: --labels is how the user says which
        model_own = ()
    if model_own:
        refuse_reordered(own, labels, model_own, model_where)
    return own, where


def _matches_verbatim(names, labels) -> bool:
    """Whether class folders `0 ants`, `1 bees` are the lines of a numbered labels file, numbers and all."""
    from tledge.errors import DataError
    from tledge.labels import match_labels, read_labels

    try:
        match_labels(list(names), read_labels(labels, numbered=False), where="")
    except DataError:
        return False
    return True


def export_labels(model, labels: str | None, folders: dict[str, str | None], note) -> str | None:
    """The labels file `tledge export` should use. --labels wins; else the model's own labels.txt.
    Class-folder names that contradict the model's own labels are refused; a model with no labels of
    its own gets the folder names, and `note` says so."""
    from tledge.errors import DataError
    from tledge.images import class_folders
    from tledge.labels import match_labels

    own, where = given_or_own_labels(model, labels)  # checked against the folders now, not after minutes of loading
    for flag, folder in folders.items():
        if not folder or folder == "random" or not Path(folder).is_dir():
            continue
        if own and flag != "--val" and folders.get("--val"):  # calibration needs no labels: --val's are checked
            break
        names = tuple(n for n, files in class_folders(folder) if files)
        if len(names) < 2:
            continue
        try:  # matched as parity and accuracy match them: case, spaces, underscores and Unicode form aside
            if own and not (labels and _matches_verbatim(names, labels)):
                match_labels(list(names), own, where=f"{flag} {folder}")
        except DataError as exc:
            raise TledgeError(f"{exc} (in {where}): " + ("make the file name every class folder" if labels else
                              "pass --labels FILE to say what the outputs mean, or rename the folders")) from None
        if not own:  # the names become labels only with one folder per output (checked then: export.contracting)
            from tledge.labels import refuse_unicode_order
            from tledge.text import printable

            try:
                refuse_unicode_order(names, where=f"{flag} {folder}")
            except DataError as exc:
                raise TledgeError(str(exc)) from None
            shown = ", ".join(map(printable, names[:6])) + (f", ... ({len(names)} folders)" if len(names) > 6 else "")
            note(f"the model has no labels of its own: its outputs are named after the class folders of {flag} "
                 f"({shown}) if there is one folder per output; pass --labels FILE if they mean something else")
        break
    return labels or (where if where.endswith(LABELS_FILE) else None)
