"""`tledge train --resume`: what a run's checkpoint state must agree with before it continues (the settings that
shape the model and the data's meaning, the images, the precision and the number of replicas it trained on)."""
from __future__ import annotations

import warnings

from tledge.errors import TledgeError, TledgeWarning
from tledge.train.checkpoint import Checkpoints
from tledge.train.config import RESUME_KEYS, TrainConfig


def is_complete(ckpt: Checkpoints) -> bool:
    try:
        return bool(ckpt.load_state().get("complete"))
    except TledgeError:
        return False


def resume_state(cfg: TrainConfig, ckpt: Checkpoints, labels, data: dict | None = None) -> dict | None:
    """The checkpoint state to resume from, or None for a fresh run."""
    from tledge.train.finetune import new_state

    if not cfg.resume:
        if ckpt.exists() and not is_complete(ckpt):
            warnings.warn(f"{ckpt.folder} holds an unfinished run; starting afresh replaces it "
                          "(pass --resume to continue it instead)", TledgeWarning, stacklevel=4)
        elif ckpt.exists():
            from tledge import log

            log.note(f"{cfg.out} holds a finished run: its model and files stay until this run has written all of "
                     "its own (its checkpoints are replaced from the first epoch)")
        return None
    if not ckpt.exists():
        warnings.warn(f"--resume: no checkpoint in {ckpt.folder}, starting afresh", TledgeWarning, stacklevel=4)
        return None
    state = ckpt.load_state()
    diff = resume_differences(state, cfg, labels, data)
    if diff:
        raise TledgeError(f"cannot resume {cfg.out}: the run was made with different settings ({', '.join(diff)})")
    return {**new_state(cfg, labels), **state, "config": cfg.to_dict()}


def _known(fp: dict, keys: dict) -> dict:
    """The fingerprint `fp` on the keys both have (a checkpoint of an older tledge lacks the newer ones)."""
    return {k: v for k, v in fp.items() if k in keys}


def _effective(config: dict, key: str):
    """A setting as the run used it: --val-split 0.2 or --fine-tune-lr LR/300 given explicitly are the defaults a run
    made without them used (resuming with them was refused: "val_split None -> 0.2")."""
    from tledge.train.config import FINE_TUNE_LR_DIVISOR
    from tledge.train.data import DEFAULT_VAL_SPLIT

    value = config.get(key)
    if value is None and key == "val_split" and not config.get("val_dir"):
        return DEFAULT_VAL_SPLIT
    if value is None and key == "fine_tune_lr" and isinstance(config.get("lr"), (int, float)):
        return config["lr"] / FINE_TUNE_LR_DIVISOR
    return value


def resume_differences(state: dict, cfg: TrainConfig, labels, data: dict | None = None) -> list[str]:
    """What differs from the run being resumed: the model's shape, the data's meaning and split, and what the
    restored optimizer and schedule would silently ignore (--lr, --epochs of a finished phase)."""
    old, now = state["config"], cfg.to_dict()
    done = {p.get("name") for p in state.get("phases_done") or ()}
    keys = RESUME_KEYS + (("epochs",) if state.get("phase") != "head" or done else ()) + \
        (("fine_tune_epochs",) if "fine_tune" in done or state.get("phase") == "done" else ())
    diff = [f"{k} {old.get(k)} -> {now.get(k)}" for k in keys
            if k in old and old.get(k) != now.get(k) and _effective(old, k) != _effective(now, k)]
    if list(labels) != state["labels"]:
        diff.append(f"classes {state['labels']} -> {list(labels)}")
    if data is not None and state.get("data") not in (None, data) and _known(state["data"], data) != \
            _known(data, state["data"]):
        (t0, v0), (t1, v1) = state["data"]["images"], data["images"]
        diff.append(f"images {t0} training / {v0} validation -> {t1} / {v1}" if (t0, v0) != (t1, v1) else
                    "the training / validation images (same counts, other files, contents or split)")
    return diff


def same_precision(cfg: TrainConfig, resumed: dict | None, mixed: bool) -> None:
    """The precision a resumed run trained in, not the words asking for it (auto is float32 on a CPU, mixed on a
    GPU): mixed precision's optimizer has other variables, and Adam's state was reset without a word."""
    if resumed is None or resumed.get("mixed", mixed) == mixed:
        return
    from tledge.errors import TledgeError

    used = {True: "mixed_float16", False: "float32"}
    raise TledgeError(f"cannot resume {cfg.out}: it trained in {used[resumed['mixed']]}, this run would train in "
                      f"{used[mixed]} (--precision {cfg.precision.value}): pass --precision "
                      f"{'mixed' if resumed['mixed'] else 'float32'}")


def same_replicas(resumed: dict | None, replicas: int, out) -> None:
    """A run resumes on as many replicas as it trained on: the global batch and the learning rate scale with them,
    and the restored optimizer kept the old rate while metrics.json reported the new one."""
    if resumed is None or resumed.get("replicas") in (None, replicas):
        return
    raise TledgeError(f"cannot resume {out}: it trained on {resumed['replicas']} replica(s), this run has "
                      f"{replicas} (the global batch and learning rate scale with them): resume with as many "
                      "workers and GPUs as it started with, or train again without --resume")
