"""Training data: find the class folders, check them, split, and load them through `contract.prepare`.

Layouts: DATA_DIR/<class>/... (a validation split is held out per class), DATA_DIR/train/<class> with
DATA_DIR/val/<class> (or validation/, valid/), or any class-folder tree plus `--val DIR`.
Nothing here ever writes to or deletes from the data folders. No TensorFlow.
"""
from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tledge import images
from tledge.errors import DataError, ImageError, TledgeWarning, warnings_held
from tledge.labels import check_names, label_key, match_labels

VAL_NAMES = ("val", "validation", "valid")
DEFAULT_VAL_SPLIT = 0.2
_SHOW = 5  # file names listed in one warning


@dataclass(frozen=True)
class Split:
    files: tuple[Path, ...]
    y: np.ndarray  # int64 class index per file
    classes: tuple[str, ...]

    def counts(self) -> list[int]:
        return np.bincount(self.y, minlength=len(self.classes)).tolist()


@dataclass(frozen=True)
class DataPlan:
    train: Split
    val: Split
    classes: tuple[str, ...]
    source: str  # how the validation set was chosen, for the report


def fingerprint(plan: DataPlan) -> dict:
    """What --resume compares: the training and validation images by class and file name (not by path, which may
    differ between machines). Images added to a held-out split, or another --seed, moved validation images into
    training on resume, without a word."""
    import hashlib

    def digest(split: Split, sizes: bool = False) -> str:
        text = "".join(f"{split.classes[int(y)]}/{f.name}{f' {_size(f)}' if sizes else ''}\n"
                       for f, y in zip(split.files, split.y))
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]

    # "bytes": the same names with other contents (0.jpg ... of another data set) resumed without a word; a key of
    # its own, so that runs checkpointed before it was added still resume (compared where both have it)
    return {"train": digest(plan.train), "val": digest(plan.val),
            "images": [len(plan.train.files), len(plan.val.files)],
            "bytes": digest(plan.train, True) + digest(plan.val, True)}


def _size(f: Path) -> int:
    try:
        return f.stat().st_size
    except OSError:
        return -1


def _listing(paths) -> str:
    paths = list(paths)
    more = f" (and {len(paths) - _SHOW} more)" if len(paths) > _SHOW else ""
    return ", ".join(str(p) for p in paths[:_SHOW]) + more


def scan_classes(root: Path, *, what: str, labels: bool = True) -> dict[str, list[Path]]:
    """{class: [image files]} of a folder of class folders; warns about files that are skipped. labels: the names
    become the model's labels (checked as such); validation folders are matched to them (case and spaces aside)
    and need only be UTF-8."""
    if not root.is_dir():
        raise DataError(f"{what} folder not found: {root}")
    images.check_links(root)
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not images.skipped_name(d.name))
    loose = sorted(f for f in root.iterdir() if f.is_file() and not images.skipped_name(f.name))
    if not dirs:
        hint = " (they must be in one sub-folder per class)" if loose else ""
        raise DataError(f"{what} folder {root} has no class folders{hint}")
    if loose:
        warnings.warn(f"ignoring {len(loose)} file(s) directly in {root} (not in a class folder): "
                      f"{_listing(loose)}", TledgeWarning, stacklevel=3)
    check_names([d.name for d in dirs], where=str(root), encoding_only=not labels)  # labels.txt, every exported file
    classes: dict[str, list[Path]] = {}
    others, dangling = [], []
    for d in dirs:
        files = images.data_files(d, dangling)
        classes[d.name] = [f for f in files if f.suffix.lower() in images.IMAGE_SUFFIXES]
        others += [f for f in files if f.suffix.lower() not in images.IMAGE_SUFFIXES]
    if others:
        warnings.warn(f"ignoring {len(others)} non-image file(s) in {root}: {_listing(others)}",
                      TledgeWarning, stacklevel=3)
    if dangling:  # links to an unmounted disk: fewer images than the folder lists, and nothing said
        warnings.warn(f"ignoring {len(dangling)} symbolic link(s) to missing files in {root}: {_listing(dangling)}",
                      TledgeWarning, stacklevel=3)
    return classes


