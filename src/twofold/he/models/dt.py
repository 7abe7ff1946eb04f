"""Priv-DT: a depth-limited binary decision tree over the public binning, trained and queried under encryption.

Upload. Per chunk of records: each record's Priv-NB one-hot count vector (feature, bin, class cells and class
indicators, packed), then the chunk's bins feature-major (per feature, the records' bins packed like a query),
all under the owner's own key. MU keeps the records (not only sums).

Training, one level at a time (heap numbering: root 1, children 2k and 2k + 1), every ciphertext T1-only:

1. ``dt.unpack``: every node's packed counts (per owner) are blinded slot-wise with 60-bit masks, SU returns a
   fresh system-key encryption per slot, MU removes the masks and adds the owners' parts.
2. For every candidate split (feature j, threshold t: bins <= t go left) MU forms [L_c], [R_c] homomorphically
   and, with the packed short-mask multiplication (``dt.mul``), the Gini proxy sum_c L_c^2/(L+1) +
   sum_c R_c^2/(R+1) as an encrypted fraction. A tournament of duels (``dt.duel``: SU opens a blinded,
   randomly oriented comparison of the cross products and returns the winner re-randomized, never knowing
   which candidate it is) keeps the best candidate's encrypted index; only that index is opened
   (``dt.reveal``): the split choice is revealed to both servers, the counts and the comparison outcomes are not.
3. ``dt.select``: per feature column of a split of the level, SU opens the records' bins rotated by fresh secret
   shifts and picks, per (record, node), from a table of fresh system-key encryptions in rotated order the entry
   at the rotated bin: [bin <= t] at the root, [reach node and bin <= t] below (MU folds the reach bit into the
   table), i.e. [reach left]; reach right is the difference. ``dt.pick``: SU opens [reach left XOR coin] (uniform
   bits, packed) and adds up, per owner, the re-randomized [+-counts] of the records whose opened bit is 1 (the
   sign is the coin); MU corrects the sum into the left child's counts; the right child's are the parent's
   minus the left's. After each level MU may checkpoint its state (ciphertexts only) and resume from it.
4. At depth D, leaf labels are the encrypted winners of a tournament of duels over the class counts. The model
   keeps every leaf's class counts (system key) and which records it holds (per owner: chunks, records, digest).

Online update (:func:`update`). Records uploaded after training (new chunks, new owners) are routed through the
stored splits with the same ``dt.select`` machinery (reach bits stay encrypted), ``dt.pick`` adds their counts
per leaf, ``dt.unpack`` moves them to the system key, MU adds them to the stored leaf counts and a tournament
gives the new leaf labels. The splits are not revisited (only a full training rebuilds the structure); the
cost is proportional to the new records. A model whose records were changed or removed is not updated.

Inference. SU picks [b_j <= t_k] for every internal node k from the query's rotated bins; MU evaluates every
path bottom-up, v_k = v_right + [cond_k] (v_left - v_right) (one multiplication round per level), and
key-switches the root value to the client's key. Neither server learns the path or the class.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twofold.crypto import dtpkc
from twofold.errors import InputError
from twofold.he import codec
from twofold.he.blocks import Blocks
from twofold.he.models import nb
from twofold.he.models.dt_format import (
    BOUND_BITS,
    DEPTH,
    MAX_DEPTH,
    Column,
    OwnerRecords,
    candidates,
    chunk_cts,
    column_cts,
    encrypt_chunk,
    split_chunk,
)
from twofold.he.models.dt_ops import (
    COUNT_MUL,
    class_cts,
    duel,
    mul,
    pick_sums,
    reveal,
    select_columns,
    select_conditions,
    split_entries,
    t1_enc,
    t1_rerand,
    tournament,
    unpack_counts,
)
from twofold.he.models.dt_reference import reference_predict, reference_train, reference_update

__all__ = ["BOUND_BITS", "COUNT_MUL", "DEPTH", "MAX_DEPTH", "Column", "OwnerRecords", "UpdatePlan", "absorbed",
           "candidates", "chunk_cts", "column_cts", "duel", "encrypt_chunk", "mul", "owner_digest", "plan_update",
           "predict", "records_fingerprint", "reference_predict", "reference_train", "reference_update",
           "resumable_depth", "split_chunk", "train", "update"]


Timer = Callable[[str, float], None]


def _timed(timer: Timer | None, phase: str, fn: Callable[[], Any]) -> Any:
    if timer is None:
        return fn()
    start = time.perf_counter()
    out = fn()
    timer(phase, time.perf_counter() - start)
    return out


def records_fingerprint(schema: nb.Schema, owners: Sequence[OwnerRecords], depth: int, p: dtpkc.PublicParams) -> str:
    """Identifies the training input (schema, depth, every owner's key and records, in order)."""
    h = hashlib.sha256(f"{schema.fingerprint}:{depth}".encode())
    for o in owners:
        h.update(codec.key_id(o.pk))
        for rec in o.cells:
            for ct in rec:
                h.update(codec.ct_to_bytes(p, ct))
        for count, cols in o.bins:
            h.update(count.to_bytes(4, "big"))
            for ct in (ct for col in cols for ct in col):
                h.update(codec.ct_to_bytes(p, ct))
    return h.hexdigest()


def owner_digest(p: dtpkc.PublicParams, owner: OwnerRecords, chunks: int) -> str:
    """Identifies an owner's first ``chunks`` upload chunks (their sizes and every ciphertext, in order)."""
    h = hashlib.sha256(codec.key_id(owner.pk))
    records = sum(n for n, _ in owner.bins[:chunks])
    for rec in owner.cells[:records]:
        for ct in rec:
            h.update(codec.ct_to_bytes(p, ct))
    for count, cols in owner.bins[:chunks]:
        h.update(count.to_bytes(4, "big"))
        for ct in (ct for col in cols for ct in col):
            h.update(codec.ct_to_bytes(p, ct))
    return h.hexdigest()


def absorbed(p: dtpkc.PublicParams, owners: Sequence[OwnerRecords]) -> list[dict[str, Any]]:
    """What a model holds, per owner in order: key, chunks, records and the digest of those chunks."""
    return [{"key": codec.key_id(o.pk), "chunks": len(o.bins), "records": len(o.cells),
             "digest": owner_digest(p, o, len(o.bins))} for o in owners if o.cells]


def resumable_depth(doc: dict[str, Any] | None, schema: nb.Schema, owners: Sequence[OwnerRecords],
                    p: dtpkc.PublicParams, depth: int = 0) -> int | None:
    """The depth of a training checkpoint made over exactly these records (and ``depth``, when given), or None."""
    if not doc or doc.get("model") != "dt" or type(doc.get("depth")) is not int or depth not in (0, doc["depth"]):
        return None
    if not 1 <= doc["depth"] <= MAX_DEPTH:
        return None
    current = records_fingerprint(schema, [o for o in owners if o.cells], doc["depth"], p)
    return doc["depth"] if doc.get("fingerprint") == current else None


def _save_level(checkpoint: nb.Checkpoint, fingerprint: str, level: int, splits: dict[int, tuple[int, int]],
                reach: dict[int, list[dtpkc.Ciphertext] | None], counts: dict[int, list[list[dtpkc.Ciphertext]]],
                p: dtpkc.PublicParams, final: bool, depth: int = 0) -> None:
    """MU's progress after ``level`` completed levels: the splits so far and, for the next level's nodes, the
    per-owner count vectors and (unless they are the leaves) the encrypted reach bits; ciphertexts only."""
    nodes = range(1 << level, 1 << (level + 1))
    checkpoint.save({"model": "dt", "fingerprint": fingerprint, "levels": level, "depth": depth,
                     "splits": [[k, j, t] for k, (j, t) in sorted(splits.items())],
                     "reach": [[k, [codec.ct_to_bytes(p, c) for c in reach[k] or []] if final is False else []]
                               for k in nodes],
                     "counts": [[k, [[codec.ct_to_bytes(p, c) for c in part] for part in counts[k]]] for k in nodes]})


def train(blocks: Blocks, schema: nb.Schema, owners: Sequence[OwnerRecords], depth: int = DEPTH,
          progress: Callable[[str, int, int], None] | None = None, checkpoint: nb.Checkpoint | None = None,
          timer: Timer | None = None) -> dict[str, Any]:
    """Train Priv-DT of the given depth over all owners' records; returns the (encrypted) model document.

    With a ``checkpoint``, MU saves its state after every completed level; a later call over the same records
    and depth resumes after the last completed level (a checkpoint of other records or depth is discarded).
    ``timer(phase, seconds)`` receives the time of every phase (profiling)."""
    p = blocks.params
    lay = nb.layout_for(p, schema)
    if not 1 <= depth <= MAX_DEPTH:
        raise InputError(f"depth must be 1 to {MAX_DEPTH}")
    owners = [o for o in owners if o.cells]
    if not owners:
        raise InputError("no training data uploaded yet")
    records = sum(len(o.cells) for o in owners)
    if any(sum(n for n, _ in o.bins) != len(o.cells) for o in owners):
        raise InputError("an owner's feature columns do not match its records")
    fingerprint = records_fingerprint(schema, owners, depth, p)
    ck = checkpoint.load() if checkpoint is not None else None
    splits: dict[int, tuple[int, int]] = {}
    if ck and ck.get("model") == "dt" and ck.get("fingerprint") == fingerprint:
        first = ck["levels"]
        splits = {k: (j, t) for k, j, t in ck["splits"]}
        reach: dict[int, list[dtpkc.Ciphertext] | None] = {
            k: codec.cts_from_bytes(p, cts) if cts else None for k, cts in ck["reach"]}
        counts = {k: [codec.cts_from_bytes(p, part) for part in parts] for k, parts in ck["counts"]}
    else:
        first = 0
        counts = {1: [[dtpkc.sum_ciphertexts(p, [r[k] for r in o.cells]) for k in range(lay.cts_per_record)]
                      for o in owners]}
        reach = {1: None}
    cands = candidates(lay)
    every, leaf_cts = list(range(lay.cts_per_record)), class_cts(lay)
    pks = [o.pk for o in owners]
    if progress:
        progress("level", first, depth)
    for level in range(first, depth):
        nodes = list(range(1 << level, 1 << (level + 1)))
        cells = _timed(timer, "unpack", lambda nodes=nodes: unpack_counts(
            blocks, lay, [list(zip(pks, counts[k], strict=True)) for k in nodes], every))
        entries = _timed(timer, "split_entries", lambda cells=cells: [split_entries(blocks, lay, c) for c in cells])
        best = _timed(timer, "tournament", lambda entries=entries: tournament(blocks, entries))
        winners = _timed(timer, "reveal", lambda best=best: reveal(blocks, best, len(cands)))
        for k, w in zip(nodes, winners, strict=True):
            splits[k] = cands[w]
        reach_in = None if level == 0 else [reach[k] for k in nodes]
        lefts = _timed(timer, "select", lambda nodes=nodes, reach_in=reach_in: select_columns(
            blocks, lay, owners, [splits[k] for k in nodes], reach_in))  # type: ignore[arg-type]
        which = leaf_cts if level == depth - 1 else every  # leaves need only the class counts
        sums = _timed(timer, "pick", lambda lefts=lefts, which=which: pick_sums(blocks, owners, lefts, which))
        for n, k in enumerate(nodes):
            reach[2 * k], reach[2 * k + 1] = lefts[n], _reach_right(p, reach.pop(k), lefts[n])
            counts[2 * k] = sums[n]
            counts[2 * k + 1] = [[dtpkc.sub(p, par[w], y) for w, y in zip(which, left, strict=True)]
                                 for par, left in zip(counts.pop(k), sums[n], strict=True)]
        if checkpoint is not None:
            _timed(timer, "checkpoint", lambda level=level: _save_level(
                checkpoint, fingerprint, level + 1, splits, reach, counts, p, level + 1 == depth, depth))
        if progress:
            progress("level", level + 1, depth)
    leaves = list(range(1 << depth, 1 << (depth + 1)))
    at_leaves = [list(zip(pks, counts[k], strict=True)) for k in leaves]  # class-count ciphertexts only
    cells = _timed(timer, "unpack", lambda: unpack_counts(blocks, lay, at_leaves, leaf_cts))
    leaf_counts = [[c[lay.class_count(y)] for y in range(lay.classes)] for c in cells]
    labels = _timed(timer, "leaves", lambda: _leaf_labels(blocks, lay, leaf_counts))
    if checkpoint is not None:
        checkpoint.clear()
    return {"model": "dt", "schema": json.loads(schema.to_json()), "depth": depth,
            "splits": [list(splits[k]) for k in range(1, 1 << depth)],
            "labels": [codec.ct_to_bytes(p, c) for c in labels], "records": records, "owners": len(owners),
            "leaf_counts": [[codec.ct_to_bytes(p, c) for c in leaf] for leaf in leaf_counts],
            "absorbed": absorbed(p, owners), "resumed": first > 0}


def _reach_right(p: dtpkc.PublicParams, parent: list[dtpkc.Ciphertext] | None,
                 left: list[dtpkc.Ciphertext]) -> list[dtpkc.Ciphertext]:
    """[reach right] = [reach parent] - [reach left] (at the root, 1 - [reach left])."""
    if parent is None:
        return [dtpkc.add_plain(p, dtpkc.negate(p, x), 1) for x in left]
    return [dtpkc.sub(p, r, x) for x, r in zip(left, parent, strict=True)]


def _leaf_labels(blocks: Blocks, lay: nb.Layout,
                 counts: Sequence[Sequence[dtpkc.Ciphertext]]) -> list[dtpkc.Ciphertext]:
    """[majority class] of every leaf from its encrypted class counts (ties: the lower class), by duels."""
    spool = blocks.system_pool
    one = [t1_enc(spool, 1) for _ in range(lay.classes)]
    groups = [[(c[y], one[y], t1_enc(spool, y)) for y in range(lay.classes)] for c in counts]
    return tournament(blocks, groups)  # type: ignore[arg-type]


@dataclass
class UpdatePlan:
    """What an online update would add to a model: per owner the records it does not hold yet (``new``), what the
    model holds afterwards (``absorbed``), or why the model cannot be updated (``reason``)."""

    new: list[OwnerRecords]
    absorbed: list[dict[str, Any]]
    records: int
    reason: str | None = None

    @property
    def new_records(self) -> int:
        return sum(len(o.cells) for o in self.new)


def plan_update(p: dtpkc.PublicParams, schema: nb.Schema, model: dict[str, Any], owners: Sequence[OwnerRecords],
                depth: int = 0) -> UpdatePlan:
    """Which stored records ``model`` has not absorbed yet. The model can be updated only when every owner's
    records it holds are still stored unchanged as the first chunks of that owner (digest), under the same
    schema and depth; records appended since (new chunks, new owners) are the update's input."""

    def refuse(reason: str) -> UpdatePlan:
        return UpdatePlan([], [], 0, reason)

    if model.get("model") != "dt" or "leaf_counts" not in model or "absorbed" not in model:
        return refuse("the stored model has no leaf counts (trained before online updates)")
    fields = {"key": bytes, "chunks": int, "records": int, "digest": str}
    if not isinstance(model["absorbed"], list) or not all(
            isinstance(e, dict) and set(e) == set(fields) and all(type(e[k]) is t for k, t in fields.items())
            for e in model["absorbed"]):
        return refuse("the stored model's list of held records is malformed")
    if nb.Schema.from_dict(model["schema"]).fingerprint != schema.fingerprint:
        return refuse("the public schema changed")
    if depth and depth != model["depth"]:
        return refuse(f"depth {depth} differs from the model's {model['depth']}")
    owners = [o for o in owners if o.cells]
    if any(sum(n for n, _ in o.bins) != len(o.cells) for o in owners):
        raise InputError("an owner's feature columns do not match its records")
    keys = [codec.key_id(o.pk) for o in owners]
    if len(set(keys)) != len(keys):
        return refuse("two owners' records are under the same key")
    by_key = dict(zip(keys, owners, strict=True))
    held: dict[bytes, tuple[int, int]] = {}
    for entry in model["absorbed"]:
        owner = by_key.get(entry["key"])
        chunks, records = entry["chunks"], entry["records"]
        if (owner is None or entry["key"] in held or not 0 < chunks <= len(owner.bins)
                or sum(n for n, _ in owner.bins[:chunks]) != records
                or owner_digest(p, owner, chunks) != entry["digest"]):
            return refuse("records the model holds were changed or removed")
        held[entry["key"]] = (chunks, records)
    new = []
    for key, owner in zip(keys, owners, strict=True):
        chunks, records = held.get(key, (0, 0))
        if chunks < len(owner.bins):
            new.append(OwnerRecords(owner.pk, owner.cells[records:], owner.bins[chunks:]))
    total = sum(len(o.cells) for o in owners)
    if total >= 1 << nb.COUNT_BITS:
        return refuse("too many records for the count layout")
    return UpdatePlan(new, absorbed(p, owners), total)


def update(blocks: Blocks, schema: nb.Schema, model: dict[str, Any], owners: Sequence[OwnerRecords],
           plan: UpdatePlan | None = None, progress: Callable[[str, int, int], None] | None = None,
           timer: Timer | None = None) -> dict[str, Any]:
    """The model updated with the records it does not hold yet, without retraining: the new records are routed
    through the stored splits obliviously (``dt.select`` with the reach bits folded in, as in training), their
    class counts are picked per leaf (``dt.pick``), moved to the system key (``dt.unpack``) and added to the
    stored leaf counts, and a tournament gives every leaf's new label. The splits stay as they are. Without new
    records the model is returned unchanged (and SU is not contacted)."""
    p = blocks.params
    lay = nb.layout_for(p, schema)
    plan = plan or plan_update(p, schema, model, owners)
    if plan.reason is not None:
        raise InputError(f"the model cannot be updated: {plan.reason}; train it afresh")
    if not plan.new:
        return dict(model, resumed=False)
    depth = model["depth"]
    splits = {k: (j, t) for k, (j, t) in enumerate(model["splits"], start=1)}
    leaves = list(range(1 << depth, 1 << (depth + 1)))
    stored = [codec.cts_from_bytes(p, leaf) for leaf in model["leaf_counts"]]
    if len(splits) != (1 << depth) - 1 or len(stored) != len(leaves) or any(len(c) != lay.classes for c in stored):
        raise InputError("the stored model is malformed")
    reach: dict[int, list[dtpkc.Ciphertext] | None] = {1: None}
    for level in range(depth):
        if progress:
            progress("update", level, depth + 1)
        nodes = list(range(1 << level, 1 << (level + 1)))
        reach_in = None if level == 0 else [reach[k] for k in nodes]
        lefts = _timed(timer, "select", lambda nodes=nodes, reach_in=reach_in: select_columns(
            blocks, lay, plan.new, [splits[k] for k in nodes], reach_in))  # type: ignore[arg-type]
        for n, k in enumerate(nodes):
            reach[2 * k], reach[2 * k + 1] = lefts[n], _reach_right(p, reach.pop(k), lefts[n])
    if progress:
        progress("update", depth, depth + 1)
    leaf_cts = class_cts(lay)
    sums = _timed(timer, "pick", lambda: pick_sums(blocks, plan.new, [reach[k] for k in leaves], leaf_cts))
    pks = [o.pk for o in plan.new]
    cells = _timed(timer, "unpack", lambda: unpack_counts(
        blocks, lay, [list(zip(pks, part, strict=True)) for part in sums], leaf_cts))
    counts = [[dtpkc.add(p, old[y], got[lay.class_count(y)]) for y in range(lay.classes)]
              for old, got in zip(stored, cells, strict=True)]
    labels = _timed(timer, "leaves", lambda: _leaf_labels(blocks, lay, counts))
    if progress:
        progress("update", depth + 1, depth + 1)
    return dict(model, labels=[codec.ct_to_bytes(p, c) for c in labels], records=plan.records,
                owners=len(plan.absorbed), leaf_counts=[[codec.ct_to_bytes(p, c) for c in leaf] for leaf in counts],
                absorbed=plan.absorbed, resumed=False)


def predict(blocks: Blocks, model: dict[str, Any], queries: Sequence[Sequence[dtpkc.Ciphertext]],
            client: dtpkc.PublicKey) -> list[dtpkc.Ciphertext]:
    """Enc_client(class index) for every query (bins packed under the client's key); the path stays hidden."""
    p = blocks.params
    if not queries:
        return []
    lay = nb.layout_for(p, nb.Schema.from_dict(model["schema"]))
    depth = model["depth"]
    splits = [tuple(s) for s in model["splits"]]
    conds = select_conditions(blocks, lay, queries, [client] * len(queries), splits)  # type: ignore[arg-type]
    labels = codec.cts_from_bytes(p, model["labels"])
    values = [[t1_rerand(blocks.system_pool, c) for c in labels] for _ in queries]  # nodes 2^D .. 2^(D+1)-1
    for level in range(depth - 1, -1, -1):
        nodes = range(1 << level, 1 << (level + 1))
        base = 1 << (level + 1)
        bits, diffs = [], []
        for q, vals in enumerate(values):
            for k in nodes:
                left, right = vals[2 * k - base], vals[2 * k + 1 - base]
                bits.append(conds[q][k - 1])
                diffs.append(dtpkc.sub(p, left, right))
        prods = mul(blocks, bits, diffs, COUNT_MUL)
        width = len(nodes)
        values = [[dtpkc.add(p, vals[2 * k + 1 - base], prods[q * width + k - (1 << level)]) for k in nodes]
                  for q, vals in enumerate(values)]
    return blocks.key_switch([v[0] for v in values], client)
