"""Priv-NB: categorical naive Bayes over a public binning, trained and queried under encryption.

Training data. Each record becomes a one-hot vector over cells (feature j, bin b, class c) plus one class
indicator per class, packed in 61-bit slots and encrypted by its owner under the owner's own key. MU sums an
owner's records homomorphically (an online update is one more sum), so training never revisits records.

Training (2 kinds of SU round trip, the second chunked and checkpointed):

1. MU blinds every owner's packed counts with fresh 60-bit masks m and partially decrypts; SU opens them into
   its additive shares d = n + m. For every log cell (n + alpha) MU draws a log-uniform factor R and noise e and
   sends Enc(R * 2^(slot)) and Enc((alpha - m) R + e) packed per group; SU raises the first to d and returns
   the re-randomized product Enc((n + alpha) R + e) packed two per ciphertext.
2. MU partially decrypts; SU opens (n + alpha) R + e, takes logarithms, combines them into the log-probability
   table ln P(b | c) + [j = 0] ln P(c), offset and packed over classes in every cyclic class rotation, and
   returns fresh encryptions; MU subtracts the known ln R terms.

Inference. The client sends its bin indices packed and encrypted under its own key. MU adds a random rotation
s_j and a statistical mask per feature; SU learns only t_j = (b_j + s_j) mod B, uniform. MU sends the F x B
table entries (re-randomized, rotated by s_j, classes rotated by a secret rho); SU adds the ones at t_j. The
argmax block then returns Enc_client(class). SU sees neither the bins, the scores nor the class; MU sees only
ciphertexts.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from twofold.crypto import dtpkc
from twofold.errors import InputError, ProtocolError
from twofold.he import codec
from twofold.he.blocks import Blocks, log_uniform
from twofold.he.models.schema import ClassSchema

COUNT_BITS = 20  # at most 2^20 - 1 training records in total
FRAC_BITS = 16
ALPHA = 1
PRIOR_ALPHA = 1


# ------------------------------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class Schema(ClassSchema):
    """Public model description: features, label, classes and the agreed bin edges of every feature."""

    MODEL: ClassVar[str] = "nb"

    edges: list[list[float]]

    def __post_init__(self) -> None:
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise InputError("a schema needs at least two distinct classes")
        if not self.features or len(self.edges) != len(self.features):
            raise InputError("a schema needs bin edges for every feature")
        if len({len(e) for e in self.edges}) != 1 or not 1 <= len(self.edges[0]) < 255:
            raise InputError("every feature needs the same number of bin edges (1 to 254)")

    @property
    def bins(self) -> int:
        return len(self.edges[0]) + 1

    def bin_row(self, row: Sequence[float]) -> list[int]:
        return [bisect.bisect_right(e, float(x)) for e, x in zip(self.edges, row, strict=True)]

    @classmethod
    def _fields(cls, doc: dict[str, Any]) -> dict[str, Any]:
        return {**super()._fields(doc), "edges": [[float(x) for x in e] for e in doc["edges"]]}


def fit_schema(features: list[str], label: str, xs: Sequence[Sequence[float]], ys: Sequence[str],
               bins: int) -> Schema:
    """Equal-frequency bin edges from data (in deployment the owners agree on public edges instead)."""
    if bins < 2:
        raise InputError("need at least 2 bins")
    edges = []
    for j in range(len(features)):
        col = sorted(float(r[j]) for r in xs)
        qs = [col[min(len(col) - 1, (len(col) * k) // bins)] for k in range(1, bins)]
        edges.append(qs)
    classes = sorted({str(y) for y in ys}, key=lambda v: (len(v), v))
    return Schema(list(features), label, classes, edges)


# ------------------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    """Every size that depends on the key and the schema."""

    bits: int
    classes: int
    features: int
    bins: int

    @property
    def cells(self) -> int:  # count slots: (feature, bin, class) cells then the class counts
        return (self.features * self.bins + 1) * self.classes

    def joint(self, c: int, j: int, b: int) -> int:
        return (j * self.bins + b) * self.classes + c

    def class_count(self, c: int) -> int:
        return self.features * self.bins * self.classes + c

    count_width = COUNT_BITS + codec.KAPPA + 1

    @property
    def count_slots(self) -> int:
        return (self.bits - 2) // self.count_width

    @property
    def cts_per_record(self) -> int:
        return -(-self.cells // self.count_slots)

    @property
    def group(self) -> int:  # blinded log values per ciphertext
        return 2 if self.bits >= 1536 else 1

    @property
    def vwidth(self) -> int:
        return (self.bits - 2) // self.group

    value_bits = COUNT_BITS + 9

    @property
    def max_shift(self) -> int:
        return self.vwidth - self.value_bits - 64 - 4

    @property
    def width(self) -> int:  # table and score slot width
        return (self.bits - 2) // self.classes

    offset = 1 << (FRAC_BITS + 6)

    @property
    def score_bits(self) -> int:
        return (self.features * 2 * self.offset).bit_length()

    @property
    def qwidth(self) -> int:
        return 2 * self.bins.bit_length() + codec.KAPPA + 2

    @property
    def q_slots(self) -> int:
        return (self.bits - 2) // self.qwidth

    @property
    def q_cts(self) -> int:
        return -(-self.features // self.q_slots)

    def check(self) -> None:
        if self.count_slots < 1 or self.max_shift < 64 or self.width - self.score_bits - 66 < 16 or self.q_slots < 1:
            raise InputError(f"a {self.bits}-bit key is too small for {self.classes} classes")


def layout_for(params: dtpkc.PublicParams, schema: Schema) -> Layout:
    layout = Layout(params.bits, len(schema.classes), len(schema.features), schema.bins)
    layout.check()
    return layout


# ------------------------------------------------------------------------------------------ owner and client


def record_cells(layout: Layout, bins: Sequence[int], c: int) -> list[int]:
    """One record's one-hot count vector."""
    v = [0] * layout.cells
    for j, b in enumerate(bins):
        v[layout.joint(c, j, b)] = 1
    v[layout.class_count(c)] = 1
    return v


