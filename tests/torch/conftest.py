"""Small encrypted tensor datasets and a key broker started from the CLI for the training-side tests."""

from __future__ import annotations

import numpy as np
import pytest

from twofold.data.tensors import write_tensors

from ..conftest import PASSPHRASE


@pytest.fixture
def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "x": rng.standard_normal((203, 3, 5)).astype(np.float32),
        "y": rng.integers(0, 10, 203).astype(np.int64),
        "mask": rng.random(203) > 0.5,
        "h": rng.standard_normal((203, 7)).astype(">f2"),  # big-endian half floats, odd row size
    }


@pytest.fixture
def dataset(arrays, keystore, tmp_path):
    """Several shards, several segments per array per shard, rows not aligned to 64-byte blocks."""
    return write_tensors(arrays, tmp_path / "train.tfds", keystore, rows_per_shard=64, segment_bytes=256)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TWOFOLD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TWOFOLD_PASSPHRASE", PASSPHRASE)
    return tmp_path / "home"
