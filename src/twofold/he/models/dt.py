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
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import gmpy2
from gmpy2 import mpz

from twofold.crypto import dtpkc
from twofold.errors import InputError, ProtocolError
from twofold.he import codec
from twofold.he.blocks import Blocks, log_uniform
from twofold.he.models import nb
from twofold.he.randomness import PairPool

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


# ------------------------------------------------------------------------------------- T1-only arithmetic
#
# Every ciphertext of a Priv-DT training run that MU or SU makes (system-key cells, products, conditions, reach
# bits, leaf labels; owner-key counts on their way to SU) is opened only by the two-server decryption, which
# reads T1 alone. They are kept T1-only (T2 = 1, as Priv-LR's, see fastexp): h^r (1 + mN) with r uniform mod N,
# a Paillier-type ciphertext. That halves every exponentiation, and one precomputed pair serves one fresh h^r.


def t1_enc(pool: PairPool, m: int) -> dtpkc.Ciphertext:
    """Fresh Enc(m mod N), T1 only (h^r from the pool, never reused, or computed on the spot)."""
    p = pool.params
    return dtpkc.Ciphertext(pool.take_h() * (1 + (int(m) % int(p.n)) * p.n) % p.n_sq, 1)


def t1_rerand(pool: PairPool, ct: dtpkc.Ciphertext) -> dtpkc.Ciphertext:
    """Same plaintext, fresh randomness, T1 only."""
    return dtpkc.Ciphertext(ct.t1 * pool.take_h() % pool.params.n_sq, 1)


def _plain(p: dtpkc.PublicParams, ct: dtpkc.Ciphertext, m: int) -> dtpkc.Ciphertext:
    """[x + m], T1 only, not re-randomized."""
    return dtpkc.Ciphertext(ct.t1 * (1 + (int(m) % int(p.n)) * p.n) % p.n_sq, 1)


def _pack(p: dtpkc.PublicParams, cts: Sequence[dtpkc.Ciphertext], width: int, plain: int = 0) -> dtpkc.Ciphertext:
    """[sum_i x_i 2^(width i) + plain] (T1 only) by Horner's rule: ``width`` squarings per input."""
    acc, shift = cts[-1].t1, mpz(1) << width
    for ct in reversed(cts[:-1]):
        acc = gmpy2.powmod(acc, shift, p.n_sq) * ct.t1 % p.n_sq
    return _plain(p, dtpkc.Ciphertext(acc, 1), plain)


# --------------------------------------------------------------------------------------- encrypted helpers


Entry = tuple[dtpkc.Ciphertext, dtpkc.Ciphertext, dtpkc.Ciphertext]  # numerator, denominator, payload
COUNT_MUL = nb.COUNT_BITS + 2  # operands of the first products: counts + 1
NUM_MUL = 2 * nb.COUNT_BITS + 8  # sums of squared counts
WIDE_MUL = 3 * nb.COUNT_BITS + 12  # numerators, differences in the tournament