# folders of unlabelled images kept beside a train/ split (Kaggle's test/, Intel's seg_pred/): never classes
UNLABELLED = ("test", "pred", "seg_pred", "unlabel", "holdout", "infer")


def _split_layout(root: Path) -> tuple[Path, Path | None] | None:
    """(train dir, val dir or None) when `root` holds train/ (and val/) instead of class folders."""
    images.check_links(root)  # a val/ linked to an unmounted disk: 20% of train/ held out instead, without a word
    names = {d.name.lower(): d for d in root.iterdir() if d.is_dir() and not images.skipped_name(d.name)}
    if "train" not in names or not _subfolders(names["train"]):  # train/ of images alone: a class named train
        return None
    val = next((names[n] for n in VAL_NAMES if n in names), None)
    unused = sorted(d.name for n, d in names.items() if n != "train" and d != val)
    flat = [n for n in unused if not n.lower().startswith(UNLABELLED) and not _subfolders(root / n)
            and next(images.iter_image_files(root / n, recursive=False), None) is not None]
    # car/, bus/ of images beside a train/ of 2019/, 2020/ and no val/: class folders, one of them named train (a
    # val/, train/ holding folders named like them, or one folder of unlabelled images beside it (test1/, pred/)
    # is the split layout it looks like)
    if len(flat) > 1 and val is None and not _subfolders(names["train"]) & set(flat):
        raise DataError(f"{root} holds a train/ folder of sub-folders (a train/val split?) beside folders of images "
                        f"({', '.join(n + '/' for n in flat)}: classes?): rename train/ if it is a class, or move "
                        f"{', '.join(n + '/' for n in flat)} out if train/ is the split")
    if unused:
        warnings.warn(f"{root} holds a train/ folder: using train/{' and ' + val.name + '/' if val else ''} and "
                      f"ignoring {', '.join(n + '/' for n in unused)} (tledge train uses no test split; "
                      "check the exported files on it with tledge parity)", TledgeWarning, stacklevel=3)
    return names["train"], val


def _subfolders(d: Path) -> set[str]:
    """The names of the folders inside `d` (a split's train/ or val/ holds class folders)."""
    return {c.name for c in d.iterdir() if c.is_dir() and not images.skipped_name(c.name)}


def _check_split_named_classes(classes: dict[str, list[Path]], root: Path) -> None:
    """A val/ (validation/, valid/, test/) beside class folders, holding folders named like those classes, is a
    misplaced split, not a class: its sub-folders would have been trained as one class named "val". (A class named
    test whose images sit in batch folders stays a class.)"""
    for name in classes:
        if name.lower() in (*VAL_NAMES, "test") and _subfolders(root / name) & (set(classes) - {name}):
            raise DataError(f"{root / name} holds folders named like the classes beside it: a split folder, not a "
                            f"class. Put the class folders in {root}/train/ beside {name}/, or pass --val "
                            f"{root / name} with {name}/ moved out of {root}")


def _to_split(classes: dict[str, list[Path]], names: tuple[str, ...]) -> Split:
    files, ys = [], []
    for i, name in enumerate(names):
        fs = classes.get(name, [])
        files += fs
        ys += [i] * len(fs)
    return Split(tuple(files), np.asarray(ys, np.int64), names)


def _check_train(classes: dict[str, list[Path]], root: Path) -> tuple[str, ...]:
    empty = [c for c, fs in classes.items() if not fs]
    if empty:
        raise DataError(f"class folder(s) without images in {root}: {_listing(empty)}. Add images "
                        f"(.jpg, .png, ...) or move the empty folder(s) out of {root}")
    if len(classes) < 2:
        raise DataError(f"only one class ({next(iter(classes))!r}) in {root}: a classifier needs at "
                        "least two class folders")
    keys: dict[str, list[str]] = {}
    for name in classes:
        keys.setdefault(label_key(name, drop_index=False), []).append(name)
    alike = [" / ".join(group) for group in keys.values() if len(group) > 1]
    if alike:  # one folder on macOS and Windows, and ambiguous for every later match by name
        warnings.warn(f"class folders that differ only in case, spacing or Unicode form in {root}: "
                      f"{', '.join(alike)}: they train as separate classes", TledgeWarning, stacklevel=3)
    return tuple(classes)


