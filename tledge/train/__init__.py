"""Transfer learning: `train(data_dir, TrainConfig(...)) -> TrainResult` (the library side of `tledge train`).

Importing this package does not import TensorFlow; calling `train` does.
"""
from __future__ import annotations

from pathlib import Path

from tledge.train.config import ClassWeights, Precision, TrainConfig, TrainResult


def train(data_dir: str | Path, config: TrainConfig | None = None) -> TrainResult:
    """Fine-tune a pretrained backbone on class folders; see tledge.train.api.train."""
    from tledge.train.api import train as train_impl

    return train_impl(data_dir, config)


__all__ = ["ClassWeights", "Precision", "TrainConfig", "TrainResult", "train"]
