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
   difference. ``dt.pick``: SU opens [reach left XOR coin] (a uniform bit) and adds up, per owner, the
   re-randomized [+-counts] of the records whose opened bit is 1 (the sign is the coin); MU corrects the sum
   into the left child's counts; the right child's are the parent's minus the left's.
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
COUNT_MUL = nb.COUNT_BITS + 2  # operands of the first products: counts + 1
NUM_MUL = 2 * nb.COUNT_BITS + 8  # sums of squared counts
WIDE_MUL = 3 * nb.COUNT_BITS + 12  # numerators, differences in the tournament


def mul(blocks: Blocks, a: Sequence[dtpkc.Ciphertext], b: Sequence[dtpkc.Ciphertext],
        bits: int) -> list[dtpkc.Ciphertext]:
    """[a*b] (system key) for signed |a|, |b| < 2^bits, with the ``su.mul`` round trip of the multiplication
    block but statistical masks: SU sees a + r, b + s with r, s uniform on [2^bits, 2^bits + 2^(bits+40)),
    positive and within statistical distance 2^-40 of independent of a, b; MU's corrections use short scalars."""
    if len(a) != len(b):
        raise ValueError("operands differ in length")
    if not a:
        return []
    p, pool = blocks.params, blocks.system_pool
    if bits + codec.KAPPA + 4 >= p.bits:
        raise ValueError("operands too wide for the statistical masks")

    def mask() -> int:
        return (1 << bits) + secrets.randbelow(1 << (bits + codec.KAPPA))

    rs = [(mask(), mask()) for _ in a]
    blinded = []
    for x, y, (r, t) in zip(a, b, rs, strict=True):
        blinded += [pool.rerandomize(dtpkc.add_plain(p, x, r)), pool.rerandomize(dtpkc.add_plain(p, y, t))]
    items = blocks.open_items(blinded)
    reply = blocks.link.request("su.mul", {"items": [items[i] + items[i + 1] for i in range(0, len(items), 2)]})
    z = codec.cts_from_bytes(p, reply["cts"])
    if len(z) != len(a):
        raise ProtocolError("SU returned the wrong number of products")
    out = []
    for c, x, y, (r, t) in zip(z, a, b, rs, strict=True):
        c = dtpkc.sub(p, c, dtpkc.scalar_mul(p, x, t))  # (a + r)(b + t) - t a - r b - r t = a b
        c = dtpkc.sub(p, c, dtpkc.scalar_mul(p, y, r))
        out.append(dtpkc.add_plain(p, c, -r * t))
    return out


def tournament(blocks: Blocks, groups: list[list[Entry]]) -> list[dtpkc.Ciphertext]:
    """Encrypted payload of the entry with the largest num/den in each group (ties: the earlier entry wins)."""
    p = blocks.params
    groups = [list(g) for g in groups]
    while any(len(g) > 1 for g in groups):
        pairs = [(gi, i) for gi, g in enumerate(groups) for i in range(0, len(g) - 1, 2)]
        a = [groups[gi][i] for gi, i in pairs]
        b = [groups[gi][i + 1] for gi, i in pairs]
        prods = mul(blocks, [x[0] for x in a] + [y[0] for y in b], [y[1] for y in b] + [x[1] for x in a], WIDE_MUL)
        bits = blocks.compare(prods[: len(a)], prods[len(a):], BOUND_BITS)
        diffs = [dtpkc.sub(p, x[f], y[f]) for x, y in zip(a, b, strict=True) for f in range(3)]
        sel = mul(blocks, [bit for bit in bits for _ in range(3)], diffs, WIDE_MUL)
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


def class_cts(lay: nb.Layout) -> list[int]:
    """Indices of the packed ciphertexts that hold the class counts (all leaves need)."""
    first, last = lay.class_count(0) // lay.count_slots, lay.class_count(lay.classes - 1) // lay.count_slots
    return list(range(first, last + 1))


