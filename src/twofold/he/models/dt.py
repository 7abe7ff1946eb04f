"""Priv-DT: a depth-limited binary decision tree over the public binning, trained and queried under encryption.

Upload. Each record is Priv-NB's one-hot count vector (feature, bin, class cells and class indicators, packed)
plus its bin indices packed like a query, all under the owner's own key. MU keeps the records (not only sums).

Training, one level at a time (heap numbering: root 1, children 2k and 2k + 1):

1. ``dt.unpack``: every node's packed counts (per owner) are blinded slot-wise with 60-bit masks, SU returns a
   fresh system-key encryption per slot, MU removes the masks and adds the owners' parts.
2. For every candidate split (feature j, threshold t: bins <= t go left) MU forms [L_c], [R_c] homomorphically
   and, with the multiplication block, the Gini proxy sum_c L_c^2/(L+1) + sum_c R_c^2/(R+1) as an encrypted
   fraction. A tournament of secure comparisons of cross-multiplied fractions (winners selected by encrypted
   bits, never opened) keeps the best candidate's encrypted index; only that index is opened (``dt.reveal``):
   the split choice is revealed to both servers, the counts and the comparison outcomes are not.
3. ``dt.select``: for every record and node of the level SU opens the record's bins rotated by fresh secret
   shifts and picks, from a table of fresh system-key encryptions of [bin <= t] in rotated order, the entry at
   the rotated bin: [cond]. [reach left] = [reach node] * [cond] (multiplication block), reach right is the
   difference. ``dt.pick``: SU opens [reach left XOR coin] (a uniform bit) and sums, per owner, one of two
   re-randomized ciphertext lists MU supplies (the record's counts or encryptions of zero), re-randomized:
   the left child's counts; the right child's are the parent's minus the left's.
4. At depth D, leaf labels are the encrypted winners of a comparison tournament over the class counts.

Inference. SU picks [b_j <= t_k] for every internal node k from the query's rotated bins; MU evaluates every
path bottom-up, v_k = v_right + [cond_k] (v_left - v_right) (one multiplication round per level), and
key-switches the root value to the client's key. Neither server learns the path or the class.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twofold.crypto import dtpkc
from twofold.errors import InputError, ProtocolError
from twofold.he import codec
from twofold.he.blocks import Blocks
from twofold.he.models import nb

DEPTH = 2
MAX_DEPTH = 4
BOUND_BITS = 5 * nb.COUNT_BITS + 6  # |num_a den_b - num_b den_a| for counts below 2^20


@dataclass(frozen=True)
class OwnerRecords:
    """One owner's records as MU stores them: per record K count ciphertexts and the packed bins."""

    pk: dtpkc.PublicKey
    cells: list[list[dtpkc.Ciphertext]]
    bins: list[list[dtpkc.Ciphertext]]


def cts_per_record(lay: nb.Layout) -> int:
    return lay.cts_per_record + lay.q_cts


def encrypt_record(encrypt: Callable[[int], dtpkc.Ciphertext], lay: nb.Layout, bins: Sequence[int],
                   c: int) -> list[dtpkc.Ciphertext]:
    """Priv-NB's count vector followed by the bin indices packed as a query."""
    return nb.encrypt_record(encrypt, lay, bins, c) + nb.encrypt_query(encrypt, lay, bins)


def candidates(lay: nb.Layout) -> list[tuple[int, int]]:
    """Candidate splits (feature, threshold) in tournament order."""
    return [(j, t) for j in range(lay.features) for t in range(lay.bins - 1)]


# --------------------------------------------------------------------------------------- encrypted helpers


Entry = tuple[dtpkc.Ciphertext, dtpkc.Ciphertext, dtpkc.Ciphertext]  # numerator, denominator, payload


