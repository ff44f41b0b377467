"""Checkpoints after every epoch, and resuming from them.

OUT/checkpoints/ holds `state.json` (where the run is, its history and best score) and the files it
names: the model weights and optimizer variables of the last epoch, and the best weights so far.
Every file is written under a temporary name and renamed; `state.json` is renamed last, so it always
names complete files. Files no longer named are then removed (only ours, inside OUT/checkpoints).
"""
from __future__ import annotations

import json
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from tledge.safejson import finite, loads_json
from tledge.errors import TledgeError
from tledge.io import atomic_write_text, check_space

STATE = "state.json"
FORMAT = "tledge.train.state"


@contextmanager
def numpy2_quiet():
    """Keras' HDF5 writer triggers numpy 2's "__array__ ... copy keyword" DeprecationWarning per variable."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"__array__ implementation doesn't accept a copy keyword",
                                category=DeprecationWarning)
        yield


def temp_sibling(path: Path):
    """A temporary name next to `path` with the same suffixes (Keras checks them); renamed on success."""
    from tledge.io import atomic_path

    return atomic_path(path, same_suffix=True)  # Keras and numpy create the file themselves


def weight_bytes(variables) -> int:
    """What `variables` (Keras or TensorFlow variables, arrays) hold, in bytes."""
    return sum(int(np.prod(v.shape)) * np.dtype(getattr(v.dtype, "name", v.dtype)).itemsize for v in variables)


class Checkpoints:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    @property
    def state_path(self) -> Path:
        return self.folder / STATE

    def exists(self) -> bool:
        return self.state_path.is_file()

    def load_state(self) -> dict:
        try:
            state = loads_json(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # (not JSON, not UTF-8, nested too deeply)
            raise TledgeError(f"cannot read checkpoint state {self.state_path}: {exc}") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise TledgeError(f"{self.state_path} is not a tledge train checkpoint")
        for key in ("last", "best"):
            name = state.get(key)
            if name and not (self.folder / f"{name}.weights.h5").is_file():
                raise TledgeError(f"checkpoint file {self.folder / name}.weights.h5 is missing: cannot resume")
        return state

    def save(self, model, optimizer, state: dict, *, best: bool) -> dict:
        """Write the last weights (the best ones too when `best`), optimizer variables, then the state (returned)."""
        tag = f"{state['phase']}-{state['epoch']:03d}"
        last = f"last-{tag}"
        size = weight_bytes(model.weights)
        check_space(self.folder, size * (2 if best else 1) + weight_bytes(getattr(optimizer, "variables", [])),
                    "a checkpoint", "free some space and go on with --resume")
        with temp_sibling(self.folder / f"{last}.weights.h5") as tmp, numpy2_quiet():
            model.save_weights(str(tmp))
        self._save_optimizer(optimizer, self.folder / f"{last}.optimizer.npz")
        if best:
            with temp_sibling(self.folder / f"best-{tag}.weights.h5") as tmp, numpy2_quiet():
                model.save_weights(str(tmp))
        state = dict(state, format=FORMAT, last=last, best=f"best-{tag}" if best else state.get("best"))
        atomic_write_text(self.state_path, json.dumps(finite(state), indent=1, allow_nan=False) + "\n")
        self._prune(state)
        return state

    def mark_complete(self, state: dict) -> None:
        atomic_write_text(self.state_path, json.dumps(finite(dict(state, format=FORMAT, complete=True)), indent=1,
                                                      allow_nan=False) + "\n")

    def load_weights(self, model, state: dict, which: str = "last") -> None:
        path = self.folder / f"{state[which]}.weights.h5"
        try:
            model.load_weights(str(path))
        except (OSError, ValueError, KeyError) as exc:  # truncated (a full disk, a copy cut short), or not ours
            raise self._unreadable(path, exc) from None

    def load_optimizer(self, optimizer, variables, state: dict) -> bool:
        """Restore optimizer variables saved with the last checkpoint; False when they do not fit."""
        path = self.folder / f"{state['last']}.optimizer.npz"
        if not path.is_file():
            return False
        try:
            with np.load(path) as data:
                values = [data[f"v{i}"] for i in range(len(data.files))]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise self._unreadable(path, exc) from None
        if not getattr(optimizer, "built", False):
            optimizer.build(variables)
        if len(values) != len(optimizer.variables) or any(
                tuple(v.shape) != tuple(x.shape) for v, x in zip(optimizer.variables, values)):
            return False
        for v, x in zip(optimizer.variables, values):
            v.assign(x)
        return True

    def _unreadable(self, path: Path, exc: BaseException) -> TledgeError:
        why = " ".join(str(exc).split())[:160] or type(exc).__name__
        return TledgeError(f"checkpoint file {path} cannot be read ({why}): cannot resume; delete {self.folder} "
                           "to train from the start")

    def _save_optimizer(self, optimizer, path: Path) -> None:
        arrays = {f"v{i}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)}
        with temp_sibling(path) as tmp:
            np.savez(tmp, **arrays)

    def _prune(self, state: dict) -> None:
        """Files no longer named, and temporary files a killed run left (`.last-head-001.x1y2.weights.h5`: the
        train lock keeps any other writer out)."""
        keep = {state.get("last"), state.get("best")}
        for f in self.folder.iterdir():
            stem = f.name.lstrip(".").split(".")[0]
            if f.is_file() and stem.startswith(("last-", "best-")) and (f.name.startswith(".") or stem not in keep):
                f.unlink()