def _check_val(classes: dict[str, list[Path]], names: tuple[str, ...], root: Path) -> dict[str, list[Path]]:
    """The validation folders under the training class names they match (exactly, else as export and parity
    match them: case, spaces, Unicode form); a DataError names those that match none."""
    unknown = sorted(set(classes) - set(names))
    if unknown:
        try:
            index = match_labels(unknown, names, where=root)
        except DataError:
            raise DataError(f"validation folder {root} has class folder(s) the training data lacks: "
                            f"{_listing(unknown)} (training classes: {_listing(names)})") from None
        merged = {k: list(v) for k, v in classes.items() if k not in index}  # once (it was rebuilt per folder)
        for folder, i in index.items():
            merged.setdefault(names[i], []).extend(classes[folder])
        classes = merged
    missing = [c for c in names if not classes.get(c)]
    if missing:
        warnings.warn(f"no validation images for {len(missing)} class(es): {_listing(missing)} in {root}",
                      TledgeWarning, stacklevel=3)
    if not any(classes.values()):
        raise DataError(f"no validation images in {root}")
    return classes


def hold_out(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Stratified split: `fraction` of each class (at least one image) goes to validation."""
    rng = np.random.default_rng(seed)
    tr, va = [], []
    counts = np.bincount(split.y, minlength=len(split.classes))
    thin = [f"{name!r} ({counts[c]})" for c, name in enumerate(split.classes) if counts[c] < 2]
    if thin:  # all of them (one a run, before: 500 runs to find 500 such classes)
        raise DataError(f"{len(thin)} class(es) with fewer than 2 images: {_listing(thin)}: holding out a validation "
                        "split needs at least 2 per class (add images or pass --val DIR)")
    for c, name in enumerate(split.classes):
        idx = rng.permutation(np.flatnonzero(split.y == c))
        n_val = min(len(idx) - 1, max(1, int(round(len(idx) * fraction))))
        va += idx[:n_val].tolist()
        tr += idx[n_val:].tolist()

    def take(ix):
        ix = sorted(ix)
        return Split(tuple(split.files[i] for i in ix), split.y[ix], split.classes)

    return take(tr), take(va)


def plan(data_dir: str | Path, val_dir: str | Path | None = None, val_split: float | None = None,
         seed: int = 0) -> DataPlan:
    """Find training and validation files and labels, or raise DataError saying what is wrong. Its warnings (files
    ignored, thin classes) are said once the data is found usable, or at the end of the DataError's one line (they
    made it three lines)."""
    with warnings_held(explain=True):
        return _plan(data_dir, val_dir, val_split, seed)


def _plan(data_dir, val_dir, val_split, seed: int) -> DataPlan:
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data folder {root} is a file: pass the folder of class folders" if root.exists() else
                        f"data folder not found: {root}")
    layout = _split_layout(root)
    train_dir, found_val = layout if layout else (root, None)
    if val_dir is None and found_val is not None and val_split is not None:
        raise DataError(f"{root} has a {found_val.name}/ folder: drop --val-split (or pass --val DIR)")
    train_classes = scan_classes(train_dir, what="training")
    _check_split_named_classes(train_classes, train_dir)
    names = _check_train(train_classes, train_dir)
    everything = _to_split(train_classes, names)
    val_root = Path(val_dir) if val_dir is not None else found_val
    if val_root is not None:
        if val_root.resolve() == train_dir.resolve():  # early stopping and the fine-tuning stop would see train data
            warnings.warn(f"--val {val_root} is the training folder: the validation figures measure images the "
                          "model trains on", TledgeWarning, stacklevel=2)
        val_classes = scan_classes(val_root, what="validation", labels=False)
        val_classes = _check_val(val_classes, names, val_root)
        found = DataPlan(everything, _to_split(val_classes, names), names, f"folder {val_root}")
        return _warn_thin(found if val_root.resolve() == train_dir.resolve() else _warn_shared(found))  # said above
    fraction = DEFAULT_VAL_SPLIT if val_split is None else val_split
    train, val = hold_out(everything, fraction, seed)
    return _warn_thin(_warn_shared(DataPlan(train, val, names, f"{fraction:g} of each class held out (seed {seed})")))


THIN = 2  # a class with fewer training images than this is warned about


def _warn_thin(plan: DataPlan) -> DataPlan:
    """Warn about classes left with a single training image (a 2-image class gives one to the validation split)."""
    thin = [f"{name} ({n})" for name, n in zip(plan.classes, plan.train.counts()) if n < THIN]
    if thin:
        warnings.warn(f"{len(thin)} class(es) train on a single image: {_listing(thin)}: the model can hardly learn "
                      "them, and their validation figures rest on one or two images (add images)",
                      TledgeWarning, stacklevel=3)
    return plan


def _warn_shared(plan: DataPlan) -> DataPlan:
    """Validation images that are byte for byte training images (a copied folder, a photo saved twice) make the
    validation figures and early stopping measure training data: said, with the first pairs. Only files of equal
    size are read."""
    import hashlib
    import os

    def size(f: Path) -> int:
        try:
            return os.stat(f).st_size
        except OSError:
            return -1

    by_size: dict[int, list[Path]] = {}
    for f in plan.train.files:
        by_size.setdefault(size(f), []).append(f)
    digests: dict[Path, bytes] = {}

    def digest(f: Path) -> bytes:
        if f not in digests:
            try:
                digests[f] = hashlib.sha256(f.read_bytes()).digest()
            except OSError:
                digests[f] = b""
        return digests[f]

    index: dict[int, dict[bytes, Path]] = {}  # size -> digest -> first training file: each validation file one lookup
    pairs = []  # (it compared every validation file with every training file of its size: 29 s for 2 x 5,000 BMPs)
    for v in plan.val.files:
        sz = size(v)
        if sz not in by_size:
            continue
        if sz not in index:
            index[sz] = {}
            for t in by_size[sz]:
                if digest(t):
                    index[sz].setdefault(digest(t), t)
        same = index[sz].get(digest(v)) if digest(v) else None
        if same is not None:
            pairs.append((v, same))
    if pairs:
        shown = "; ".join(f"{v} = {t}" for v, t in pairs[:3])
        warnings.warn(f"{len(pairs)} of the {len(plan.val.files)} validation images are copies of training images "
                      f"({shown}{' ...' if len(pairs) > 3 else ''}): the validation accuracy and early stopping "
                      "measure images the model trains on", TledgeWarning, stacklevel=3)
    return plan


def load(split: Split, contract, *, what: str = "training", workers: int = 2) -> tuple[np.ndarray, np.ndarray, Split]:
    """(X, y, kept split): every image through `contract.prepare`; unreadable files are skipped with a warning.

    X is uint8 when the contract is baked (prepare returns raw pixel values, so nothing is lost) and
    float32 otherwise; `X[i].astype(float32)` equals `contract.prepare(kept.files[i])`.
    """
    dtype = np.uint8 if contract.baked else np.float32
    X = np.empty((len(split.files),) + tuple(contract.input_shape), dtype)
    ok = np.ones(len(split.files), bool)
    bad: list[tuple[Path, str]] = []

    def one(i: int) -> None:
        try:
            X[i] = contract.prepare(split.files[i])
        except ImageError as exc:
            ok[i] = False
            bad.append((split.files[i], str(exc)))

    with ThreadPoolExecutor(max(1, workers)) as ex:  # OpenCV decodes without the GIL
        list(ex.map(one, range(len(split.files))))
    if bad:
        bad.sort()
        warnings.warn(f"skipping {len(bad)} unreadable {what} image(s) (left untouched on disk): "
                      f"{_listing(p for p, _ in bad)}; first error: {bad[0][1]}", TledgeWarning, stacklevel=2)
    kept = Split(tuple(f for f, k in zip(split.files, ok) if k), split.y[ok], split.classes)
    lost = [c for i, c in enumerate(split.classes) if (split.y == i).any() and not (kept.y == i).any()]
    if lost and what == "training":
        raise DataError(f"no readable training images left for class(es) {', '.join(lost)}")
    if len(kept.files) == 0:
        raise DataError(f"no readable {what} images")
    return X[ok] if not ok.all() else X, kept.y, kept


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class weights n / (k * n_c): the weighted class totals are equal (sklearn's "balanced")."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = np.zeros(n_classes)
    present = counts > 0
    w[present] = len(y) / (present.sum() * counts[present])
    return w.astype(np.float32)