def encrypt_record(encrypt: Callable[[int], dtpkc.Ciphertext], layout: Layout, bins: Sequence[int],
                   c: int) -> list[dtpkc.Ciphertext]:
    cells = record_cells(layout, bins, c)
    return [encrypt(codec.pack(chunk, layout.count_width)) for chunk in codec.chunks(cells, layout.count_slots)]


def encrypt_query(encrypt: Callable[[int], dtpkc.Ciphertext], layout: Layout,
                  bins: Sequence[int]) -> list[dtpkc.Ciphertext]:
    return [encrypt(codec.pack(chunk, layout.qwidth)) for chunk in codec.chunks(list(bins), layout.q_slots)]


# ---------------------------------------------------------------------------------------------- training


def _cells(layout: Layout) -> list[tuple[list[int], int]]:
    """(count slots summed, alpha) of every logarithm: joint cells, denominators, priors, total."""
    lay, out = layout, []
    for j in range(lay.features):
        for b in range(lay.bins):
            for c in range(lay.classes):
                out.append(([lay.joint(c, j, b)], ALPHA))
    out += [([lay.class_count(c)], lay.bins * ALPHA) for c in range(lay.classes)]
    out += [([lay.class_count(c)], PRIOR_ALPHA) for c in range(lay.classes)]
    out.append(([lay.class_count(c) for c in range(lay.classes)], lay.classes * PRIOR_ALPHA))
    return out


def _outputs(layout: Layout) -> list[list[list[list[int]]]]:
    """Table entry (j, b, rho): slot c holds ln P(b | c') + [j = 0] ln P(c') for c' = (c + rho) % C."""
    lay = layout
    fb = lay.features * lay.bins * lay.classes
    den, prior, total = fb, fb + lay.classes, fb + 2 * lay.classes
    outs = []
    for j in range(lay.features):
        for b in range(lay.bins):
            for rho in range(lay.classes):
                slots = []
                for c in range(lay.classes):
                    cc = (c + rho) % lay.classes
                    terms = [[(j * lay.bins + b) * lay.classes + cc, 1], [den + cc, -1]]
                    if j == 0:
                        terms += [[prior + cc, 1], [total, -1]]
                    slots.append(terms)
                outs.append(slots)
    return outs