def mul(blocks: Blocks, a: Sequence[dtpkc.Ciphertext], b: Sequence[dtpkc.Ciphertext],
        bits: int) -> list[dtpkc.Ciphertext]:
    """[a*b] (system key, T1 only) for signed |a|, |b| < 2^bits, with statistical masks and packed operands
    (``dt.mul``): SU sees a + r, b + s with r, s uniform on [2^bits, 2^bits + 2^(bits+40)) (positive, within
    statistical distance 2^-40 of independent of a, b), packed bits + 41 bits per slot so that one PSDec opens
    many operands; it returns a fresh encryption of every product and MU removes the masks' terms."""
    if len(a) != len(b):
        raise ValueError("operands differ in length")
    if not a:
        return []
    p, pool = blocks.params, blocks.system_pool
    width = bits + codec.KAPPA + 1
    slots = codec.slots_per_ct(p, width)
    if 2 * width + 2 >= p.bits:
        raise ValueError("operands too wide for the statistical masks")
    ops = [x for pair in zip(a, b, strict=True) for x in pair]
    masks = [(1 << bits) + secrets.randbelow(1 << (bits + codec.KAPPA)) for _ in ops]
    packed = _pmap(blocks, lambda i: _pack(p, ops[i:i + slots], width, codec.pack(masks[i:i + slots], width)),
                   range(0, len(ops), slots))
    body = {"items": blocks.open_items([t1_rerand(pool, c) for c in packed]), "width": width, "count": len(ops)}
    z = codec.cts_from_bytes(p, blocks.link.request("dt.mul", body)["cts"])
    if len(z) != len(a):
        raise ProtocolError("SU returned the wrong number of products")
    n_sq = p.n_sq

    def correct(k: int) -> dtpkc.Ciphertext:
        r, t = masks[2 * k], masks[2 * k + 1]  # (a + r)(b + t) - t a - r b - r t = a b
        v = z[k].t1 * gmpy2.powmod(gmpy2.invert(a[k].t1, n_sq), t, n_sq) % n_sq
        v = v * gmpy2.powmod(gmpy2.invert(b[k].t1, n_sq), r, n_sq) % n_sq
        return _plain(p, dtpkc.Ciphertext(v, 1), -r * t)

    return _pmap(blocks, correct, range(len(z)))


def _pmap(blocks: Blocks, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``fn`` over ``items`` on the blocks' threads (gmpy2's powmod releases the GIL on long operands)."""
    if blocks.threads <= 1 or len(items) < 8:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=blocks.threads) as ex:
        return list(ex.map(fn, items, chunksize=max(1, len(items) // (4 * blocks.threads))))


def _blind_compare(blocks: Blocks, a: Sequence[dtpkc.Ciphertext], b: Sequence[dtpkc.Ciphertext],
                   bound_bits: int) -> tuple[list[dtpkc.Ciphertext], list[int]]:
    """The comparison block's blinding (T1 only): per pair a secret orientation ``flip`` and the ciphertext of
    r1 (a - b) + r2 (flip 0) or r1 (b - a) - r2 (flip 1), r1 log-uniform, 1 <= r2 < r1; its sign is [a >= b]
    XOR flip. The long exponentiations run on the blocks' threads."""
    p, pool = blocks.params, blocks.system_pool
    n_sq = p.n_sq
    max_shift = p.bits - 2 - bound_bits - 64 - 2
    plans = []
    for x, y in zip(a, b, strict=True):
        r1 = log_uniform(max_shift)
        r2 = secrets.randbelow(r1 - 1) + 1
        flip = secrets.randbits(1)
        diff = (y.t1 * gmpy2.invert(x.t1, n_sq) if flip else x.t1 * gmpy2.invert(y.t1, n_sq)) % n_sq
        plans.append((diff, r1, -r2 if flip else r2, flip))
    powers = _pmap(blocks, lambda plan: gmpy2.powmod(plan[0], plan[1], n_sq), plans)
    blinded = [t1_rerand(pool, _plain(p, dtpkc.Ciphertext(v, 1), plan[2])) for v, plan in zip(powers, plans,
                                                                                              strict=True)]
    return blinded, [plan[3] for plan in plans]


