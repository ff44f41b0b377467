"""Shared fixtures. Real third-party assets live in ../shared/assets and are optional."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

REPO = Path(__file__).resolve().parents[1]
SHARED_ASSETS = REPO.parent / "shared" / "assets"


def shared_asset(*parts: str) -> Path:
    """Path under ../shared/assets, or skip the test (with a reason) where it is absent."""
    p = SHARED_ASSETS.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared asset not available: {p}")
    return p


@pytest.fixture(scope="session")
def shared_assets() -> Path:
    if not SHARED_ASSETS.is_dir():
        pytest.skip(f"../shared/assets not available at {SHARED_ASSETS}")
    return SHARED_ASSETS


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory) -> Path:
    """A tiny generated 3-class data set (train/ and val/ of class folders), made once per session."""
    from tledge.datasets import make_split_shapes

    return make_split_shapes(tmp_path_factory.mktemp("shapes"))