def _ib(x: int) -> bytes:
    x = int(x)
    return x.to_bytes((x.bit_length() + 8) // 8, "big", signed=True)


def _bi(b: bytes) -> int:
    return int.from_bytes(b, "big", signed=True)


class Checkpoint:
    """Where the trainer keeps its progress (MU's private state)."""

    def load(self) -> dict[str, Any] | None:  # pragma: no cover - interface
        raise NotImplementedError

    def save(self, doc: dict[str, Any]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def clear(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class MemoryCheckpoint(Checkpoint):
    def __init__(self) -> None:
        self.doc: dict[str, Any] | None = None

    def load(self) -> dict[str, Any] | None:
        return self.doc

    def save(self, doc: dict[str, Any]) -> None:
        self.doc = dict(doc)

    def clear(self) -> None:
        self.doc = None


def aggregates_fingerprint(owners: Sequence[tuple[dtpkc.PublicKey, Sequence[bytes]]]) -> str:
    h = hashlib.sha256()
    for pk, agg in owners:
        h.update(codec.key_id(pk))
        for ct in agg:
            h.update(ct)
    return h.hexdigest()


def train(blocks: Blocks, schema: Schema, owners: Sequence[tuple[dtpkc.PublicKey, Sequence[bytes]]],
          checkpoint: Checkpoint, *, chunk: int = 256,
          progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Train Priv-NB from the owners' encrypted count aggregates; resumes from ``checkpoint`` if it matches."""
    params = blocks.params
    lay = layout_for(params, schema)
    if not owners:
        raise InputError("no training data uploaded yet")
    fingerprint = aggregates_fingerprint(owners)
    ck = checkpoint.load()
    if not ck or ck.get("fingerprint") != fingerprint:
        ck = _prepare(blocks, lay, owners, fingerprint)
        checkpoint.save(ck)
        resumed = False
    else:
        resumed = True
    cells = _cells(lay)
    outputs = _outputs(lay)
    done: dict[int, bytes] = dict(ck["done"])
    lnr = [_bi(x) for x in ck["lnr"]]
    vg = ck["vg"]
    todo = [i for i in range(len(outputs)) if i not in done]
    for start in range(0, len(todo), max(1, chunk)):
        batch = todo[start : start + max(1, chunk)]
        needed = sorted({t[0] // lay.group for i in batch for slot in outputs[i] for t in slot})
        body = {"groups": [list(vg[g]) for g in needed], "gids": needed, "group": lay.group, "vwidth": lay.vwidth,
                "frac": FRAC_BITS, "width": lay.width, "offset": lay.offset, "outputs": [outputs[i] for i in batch]}
        cts = codec.cts_from_bytes(params, blocks.link.request("su.log_pack", body)["cts"])
        if len(cts) != len(batch):
            raise ProtocolError("SU returned the wrong number of table entries")
        for i, ct in zip(batch, cts, strict=True):
            corr = [-sum(sign * lnr[cell] for cell, sign in slot) for slot in outputs[i]]
            done[i] = codec.ct_to_bytes(params, dtpkc.add_plain(params, ct, codec.pack(corr, lay.width)))
        ck["done"] = sorted(done.items())
        checkpoint.save(ck)
        if progress:
            progress("logs", len(done), len(outputs))
    model = {"model": "nb", "schema": json.loads(schema.to_json()), "table": [done[i] for i in range(len(outputs))],
             "records": ck["records"], "owners": len(owners), "resumed": resumed}
    checkpoint.clear()
    del cells
    return model


def _prepare(blocks: Blocks, lay: Layout, owners: Sequence[tuple[dtpkc.PublicKey, Sequence[bytes]]],
             fingerprint: str) -> dict[str, Any]:
    """Round 1: open blinded counts into SU's shares and get Enc((n + alpha) R + e) for every cell."""
    params = blocks.params
    n = int(params.n)
    counts_items, mask_total = [], [0] * lay.cells
    for pk, agg in owners:
        cts = codec.cts_from_bytes(params, agg)
        if len(cts) != lay.cts_per_record:
            raise InputError("an owner's aggregate does not match the schema")
        masks = [secrets.randbelow(1 << (COUNT_BITS + codec.KAPPA)) for _ in range(lay.cells)]
        pool = blocks.pool(pk)
        blinded = [pool.rerandomize(dtpkc.add_plain(params, ct, codec.pack(chunk, lay.count_width)))
                   for ct, chunk in zip(cts, codec.chunks(masks, lay.count_slots), strict=True)]
        counts_items.append(blocks.open_items(blinded))
        mask_total = [a + b for a, b in zip(mask_total, masks, strict=True)]
    cells = _cells(lay)
    q, c, lnr = [], [], []
    group_const = 0
    for i, (idx, alpha) in enumerate(cells):
        s = i % lay.group
        factor = log_uniform(lay.max_shift)
        noise = secrets.randbelow(factor >> 24)
        m_cell = sum(mask_total[k] for k in idx)
        q.append(codec.ct_to_bytes(params, blocks.system_pool.encrypt(factor << (lay.vwidth * s))))
        group_const += ((alpha - m_cell) * factor + noise) << (lay.vwidth * s)
        lnr.append(_ib(round(math.log(factor) * (1 << FRAC_BITS))))
        if s == lay.group - 1 or i == len(cells) - 1:
            c.append(codec.ct_to_bytes(params, blocks.system_pool.encrypt(group_const % n)))
            group_const = 0
    body = {"counts": counts_items, "width": lay.count_width, "slots": lay.count_slots,
            "cells": [idx for idx, _ in cells], "q": q, "c": c, "group": lay.group}
    vg = codec.cts_from_bytes(params, blocks.link.request("su.shares_mulpack", body)["cts"])
    if len(vg) != len(c):
        raise ProtocolError("SU returned the wrong number of blinded logs")
    items = blocks.open_items(vg)
    return {"fingerprint": fingerprint, "vg": items, "lnr": lnr, "done": [], "records": 0}


# --------------------------------------------------------------------------------------------- inference


def predict(blocks: Blocks, model: dict[str, Any], queries: Sequence[Sequence[dtpkc.Ciphertext]],
            client: dtpkc.PublicKey) -> list[dtpkc.Ciphertext]:
    """Enc_client(class index) for every encrypted query (bins packed under the client's key)."""
    params = blocks.params
    schema = Schema.from_dict(model["schema"])
    lay = layout_for(params, schema)
    table: list[bytes] = model["table"]
    cpool, spool = blocks.pool(client), blocks.system_pool
    bodies, rotations = [], []
    for query in queries:
        if len(query) != lay.q_cts:
            raise InputError(f"a query must have {lay.q_cts} ciphertexts")
        shifts = [secrets.randbelow(lay.bins) for _ in range(lay.features)]
        masks = [s + lay.bins * secrets.randbelow(1 << codec.KAPPA) for s in shifts]
        blinded = [cpool.rerandomize(dtpkc.add_plain(params, ct, codec.pack(chunk, lay.qwidth)))
                   for ct, chunk in zip(query, codec.chunks(masks, lay.q_slots), strict=True)]
        rho = secrets.randbelow(lay.classes)
        order = []
        n_sq = params.n_sq
        for j, s in enumerate(shifts):
            for k in range(lay.bins):
                b = (k - s) % lay.bins
                ct = codec.ct_from_bytes(params, table[(j * lay.bins + b) * lay.classes + rho])
                # T1-only re-randomization: the entries are opened only by PSDec (after SU's sum and the argmax
                # blinding), which reads T1; one fresh h^r each (from the pool when it has pairs)
                order.append(codec.ct_to_bytes(params, dtpkc.Ciphertext(ct.t1 * spool.take_h() % n_sq, 1)))
        bodies.append({"q": blocks.open_items(blinded), "table": order})
        rotations.append(rho)
    reply = blocks.link.request("su.select_sum", {"queries": bodies, "qwidth": lay.qwidth, "bins": lay.bins,
                                                  "features": lay.features})
    scores = [dtpkc.Ciphertext(c.t1, 1) for c in codec.cts_from_bytes(params, reply["cts"])]  # T1 only, as above
    if len(scores) != len(queries):
        raise ProtocolError("SU returned the wrong number of scores")
    return blocks.argmax_packed(scores, rotations, lay.classes, lay.width, lay.score_bits, client)


# ------------------------------------------------------------------------------------ plaintext reference


def reference_scores(schema: Schema, counts: Sequence[int], bins: Sequence[int]) -> list[float]:
    """The same model in floating point, from plaintext counts (for tests and accuracy checks)."""
    lay = Layout(0, len(schema.classes), len(schema.features), schema.bins)
    cls = [counts[lay.class_count(c)] for c in range(lay.classes)]
    total = sum(cls)
    out = []
    for c in range(lay.classes):
        s = math.log(cls[c] + PRIOR_ALPHA) - math.log(total + lay.classes * PRIOR_ALPHA)
        for j, b in enumerate(bins):
            s += math.log(counts[lay.joint(c, j, b)] + ALPHA) - math.log(cls[c] + lay.bins * ALPHA)
        out.append(s)
    return out


def plaintext_counts(schema: Schema, rows: Sequence[Sequence[float]], labels: Sequence[str]) -> list[int]:
    lay = Layout(0, len(schema.classes), len(schema.features), schema.bins)
    total = [0] * lay.cells
    for row, y in zip(rows, labels, strict=True):
        for k, v in enumerate(record_cells(lay, schema.bin_row(row), schema.class_index(y))):
            total[k] += v
    return total
