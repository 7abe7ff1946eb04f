"""Priv-DT's record layout: what owners upload, how MU splits it, and the candidate splits."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twofold.crypto import dtpkc
from twofold.errors import InputError
from twofold.he import codec
from twofold.he.models import nb

DEPTH = 2
MAX_DEPTH = 4
BOUND_BITS = 5 * nb.COUNT_BITS + 6  # |num_a den_b - num_b den_a| for counts below 2^20


Column = list[list[dtpkc.Ciphertext]]  # per feature: that feature's bins of a chunk's records, q_slots per ciphertext


@dataclass(frozen=True)
class OwnerRecords:
    """One owner's records as MU stores them: per record K count ciphertexts, and per upload chunk
    (records, columns) with the chunk's bins packed feature-major (column j, slot r: record r's bin of j)."""

    pk: dtpkc.PublicKey
    cells: list[list[dtpkc.Ciphertext]]
    bins: list[tuple[int, Column]]


def column_cts(lay: nb.Layout, records: int) -> int:
    """Ciphertexts per feature column of a chunk of ``records`` records."""
    return -(-records // lay.q_slots)


def chunk_cts(lay: nb.Layout, records: int) -> int:
    """Ciphertexts of an uploaded chunk: the records' count vectors, then the feature columns."""
    return records * lay.cts_per_record + lay.features * column_cts(lay, records)


def encrypt_chunk(encrypt: Callable[[int], dtpkc.Ciphertext], lay: nb.Layout, bins: Sequence[Sequence[int]],
                  classes: Sequence[int]) -> list[dtpkc.Ciphertext]:
    """An owner's chunk: Priv-NB's count vector of every record, then per feature the records' bins packed like
    a query (q_slots records per ciphertext), so that MU opens a feature's rotated bins for many records with one
    partial decryption."""
    out = [ct for b, c in zip(bins, classes, strict=True) for ct in nb.encrypt_record(encrypt, lay, b, c)]
    for j in range(lay.features):
        out += [encrypt(codec.pack([b[j] for b in part], lay.qwidth)) for part in codec.chunks(list(bins), lay.q_slots)]
    return out


def split_chunk(lay: nb.Layout, cts: Sequence[Any], records: int) -> tuple[list[list[Any]], Column]:
    """(count vectors per record, feature columns) of one chunk as :func:`encrypt_chunk` lays it out."""
    k, per = lay.cts_per_record, column_cts(lay, records)
    if len(cts) != chunk_cts(lay, records):
        raise InputError("a chunk does not hold records x count ciphertexts plus the feature columns")
    cells = [list(cts[i * k:(i + 1) * k]) for i in range(records)]
    base = records * k
    return cells, [list(cts[base + j * per:base + (j + 1) * per]) for j in range(lay.features)]


def candidates(lay: nb.Layout) -> list[tuple[int, int]]:
    """Candidate splits (feature, threshold) in tournament order."""
    return [(j, t) for j in range(lay.features) for t in range(lay.bins - 1)]