def unpack_counts(blocks: Blocks, lay: nb.Layout, parts: list[list[tuple[dtpkc.PublicKey, list[dtpkc.Ciphertext]]]],
                  which: Sequence[int]) -> list[dict[int, dtpkc.Ciphertext]]:
    """Per node, {cell: system-key encryption of its count} for the cells of the packed ciphertexts ``which``
    (each node's parts hold those ciphertexts, one list per owner, summed over the owners)."""
    p = blocks.params
    width = len(which) * lay.count_slots
    items, masks = [], []
    for node in parts:
        for pk, cts in node:
            m = [secrets.randbelow(1 << (nb.COUNT_BITS + codec.KAPPA)) for _ in range(width)]
            pool = blocks.pool(pk)
            items += [pool.rerandomize(dtpkc.add_plain(p, ct, codec.pack(ch, lay.count_width)))
                      for ct, ch in zip(cts, codec.chunks(m, lay.count_slots), strict=True)]
            masks.append(m)
    body = {"items": blocks.open_items(items), "width": lay.count_width, "slots": lay.count_slots, "count": width}
    flat = codec.cts_from_bytes(p, blocks.link.request("dt.unpack", body)["cts"])
    if len(flat) != width * len(masks):
        raise ProtocolError("SU returned the wrong number of count cells")
    cells = [w * lay.count_slots + s for w in which for s in range(lay.count_slots)]
    out, k = [], 0
    for node in parts:
        acc: dict[int, dtpkc.Ciphertext] = {}
        for _ in node:
            for i, cell in enumerate(cells):
                ct = dtpkc.add_plain(p, flat[k * width + i], -masks[k][i])
                acc[cell] = dtpkc.add(p, acc[cell], ct) if cell in acc else ct
            k += 1
        out.append(acc)
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
              which: Sequence[int]) -> list[list[list[dtpkc.Ciphertext]]]:
    """Per node and owner: [sum_i bit_i * cells_i] over the packed ciphertexts ``which`` (bits[node][record],
    records numbered over all owners in order).

    Per record MU draws a coin and sends SU e = bit XOR coin (opened, uniform) with D = re-randomized [cells]
    if coin = 0 or [-cells] if coin = 1; SU returns the re-randomized sum of the D with e = 1, which is
    sum_i bit_i cells_i - sum_{coin_i = 1} cells_i; MU adds the second sum back."""
    p, width = blocks.params, len(which)
    groups, fixes, shape = [], [], []
    for node_bits in bits:
        offset = 0
        for owner in owners:
            pool = blocks.pool(owner.pk)
            blinded, sent = [], []
            fix: list[dtpkc.Ciphertext] | None = None
            for i, record in enumerate(owner.cells):
                cells = [record[w] for w in which]
                coin = secrets.randbits(1)
                bit = node_bits[offset + i]
                x = dtpkc.add_plain(p, dtpkc.negate(p, bit), 1) if coin else bit
                blinded.append(blocks.system_pool.rerandomize(x))
                if coin:
                    fix = cells if fix is None else [dtpkc.add(p, f, c) for f, c in zip(fix, cells, strict=True)]
                    cells = [dtpkc.negate(p, c) for c in cells]
                sent.append([codec.ct_to_bytes(p, pool.rerandomize(c)) for c in cells])
            offset += len(owner.cells)
            groups.append({"key": codec.key_id(owner.pk), "bits": blocks.open_items(blinded), "cts": sent})
            fixes.append(fix)
        shape.append(len(owners))
    reply = codec.cts_from_bytes(p, blocks.link.request("dt.pick", {"groups": groups, "width": width})["cts"])
    if len(reply) != width * len(groups):
        raise ProtocolError("SU returned the wrong number of sums")
    sums = []
    for g, fix in enumerate(fixes):
        part = reply[g * width:(g + 1) * width]
        sums.append(part if fix is None else [dtpkc.add(p, a, f) for a, f in zip(part, fix, strict=True)])
    out, k = [], 0
    for n in shape:
        out.append(sums[k:k + n])
        k += n
    return out


def _reveal(blocks: Blocks, cts: Sequence[dtpkc.Ciphertext], bound: int) -> list[int]:
    body = {"items": blocks.open_items(list(cts)), "bound": bound}
    values = blocks.link.request("dt.reveal", body)["result"]["values"]
    if len(values) != len(cts) or any(type(v) is not int or not 0 <= v < bound for v in values):
        raise ProtocolError("SU revealed malformed split indices")
    return values


def _split_entries(blocks: Blocks, lay: nb.Layout, cells: dict[int, dtpkc.Ciphertext]) -> list[Entry]:
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
    sq = mul(blocks, xs + ln, xs + rn, COUNT_MUL)
    den = sq[len(xs):]
    per = 2 * lay.classes
    a = [dtpkc.sum_ciphertexts(p, sq[k * per:k * per + lay.classes]) for k in range(len(cands))]
    b = [dtpkc.sum_ciphertexts(p, sq[k * per + lay.classes:(k + 1) * per]) for k in range(len(cands))]
    nums = mul(blocks, a + b, rn + ln, NUM_MUL)
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
    every, leaf_cts = list(range(lay.cts_per_record)), class_cts(lay)
    pks = [o.pk for o in owners]
    for level in range(depth):
        nodes = list(range(1 << level, 1 << (level + 1)))
        cells = unpack_counts(blocks, lay, [list(zip(pks, counts[k], strict=True)) for k in nodes], every)
        entries = [_split_entries(blocks, lay, c) for c in cells]
        winners = _reveal(blocks, tournament(blocks, entries), len(cands))
        for k, w in zip(nodes, winners, strict=True):
            splits[k] = cands[w]
        conds = select_conditions(blocks, lay, all_bins, keys, [splits[k] for k in nodes])
        lefts = []
        for n, k in enumerate(nodes):
            col = [row[n] for row in conds]
            lefts.append(col if reach[k] is None else mul(blocks, reach[k], col, 2))  # type: ignore[arg-type]
        which = leaf_cts if level == depth - 1 else every  # leaves need only the class counts
        sums = pick_sums(blocks, owners, lefts, which)
        for n, k in enumerate(nodes):
            parent = reach[k]
            reach[2 * k] = lefts[n]
            reach[2 * k + 1] = [dtpkc.add_plain(p, dtpkc.negate(p, x), 1) if parent is None else dtpkc.sub(p, r, x)
                                for x, r in zip(lefts[n], parent or lefts[n], strict=True)]
            counts[2 * k] = sums[n]
            counts[2 * k + 1] = [[dtpkc.sub(p, par[w], y) for w, y in zip(which, left, strict=True)]
                                 for par, left in zip(counts[k], sums[n], strict=True)]
        if progress:
            progress("level", level + 1, depth)
    leaves = list(range(1 << depth, 1 << (depth + 1)))
    cells = unpack_counts(blocks, lay, [list(zip(pks, counts[k], strict=True)) for k in leaves], leaf_cts)
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
        prods = mul(blocks, bits, diffs, COUNT_MUL)
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
