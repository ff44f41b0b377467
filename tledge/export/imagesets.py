"""The labelled image folders an export reads (--val, --calib), prepared with the contract: unreadable files
skipped and said, large folders sampled evenly over their classes."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from tledge.contract import Contract
from tledge.errors import DataError, TledgeError, TledgeWarning


def load_pixels(folder: str | Path, contract: Contract, limit: int, labels: tuple[str, ...] = ()):
    """Prepared pixels (contract.prepare) of a folder's images; unreadable files are skipped and
    counted. Returns (pixels, y or None)."""
    pixels, y, _ = load_images(folder, contract, limit, labels)
    return pixels, y


def load_images(folder: str | Path, contract: Contract, limit: int, labels: tuple[str, ...] = ()):
    """load_pixels, plus the files the pixels come from: (pixels, y or None, files). Over `limit` images: an even
    spread over the folder's classes and files, an unreadable one replaced by the next readable file."""
    from tledge.images import labelled_images, prepare_all

    files, y, _ = labelled_images(folder, labels or None)
    todo = list(range(len(files)))
    if len(files) > limit:  # an even spread over classes and files
        todo = list(dict.fromkeys(np.linspace(0, len(files) - 1, limit).round().astype(int).tolist()))
    used = set(todo)
    xs, keep, bad = [], [], []
    while todo:
        replace = []
        for i, x in zip(todo, prepare_all(contract.prepare, [files[i] for i in todo])):
            if isinstance(x, TledgeError):
                bad.append(f"{files[i].name}: {x}")
                j = _next_unused(i, len(files), used, y)
                if j is not None:
                    used.add(j)
                    replace.append(j)
            else:
                xs.append(x)
                keep.append(i)
        todo = replace
    if not xs:
        raise DataError(f"no readable images in {folder} ({len(bad)} unreadable: {'; '.join(bad[:2])})")
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        warnings.warn(f"skipped {len(bad)} unreadable image(s) in {folder}: {'; '.join(bad[:3])}{more}",
                      TledgeWarning, stacklevel=2)
    if len(files) > limit:
        from tledge import log

        log.note(f"{folder}: {len(xs)} of its {len(files)} images used (an even spread over its classes)")
    by_index = dict(zip(keep, xs))
    keep.sort()  # the folder's order (classes together), as without a limit
    return np.stack([by_index[i] for i in keep]), (None if y is None else y[keep]), [files[i] for i in keep]


def _next_unused(i: int, n: int, used: set[int], y) -> int | None:
    """The file (of n) to read in place of unreadable file i: the next one after it not read yet, of its class where
    the folder has classes (an unreadable image of class d was replaced by one of class a)."""
    after_then_before = (*range(i + 1, n), *range(i - 1, -1, -1))
    same = next((j for j in after_then_before if j not in used and (y is None or y[j] == y[i])), None)
    return same if same is not None else next((j for j in after_then_before if j not in used), None)


def split_is_dangling(model_path: str | Path) -> bool:
    """Whether the model's folder has the split/ a training run leaves, with no image its links lead to (the data
    moved): export then says so instead of asking for images after loading the model."""
    from tledge.images import TRAINING_SPLIT, has_images

    root = Path(model_path).parent / TRAINING_SPLIT
    return root.is_dir() and not any(has_images(root / part) for part in ("train", "val") if (root / part).is_dir())


def training_split(model_path: str | Path) -> tuple[str | None, str] | None:
    """(calibration folder, validation folder) of the training run a model comes from: `tledge train` leaves
    OUT/split/train and OUT/split/val (symbolic links to the images it trained and validated on) beside
    OUT/model.keras. None when there is none, or when its links no longer lead to images (the data moved)."""
    from tledge.images import TRAINING_SPLIT, has_images

    root = Path(model_path).parent / TRAINING_SPLIT
    train, val = root / "train", root / "val"
    if not val.is_dir() or not has_images(val):
        return None
    return (str(train) if train.is_dir() and has_images(train) else None), str(val)
