"""TrainConfig (what to train, frozen) and TrainResult (what came out). No TensorFlow here."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tledge.contract import Contract

from tledge.errors import TledgeError
from tledge.paths import expand


class ClassWeights(str, Enum):
    NONE = "none"  # every sample counts the same
    AUTO = "auto"  # n_samples / (n_classes * n_class): rare classes weigh more ("balanced")


class Precision(str, Enum):
    AUTO = "auto"  # mixed_float16 when a GPU is present, float32 on CPU
    FLOAT32 = "float32"
    MIXED = "mixed"  # mixed_float16 even without a GPU (slow on CPU; for testing)


WEIGHTS_IMAGENET = "imagenet"
WEIGHTS_NONE = "none"

# Defaults chosen on hymenoptera_data with MobileNet-0.25 at 224 px on 2 CPU cores (docs/train-results.md).
DEFAULT_UNFREEZE_FRACTION = 0.3  # phase 2 unfreezes the top 30% of the backbone's layers
# phase 2's default rate is the head's / 300 (1e-5 at the default 3e-3, as in the TensorFlow transfer-learning
# tutorial): at / 10 (3e-4) Adam moves the unfrozen MobileNet layers so far
# that the first fine-tuning epoch loses 10-20 points of val accuracy (measured, docs/train-results.md)
FINE_TUNE_LR_DIVISOR = 300.0
# phase 2 stops (best weights so far restored) when an epoch's val accuracy falls more than this below the
# best head epoch: fine-tuning must keep what the head learned (issue 14, docs/train-results.md)
FINE_TUNE_MAX_DROP = 0.02


@dataclass(frozen=True)
class TrainConfig:
    """Everything `tledge train` does; every field has the CLI's default."""

    backbone: str = "mobilenet"
    alpha: float | None = None  # width multiplier (MobileNet families); None = Keras' default (1.0)
    weights: str | Path = WEIGHTS_IMAGENET  # "imagenet" (Keras download), "none" (random init) or a no-top .h5 file
    size: int | None = None  # input HxW; None = the backbone's default size
    grayscale: bool = False  # 1-channel model folded from the RGB weights
    epochs: int = 20  # phase 1: head on the frozen backbone
    fine_tune_epochs: int = 15  # phase 2: top backbone layers unfrozen, lower learning rate
    unfreeze: int | None = None  # phase 2: top N backbone layers trainable (None: 30% of them)
    fine_tune_at: str | int | None = None  # phase 2: this layer (name or index) and above trainable
    batch: int = 32
    lr: float = 3e-3  # phase 1 Adam learning rate
    fine_tune_lr: float | None = None  # phase 2 learning rate; None = lr / 300 (docs/train-results.md)
    augment: bool = True  # flips, small shifts, brightness (training batches only)
    val_dir: str | Path | None = None  # a separate folder of class folders
    val_split: float | None = None  # fraction held out per class (default 0.2 without a val folder)
    class_weights: ClassWeights = ClassWeights.NONE
    resume: bool = False  # continue from `out`/checkpoints
    out: str | Path = "runs/train"
    patience: int = 6  # early stopping per phase: epochs without a higher val accuracy, or the same and a lower val
    # loss (0: never stop early, no drop guard either)
    fine_tune_max_drop: float = FINE_TUNE_MAX_DROP  # phase 2 stops when val accuracy is this far under the head's
    dropout: float = 0.2
    seed: int = 0
    precision: Precision = Precision.AUTO
    verbose: int = 1  # 0 silent, 1 one line per epoch

    def __post_init__(self) -> None:
        from tledge import fields

        fields.check(self)  # types first: "epochs='5'" was a TypeError from a comparison below
        for name, enum in (("class_weights", ClassWeights), ("precision", Precision)):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, enum(value.value if isinstance(value, Enum) else value))
            except ValueError:
                choices = ", ".join(e.value for e in enum)
                raise TledgeError(f"{name}={value!r} is not one of: {choices}") from None
        for name in ("out", "val_dir"):  # "" trained into (or validated on) the current folder, as the CLI refuses
            if getattr(self, name) is not None and not str(getattr(self, name)).strip():
                raise TledgeError(f"{name} is empty: give a folder")
        object.__setattr__(self, "out", expand(self.out))  # `~` as the CLI expands it (not a folder named ~)
        w = str(self.weights)  # a Path was refused: "expected str"; `~` expanded as for out
        object.__setattr__(self, "weights", w if w in (WEIGHTS_IMAGENET, WEIGHTS_NONE) else str(expand(w)))
        if self.val_dir is not None:
            object.__setattr__(self, "val_dir", expand(self.val_dir))
        if isinstance(self.fine_tune_at, str) and re.fullmatch(r"-?[0-9]+", self.fine_tune_at):
            object.__setattr__(self, "fine_tune_at", int(self.fine_tune_at))
        self._check()

    def _check(self) -> None:
        def bad(msg: str) -> None:
            raise TledgeError(msg)

        if self.epochs < 0 or self.fine_tune_epochs < 0:
            bad("epochs and fine-tune epochs must be >= 0")
        if self.epochs + self.fine_tune_epochs == 0:
            bad("nothing to train: epochs and fine-tune epochs are both 0")
        if self.batch < 1:
            bad(f"batch must be >= 1, got {self.batch}")
        import math

        for name in ("lr", "fine_tune_lr", "alpha", "dropout", "val_split", "fine_tune_max_drop"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):  # NaN passed every comparison below
                bad(f"{name} must be a finite number, got {v}")
        if self.lr <= 0 or (self.fine_tune_lr is not None and self.fine_tune_lr <= 0):
            bad("learning rates must be > 0")
        if self.size is not None and self.size < 8:
            bad(f"size must be >= 8 pixels, got {self.size}")
        if self.alpha is not None and self.alpha <= 0:
            bad(f"alpha must be > 0, got {self.alpha}")
        if self.unfreeze is not None and self.fine_tune_at is not None:
            bad("give --unfreeze or --fine-tune-at, not both")
        if self.unfreeze is not None and self.unfreeze < 0:
            bad(f"unfreeze must be >= 0, got {self.unfreeze}")
        if self.val_split is not None and not 0.0 < self.val_split < 1.0:
            bad(f"val split must be between 0 and 1 (exclusive), got {self.val_split}")
        if self.val_split is not None and self.val_dir is not None:
            bad("give --val DIR or --val-split, not both")
        if not 0.0 <= self.dropout < 1.0:
            bad(f"dropout must be in [0, 1), got {self.dropout}")
        if self.grayscale and self.precision is Precision.MIXED:
            bad("--grayscale folds the RGB weights in float32: use --precision float32 or auto")
        if self.patience < 0:
            bad(f"patience must be >= 0, got {self.patience}")
        if not 0.0 <= self.fine_tune_max_drop <= 1.0:
            bad(f"fine-tune max drop must be in [0, 1], got {self.fine_tune_max_drop}")
        w = str(self.weights)
        if w not in (WEIGHTS_IMAGENET, WEIGHTS_NONE) and not Path(w).is_file():
            bad(f"--weights must be 'imagenet', 'none' or a weights file; {w!r} is not a file")

    @property
    def effective_fine_tune_lr(self) -> float:
        return self.fine_tune_lr if self.fine_tune_lr is not None else self.lr / FINE_TUNE_LR_DIVISOR

    @property
    def backbone_weights(self) -> str | None:
        """The `weights=` argument for keras.applications: None, "imagenet" or a path."""
        w = str(self.weights)
        return None if w == WEIGHTS_NONE else w

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = v.value if isinstance(v, Enum) else str(v) if isinstance(v, Path) else v
        return d


# fields that must match to resume a run (the model's shape and the data's meaning)
RESUME_KEYS = ("backbone", "alpha", "size", "grayscale", "dropout", "augment", "unfreeze", "fine_tune_at",
               "seed", "val_split", "batch", "lr", "fine_tune_lr", "class_weights")  # the optimizer restores its lr


@dataclass(frozen=True)
class TrainResult:
    out: Path
    model_path: Path  # model.keras
    h5_path: Path | None  # model.h5; None where Keras 3 could not reload it (MobileNetV3's bare ops)
    contract: Contract  # (tledge.json)
    labels: tuple[str, ...]
    val_accuracy: float  # of the saved model on the validation images
    wall_time_s: float
    metrics: dict = field(compare=False)  # the content of metrics.json
