"""Named float64 arrays packed with msgpack: the only shape in which statistics, states and models travel.

Sizes depend only on the arrays' shapes, never on their values, so message sizes reveal nothing about the data.
"""

from __future__ import annotations

import msgpack
import numpy as np

from twofold.errors import ProtocolError

Arrays = dict[str, np.ndarray]


def pack(arrays: Arrays) -> bytes:
    return msgpack.packb({name: [list(np.shape(a)), np.ascontiguousarray(a, dtype="<f8").tobytes()]
                          for name, a in sorted(arrays.items())}, use_bin_type=True)


def unpack(data: bytes) -> Arrays:
    try:
        raw = msgpack.unpackb(data, raw=False)
        out = {}
        for name, (shape, buffer) in raw.items():
            array = np.frombuffer(buffer, dtype="<f8")
            out[str(name)] = array.reshape([int(s) for s in shape]).copy()
        return out
    except (ValueError, TypeError, KeyError, msgpack.ExtraData, msgpack.FormatError):
        raise ProtocolError("malformed array bundle") from None


def combine(parts: list[Arrays]) -> Arrays:
    """Sum per-partition statistics; ``cat_*`` are concatenated in partition order, ``max_*``/``min_*`` reduced."""
    if not parts:
        raise ProtocolError("no partition statistics to combine")
    names = set(parts[0])
    if any(set(p) != names for p in parts):
        raise ProtocolError("partition statistics disagree in shape")
    reducers = {"cat_": np.concatenate, "max_": lambda xs: np.max(xs, axis=0), "min_": lambda xs: np.min(xs, axis=0)}
    return {name: reducers.get(name[:4], lambda xs: np.sum(xs, axis=0))([p[name] for p in parts]) for name in names}
