"""Named float64 arrays (packed by :mod:`twofold.crypto.sealing`): combining per-partition statistics."""

from __future__ import annotations

import numpy as np

from twofold.crypto.sealing import Arrays, pack, unpack
from twofold.errors import ProtocolError

__all__ = ["Arrays", "combine", "pack", "unpack"]

def combine(parts: list[Arrays]) -> Arrays:
    """Sum per-partition statistics; ``cat_*`` are concatenated in partition order, ``max_*``/``min_*`` reduced."""
    if not parts:
        raise ProtocolError("no partition statistics to combine")
    names = set(parts[0])
    if any(set(p) != names for p in parts):
        raise ProtocolError("partition statistics disagree in shape")
    reducers = {"cat_": np.concatenate, "max_": lambda xs: np.max(xs, axis=0), "min_": lambda xs: np.min(xs, axis=0)}
    return {name: reducers.get(name[:4], lambda xs: np.sum(xs, axis=0))([p[name] for p in parts]) for name in names}