def tournament(blocks: Blocks, groups: list[list[Entry]]) -> list[dtpkc.Ciphertext]:
    """Encrypted payload of the entry with the largest num/den in each group (ties: the earlier entry wins)."""
    p = blocks.params
    groups = [list(g) for g in groups]
    while any(len(g) > 1 for g in groups):
        pairs = [(gi, i) for gi, g in enumerate(groups) for i in range(0, len(g) - 1, 2)]
        a = [groups[gi][i] for gi, i in pairs]
        b = [groups[gi][i + 1] for gi, i in pairs]
        prods = blocks.mul([x[0] for x in a] + [y[0] for y in b], [y[1] for y in b] + [x[1] for x in a])
        bits = blocks.compare(prods[: len(a)], prods[len(a):], BOUND_BITS)
        diffs = [dtpkc.sub(p, x[f], y[f]) for x, y in zip(a, b, strict=True) for f in range(3)]
        sel = blocks.mul([bit for bit in bits for _ in range(3)], diffs)
        winners = [tuple(dtpkc.add(p, y[f], sel[3 * k + f]) for f in range(3)) for k, y in enumerate(b)]
        new: list[list[Entry]] = []
        k = 0
        for g in groups:
            row = []
            for _ in range(len(g) // 2):
                row.append(winners[k])
                k += 1
            if len(g) % 2:
                row.append(g[-1])
            new.append(row)  # type: ignore[arg-type]
        groups = new
    return [g[0][2] for g in groups]


def unpack_counts(blocks: Blocks, lay: nb.Layout, parts: list[list[tuple[dtpkc.PublicKey, list[dtpkc.Ciphertext]]]]
                  ) -> list[list[dtpkc.Ciphertext]]:
    """Per node, the system-key encryption of every count cell (summed over the owners' packed parts)."""
    p = blocks.params
    items, masks = [], []
    for node in parts:
        for pk, cts in node:
            m = [secrets.randbelow(1 << (nb.COUNT_BITS + codec.KAPPA)) for _ in range(lay.cells)]
            pool = blocks.pool(pk)
            items += [pool.rerandomize(dtpkc.add_plain(p, ct, codec.pack(ch, lay.count_width)))
                      for ct, ch in zip(cts, codec.chunks(m, lay.count_slots), strict=True)]
            masks.append(m)
    body = {"items": blocks.open_items(items), "width": lay.count_width, "slots": lay.count_slots,
            "count": lay.cells}
    flat = codec.cts_from_bytes(p, blocks.link.request("dt.unpack", body)["cts"])
    if len(flat) != lay.cells * len(masks):
        raise ProtocolError("SU returned the wrong number of count cells")
    out, k = [], 0
    for node in parts:
        acc: list[dtpkc.Ciphertext] | None = None
        for _ in node:
            cells = [dtpkc.add_plain(p, flat[k * lay.cells + i], -masks[k][i]) for i in range(lay.cells)]
            acc = cells if acc is None else [dtpkc.add(p, x, y) for x, y in zip(acc, cells, strict=True)]
            k += 1
        out.append(acc)  # type: ignore[arg-type]
    return out


def select_conditions(blocks: Blocks, lay: nb.Layout, bins: Sequence[Sequence[dtpkc.Ciphertext]],
                      keys: Sequence[dtpkc.PublicKey],
                      splits: Sequence[tuple[int, int]]) -> list[list[dtpkc.Ciphertext]]:
    """[bins_j <= t] under the system key for every packed bin vector and every split (j, t)."""
    p, spool = blocks.params, blocks.system_pool
    items = []
    for q, pk in zip(bins, keys, strict=True):
        if len(q) != lay.q_cts:
            raise InputError(f"packed bins must have {lay.q_cts} ciphertexts")
        shifts = [secrets.randbelow(lay.bins) for _ in range(lay.features)]
        masks = [s + lay.bins * secrets.randbelow(1 << codec.KAPPA) for s in shifts]
        pool = blocks.pool(pk)
        blinded = [pool.rerandomize(dtpkc.add_plain(p, ct, codec.pack(ch, lay.qwidth)))
                   for ct, ch in zip(q, codec.chunks(masks, lay.q_slots), strict=True)]
        sel = [{"feature": j, "table": [codec.ct_to_bytes(p, spool.encrypt(int((k - shifts[j]) % lay.bins <= t)))
                                        for k in range(lay.bins)]} for j, t in splits]
        items.append({"q": blocks.open_items(blinded), "sel": sel})
    body = {"items": items, "qwidth": lay.qwidth, "bins": lay.bins, "features": lay.features}
    flat = codec.cts_from_bytes(p, blocks.link.request("dt.select", body)["cts"])
    if len(flat) != len(bins) * len(splits):
        raise ProtocolError("SU returned the wrong number of selections")
    return [flat[i * len(splits):(i + 1) * len(splits)] for i in range(len(bins))]


def pick_sums(blocks: Blocks, owners: Sequence[OwnerRecords], bits: Sequence[Sequence[dtpkc.Ciphertext]],
              width: int) -> list[list[list[dtpkc.Ciphertext]]]:
    """Per owner and node: [sum_i bit_i * cells_i] (bits[node][record] flattened over owners)."""
    p = blocks.params
    groups, shape = [], []
    for node_bits in bits:
        offset = 0
        for owner in owners:
            pool = blocks.pool(owner.pk)
            blinded, opts = [], []
            for i, cells in enumerate(owner.cells):
                coin = secrets.randbits(1)
                bit = node_bits[offset + i]
                x = dtpkc.add_plain(p, dtpkc.negate(p, bit), 1) if coin else bit
                blinded.append(blocks.system_pool.rerandomize(x))
                real = [codec.ct_to_bytes(p, pool.rerandomize(c)) for c in cells]
                zero = [codec.ct_to_bytes(p, pool.encrypt(0)) for _ in cells]
                opts.append(real + zero if coin else zero + real)  # option e holds the record iff e XOR coin = 1
            offset += len(owner.cells)
            groups.append({"key": codec.key_id(owner.pk), "bits": blocks.open_items(blinded), "opts": opts})
        shape.append(len(owners))
    reply = codec.cts_from_bytes(p, blocks.link.request("dt.pick", {"groups": groups, "width": width})["cts"])
    if len(reply) != width * len(groups):
        raise ProtocolError("SU returned the wrong number of sums")
    out, k = [], 0
    for n in shape:
        out.append([reply[(k + o) * width:(k + o + 1) * width] for o in range(n)])
        k += n
    return out


def _reveal(blocks: Blocks, cts: Sequence[dtpkc.Ciphertext], bound: int) -> list[int]:
    body = {"items": blocks.open_items(list(cts)), "bound": bound}
    values = blocks.link.request("dt.reveal", body)["result"]["values"]
    if len(values) != len(cts) or any(type(v) is not int or not 0 <= v < bound for v in values):
        raise ProtocolError("SU revealed malformed split indices")
    return values


def _split_entries(blocks: Blocks, lay: nb.Layout, cells: list[dtpkc.Ciphertext]) -> list[Entry]:
    """(numerator, denominator, index) of every candidate's Gini proxy, two multiplication rounds."""
    p, spool = blocks.params, blocks.system_pool
    tot = [cells[lay.class_count(c)] for c in range(lay.classes)]
    cands = candidates(lay)
    lefts, rights = [], []
    for j, t in cands:
        left = [dtpkc.sum_ciphertexts(p, [cells[lay.joint(c, j, b)] for b in range(t + 1)]) for c in range(lay.classes)]
        lefts.append(left)
        rights.append([dtpkc.sub(p, tot[c], left[c]) for c in range(lay.classes)])
    ln = [dtpkc.add_plain(p, dtpkc.sum_ciphertexts(p, x), 1) for x in lefts]  # L + 1
    rn = [dtpkc.add_plain(p, dtpkc.sum_ciphertexts(p, x), 1) for x in rights]  # R + 1
    xs = [v for x, y in zip(lefts, rights, strict=True) for v in x + y]
    sq = blocks.mul(xs + ln, xs + rn)
    den = sq[len(xs):]
    per = 2 * lay.classes
    a = [dtpkc.sum_ciphertexts(p, sq[k * per:k * per + lay.classes]) for k in range(len(cands))]
    b = [dtpkc.sum_ciphertexts(p, sq[k * per + lay.classes:(k + 1) * per]) for k in range(len(cands))]
    nums = blocks.mul(a + b, rn + ln)
    return [(dtpkc.add(p, nums[k], nums[len(cands) + k]), den[k], spool.encrypt(k)) for k in range(len(cands))]


def train(blocks: Blocks, schema: nb.Schema, owners: Sequence[OwnerRecords], depth: int = DEPTH,
          progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Train Priv-DT of the given depth over all owners' records; returns the (encrypted) model document."""
    p = blocks.params
    lay = nb.layout_for(p, schema)
    if not 1 <= depth <= MAX_DEPTH:
        raise InputError(f"depth must be 1 to {MAX_DEPTH}")
    owners = [o for o in owners if o.cells]
    if not owners:
        raise InputError("no training data uploaded yet")
    keys = [o.pk for o in owners for _ in o.cells]
    all_bins = [q for o in owners for q in o.bins]
    counts: dict[int, list[list[dtpkc.Ciphertext]]] = {
        1: [[dtpkc.sum_ciphertexts(p, [r[k] for r in o.cells]) for k in range(lay.cts_per_record)] for o in owners]}
    reach: dict[int, list[dtpkc.Ciphertext] | None] = {1: None}
    splits: dict[int, tuple[int, int]] = {}
    cands = candidates(lay)
    for level in range(depth):
        nodes = list(range(1 << level, 1 << (level + 1)))
        cells = unpack_counts(blocks, lay, [list(zip([o.pk for o in owners], counts[k], strict=True)) for k in nodes])
        entries = [_split_entries(blocks, lay, c) for c in cells]
        winners = _reveal(blocks, tournament(blocks, entries), len(cands))
        for k, w in zip(nodes, winners, strict=True):
            splits[k] = cands[w]
        conds = select_conditions(blocks, lay, all_bins, keys, [splits[k] for k in nodes])
        lefts = []
        for n, k in enumerate(nodes):
            col = [row[n] for row in conds]
            lefts.append(col if reach[k] is None else blocks.mul(reach[k], col))  # type: ignore[arg-type]
        sums = pick_sums(blocks, owners, lefts, lay.cts_per_record)
        for n, k in enumerate(nodes):
            parent = reach[k]
            reach[2 * k] = lefts[n]
            reach[2 * k + 1] = [dtpkc.add_plain(p, dtpkc.negate(p, x), 1) if parent is None else dtpkc.sub(p, r, x)
                                for x, r in zip(lefts[n], parent or lefts[n], strict=True)]
            counts[2 * k] = sums[n]
            counts[2 * k + 1] = [[dtpkc.sub(p, x, y) for x, y in zip(par, left, strict=True)]
                                 for par, left in zip(counts[k], sums[n], strict=True)]
        if progress:
            progress("level", level + 1, depth)
    leaves = list(range(1 << depth, 1 << (depth + 1)))
    cells = unpack_counts(blocks, lay, [list(zip([o.pk for o in owners], counts[k], strict=True)) for k in leaves])
    one = [blocks.system_pool.encrypt(1) for _ in range(lay.classes)]
    groups = [[(c[lay.class_count(y)], one[y], blocks.system_pool.encrypt(y)) for y in range(lay.classes)]
              for c in cells]
    labels = tournament(blocks, groups)
    return {"model": "dt", "schema": json.loads(schema.to_json()), "depth": depth,
            "splits": [list(splits[k]) for k in range(1, 1 << depth)],
            "labels": [codec.ct_to_bytes(p, c) for c in labels], "records": len(keys), "owners": len(owners),
            "resumed": False}


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
    values = [[blocks.system_pool.rerandomize(c) for c in labels] for _ in queries]  # nodes 2^D .. 2^(D+1)-1
    for level in range(depth - 1, -1, -1):
        nodes = range(1 << level, 1 << (level + 1))
        base = 1 << (level + 1)
        bits, diffs = [], []
        for q, vals in enumerate(values):
            for k in nodes:
                left, right = vals[2 * k - base], vals[2 * k + 1 - base]
                bits.append(conds[q][k - 1])
                diffs.append(dtpkc.sub(p, left, right))
        prods = blocks.mul(bits, diffs)
        width = len(nodes)
        values = [[dtpkc.add(p, vals[2 * k + 1 - base], prods[q * width + k - (1 << level)]) for k in nodes]
                  for q, vals in enumerate(values)]
    return blocks.key_switch([v[0] for v in values], client)


# ------------------------------------------------------------------------------------ plaintext reference


def _tournament_plain(groups: list[list[tuple[int, int, int]]]) -> list[int]:
    while any(len(g) > 1 for g in groups):
        new = []
        for g in groups:
            row = [g[i] if g[i][0] * g[i + 1][1] >= g[i + 1][0] * g[i][1] else g[i + 1]
                   for i in range(0, len(g) - 1, 2)]
            new.append(row + ([g[-1]] if len(g) % 2 else []))
        groups = new
    return [g[0][2] for g in groups]


def reference_train(schema: nb.Schema, rows: Sequence[Sequence[float]], labels: Sequence[str],
                    depth: int = DEPTH) -> dict[str, Any]:
    """The same tree in plaintext: same candidates, proxy, tournament order and tie rules."""
    lay = nb.Layout(0, len(schema.classes), len(schema.features), schema.bins)
    data = [(schema.bin_row(r), schema.class_index(y)) for r, y in zip(rows, labels, strict=True)]
    members = {1: data}
    splits: dict[int, tuple[int, int]] = {}
    cands = candidates(lay)
    for level in range(depth):
        for k in range(1 << level, 1 << (level + 1)):
            recs = members[k]
            tot = [sum(1 for _, y in recs if y == c) for c in range(lay.classes)]
            entries = []
            for idx, (j, t) in enumerate(cands):
                left = [sum(1 for b, y in recs if y == c and b[j] <= t) for c in range(lay.classes)]
                right = [x - y for x, y in zip(tot, left, strict=True)]
                ln, rn = sum(left) + 1, sum(right) + 1
                num = sum(x * x for x in left) * rn + sum(x * x for x in right) * ln
                entries.append((num, ln * rn, idx))
            splits[k] = cands[_tournament_plain([entries])[0]]
            j, t = splits[k]
            members[2 * k] = [(b, y) for b, y in recs if b[j] <= t]
            members[2 * k + 1] = [(b, y) for b, y in recs if b[j] > t]
    labels_out = []
    for k in range(1 << depth, 1 << (depth + 1)):
        tot = [sum(1 for _, y in members[k] if y == c) for c in range(lay.classes)]
        labels_out.append(_tournament_plain([[(tot[c], 1, c) for c in range(lay.classes)]])[0])
    return {"depth": depth, "splits": [list(splits[k]) for k in range(1, 1 << depth)], "labels": labels_out}


def reference_predict(schema: nb.Schema, tree: dict[str, Any], row: Sequence[float]) -> int:
    bins = schema.bin_row(row)
    k = 1
    for _ in range(tree["depth"]):
        j, t = tree["splits"][k - 1]
        k = 2 * k if bins[j] <= t else 2 * k + 1
    return tree["labels"][k - (1 << tree["depth"])]