def duel(blocks: Blocks, a: Sequence[dtpkc.Ciphertext], b: Sequence[dtpkc.Ciphertext], bound_bits: int,
         first: Sequence[Sequence[dtpkc.Ciphertext]],
         second: Sequence[Sequence[dtpkc.Ciphertext]]) -> list[list[dtpkc.Ciphertext]]:
    """Per pair, re-randomized copies of ``first`` if a >= b, else of ``second`` (``dt.duel``), the comparison
    outcome staying hidden from both servers. MU blinds a - b as the comparison block does and sends the two
    candidates re-randomized in the order of its secret orientation (``first`` leads iff flip = 0); SU sees the
    sign of the blinded value, a fair coin, and returns the fresh re-randomization of the candidate in front
    if the sign is non-negative, of the other one otherwise: always the winner, which MU cannot tell apart
    from the loser and SU cannot link to either input."""
    p, pool = blocks.params, blocks.system_pool
    blinded, flips = _blind_compare(blocks, a, b, bound_bits)
    width = len(first[0]) if first else 0
    entries = []
    for x, y, flip in zip(first, second, flips, strict=True):
        if len(x) != width or len(y) != width:
            raise ValueError("candidates differ in size")
        front, back = (y, x) if flip else (x, y)
        entries.append([codec.ct_to_bytes(p, t1_rerand(pool, c)) for c in (*front, *back)])
    body = {"items": blocks.open_items(blinded), "entries": entries, "width": width}
    out = codec.cts_from_bytes(p, blocks.link.request("dt.duel", body)["cts"])
    if len(out) != width * len(flips):
        raise ProtocolError("SU returned the wrong number of winners")
    return [out[k * width:(k + 1) * width] for k in range(len(flips))]


def tournament(blocks: Blocks, groups: list[list[Entry]]) -> list[dtpkc.Ciphertext]:
    """Encrypted payload of the entry with the largest num/den in each group (ties: the earlier entry wins).
    Per round, one multiplication round trip for the cross products and one ``dt.duel`` round trip."""
    groups = [list(g) for g in groups]
    while any(len(g) > 1 for g in groups):
        pairs = [(gi, i) for gi, g in enumerate(groups) for i in range(0, len(g) - 1, 2)]
        a = [groups[gi][i] for gi, i in pairs]
        b = [groups[gi][i + 1] for gi, i in pairs]
        prods = mul(blocks, [x[0] for x in a] + [y[0] for y in b], [y[1] for y in b] + [x[1] for x in a], WIDE_MUL)
        winners = duel(blocks, prods[: len(a)], prods[len(a):], BOUND_BITS, a, b)
        new: list[list[Entry]] = []
        k = 0
        for g in groups:
            row = []
            for _ in range(len(g) // 2):
                row.append(tuple(winners[k]))
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
            items += [t1_rerand(pool, _plain(p, ct, codec.pack(ch, lay.count_width)))
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
                ct = _plain(p, flat[k * width + i], -masks[k][i])
                acc[cell] = dtpkc.add(p, acc[cell], ct) if cell in acc else ct
            k += 1
        out.append(acc)
    return out


def select_conditions(blocks: Blocks, lay: nb.Layout, bins: Sequence[Sequence[dtpkc.Ciphertext]],
                      keys: Sequence[dtpkc.PublicKey],
                      splits: Sequence[tuple[int, int]]) -> list[list[dtpkc.Ciphertext]]:
    """[bins_j <= t] under the system key for every packed bin vector (a query) and every split (j, t)."""
    p, spool = blocks.params, blocks.system_pool
    items = []
    for q, pk in zip(bins, keys, strict=True):
        if len(q) != lay.q_cts:
            raise InputError(f"packed bins must have {lay.q_cts} ciphertexts")
        shifts = [secrets.randbelow(lay.bins) for _ in range(lay.features)]
        masks = [s + lay.bins * secrets.randbelow(1 << codec.KAPPA) for s in shifts]
        pool = blocks.pool(pk)
        blinded = [t1_rerand(pool, _plain(p, ct, codec.pack(ch, lay.qwidth)))
                   for ct, ch in zip(q, codec.chunks(masks, lay.q_slots), strict=True)]
        sel = [{"feature": j, "table": [codec.ct_to_bytes(p, t1_enc(spool, int((k - shifts[j]) % lay.bins <= t)))
                                        for k in range(lay.bins)]} for j, t in splits]
        items.append({"q": blocks.open_items(blinded), "sel": sel})
    body = {"items": items, "qwidth": lay.qwidth, "bins": lay.bins, "features": lay.features}
    flat = codec.cts_from_bytes(p, blocks.link.request("dt.select", body)["cts"])
    if len(flat) != len(bins) * len(splits):
        raise ProtocolError("SU returned the wrong number of selections")
    return [flat[i * len(splits):(i + 1) * len(splits)] for i in range(len(bins))]


def select_columns(blocks: Blocks, lay: nb.Layout, owners: Sequence[OwnerRecords], splits: Sequence[tuple[int, int]],
                   reach: Sequence[Sequence[dtpkc.Ciphertext]] | None = None) -> list[list[dtpkc.Ciphertext]]:
    """Training's selection, per split n and record i (numbered over all owners in order): [bins_ij <= t] under
    the system key, or with ``reach`` [reach_ni and bins_ij <= t] (table entries: re-randomized [reach] where
    the condition holds, fresh [0] elsewhere). Each packed column ciphertext of a split's feature is blinded
    slot-wise with fresh rotations s_r + B * R_r and opened once (``dt.select`` with the record's slot in place
    of the feature), serving every split of the level on that feature; B fresh table entries per (record,
    split)."""
    p, spool, b = blocks.params, blocks.system_pool, lay.bins
    items, order = [], []
    offset = 0
    for owner in owners:
        pool = blocks.pool(owner.pk)
        for count, cols in owner.bins:
            for j in sorted({j for j, _ in splits}):
                for g, ct in enumerate(cols[j]):
                    first = g * lay.q_slots
                    shifts = [secrets.randbelow(b) for _ in range(min(lay.q_slots, count - first))]
                    masks = [s + b * secrets.randbelow(1 << codec.KAPPA) for s in shifts]
                    blinded = t1_rerand(pool, _plain(p, ct, codec.pack(masks, lay.qwidth)))
                    sel = []
                    for r, shift in enumerate(shifts):
                        for n, (jj, t) in enumerate(splits):
                            if jj != j:
                                continue
                            i = offset + first + r
                            table = []
                            for k in range(b):
                                hit = (k - shift) % b <= t
                                if reach is None:
                                    entry = t1_enc(spool, int(hit))
                                else:
                                    entry = t1_rerand(spool, reach[n][i]) if hit else t1_enc(spool, 0)
                                table.append(codec.ct_to_bytes(p, entry))
                            sel.append({"feature": r, "table": table})
                            order.append((n, i))
                    items.append({"q": blocks.open_items([blinded]), "sel": sel})
            offset += count
    body = {"items": items, "qwidth": lay.qwidth, "bins": b, "features": lay.q_slots}
    flat = codec.cts_from_bytes(p, blocks.link.request("dt.select", body)["cts"])
    if len(flat) != len(order) or len(order) != offset * len(splits):
        raise ProtocolError("SU returned the wrong number of selections")
    out: list[list[dtpkc.Ciphertext | None]] = [[None] * offset for _ in splits]
    for (n, i), ct in zip(order, flat, strict=True):
        out[n][i] = ct
    return out  # type: ignore[return-value]


def pick_sums(blocks: Blocks, owners: Sequence[OwnerRecords], bits: Sequence[Sequence[dtpkc.Ciphertext]],
              which: Sequence[int]) -> list[list[list[dtpkc.Ciphertext]]]:
    """Per node and owner: [sum_i bit_i * cells_i] over the packed ciphertexts ``which`` (bits[node][record],
    records numbered over all owners in order).

    Per record MU draws a coin and sends SU e = bit XOR coin (opened, uniform; packed one bit per slot, so one
    PSDec opens up to bits - 2 of them) with D = re-randomized [cells] if coin = 0 or [-cells] if coin = 1; SU
    returns the re-randomized sum of the D with e = 1, which is sum_i bit_i cells_i - sum_{coin_i = 1} cells_i;
    MU adds the second sum back."""
    p, width, spool = blocks.params, len(which), blocks.system_pool
    per = codec.slots_per_ct(p, 1)
    groups, fixes, shape = [], [], []
    for node_bits in bits:
        offset = 0
        for owner in owners:
            pool = blocks.pool(owner.pk)
            xs, sent = [], []
            fix: list[dtpkc.Ciphertext] | None = None
            for i, record in enumerate(owner.cells):
                cells = [record[w] for w in which]
                coin = secrets.randbits(1)
                bit = node_bits[offset + i]
                xs.append(_plain(p, dtpkc.negate(p, bit), 1) if coin else bit)
                if coin:
                    fix = cells if fix is None else [dtpkc.add(p, f, c) for f, c in zip(fix, cells, strict=True)]
                    cells = [dtpkc.negate(p, c) for c in cells]
                sent.append([codec.ct_to_bytes(p, t1_rerand(pool, c)) for c in cells])
            offset += len(owner.cells)
            packed = [t1_rerand(spool, _pack(p, xs[k:k + per], 1)) for k in range(0, len(xs), per)]
            groups.append({"key": codec.key_id(owner.pk), "bits": blocks.open_items(packed), "cts": sent})
            fixes.append(fix)
        shape.append(len(owners))
    body = {"groups": groups, "width": width, "slots": per}
    reply = codec.cts_from_bytes(p, blocks.link.request("dt.pick", body)["cts"])
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
    ln = [_plain(p, dtpkc.sum_ciphertexts(p, x), 1) for x in lefts]  # L + 1
    rn = [_plain(p, dtpkc.sum_ciphertexts(p, x), 1) for x in rights]  # R + 1
    xs = [v for x, y in zip(lefts, rights, strict=True) for v in x + y]
    sq = mul(blocks, xs + ln, xs + rn, COUNT_MUL)
    den = sq[len(xs):]
    per = 2 * lay.classes
    a = [dtpkc.sum_ciphertexts(p, sq[k * per:k * per + lay.classes]) for k in range(len(cands))]
    b = [dtpkc.sum_ciphertexts(p, sq[k * per + lay.classes:(k + 1) * per]) for k in range(len(cands))]
    nums = mul(blocks, a + b, rn + ln, NUM_MUL)
    return [(dtpkc.add(p, nums[k], nums[len(cands) + k]), den[k], t1_enc(spool, k)) for k in range(len(cands))]


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
        entries = _timed(timer, "split_entries", lambda cells=cells: [_split_entries(blocks, lay, c) for c in cells])
        best = _timed(timer, "tournament", lambda entries=entries: tournament(blocks, entries))
        winners = _timed(timer, "reveal", lambda best=best: _reveal(blocks, best, len(cands)))
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
    counts = [[sum(1 for _, y in members[k] if y == c) for c in range(lay.classes)]
              for k in range(1 << depth, 1 << (depth + 1))]
    return {"depth": depth, "splits": [list(splits[k]) for k in range(1, 1 << depth)], "counts": counts,
            "labels": [_majority(c) for c in counts]}


def _majority(counts: Sequence[int]) -> int:
    return _tournament_plain([[(n, 1, c) for c, n in enumerate(counts)]])[0]


def _leaf_index(schema: nb.Schema, tree: dict[str, Any], row: Sequence[float]) -> int:
    bins = schema.bin_row(row)
    k = 1
    for _ in range(tree["depth"]):
        j, t = tree["splits"][k - 1]
        k = 2 * k if bins[j] <= t else 2 * k + 1
    return k - (1 << tree["depth"])


def reference_update(schema: nb.Schema, tree: dict[str, Any], rows: Sequence[Sequence[float]],
                     labels: Sequence[str]) -> dict[str, Any]:
    """The plaintext online update: the same splits, the new records' class counts added to their leaves, every
    leaf's majority class recomputed (ties to the lower class)."""
    counts = [list(c) for c in tree["counts"]]
    for row, y in zip(rows, labels, strict=True):
        counts[_leaf_index(schema, tree, row)][schema.class_index(y)] += 1
    return dict(tree, counts=counts, labels=[_majority(c) for c in counts])


def reference_predict(schema: nb.Schema, tree: dict[str, Any], row: Sequence[float]) -> int:
    return tree["labels"][_leaf_index(schema, tree, row)]
