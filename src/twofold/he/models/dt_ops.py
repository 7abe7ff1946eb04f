"""Priv-DT's encrypted operations: T1-only arithmetic, packed multiplication, duels and tournaments, count
unpacking, selection of reach bits and picking of counts (see :mod:`twofold.he.models.dt` for the protocol)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import gmpy2
from gmpy2 import mpz

from twofold.crypto import dtpkc
from twofold.errors import InputError, ProtocolError
from twofold.he import codec
from twofold.he.blocks import Blocks, log_uniform
from twofold.he.models import nb
from twofold.he.models.dt_format import BOUND_BITS, OwnerRecords, candidates
from twofold.he.randomness import PairPool

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


def reveal(blocks: Blocks, cts: Sequence[dtpkc.Ciphertext], bound: int) -> list[int]:
    body = {"items": blocks.open_items(list(cts)), "bound": bound}
    values = blocks.link.request("dt.reveal", body)["result"]["values"]
    if len(values) != len(cts) or any(type(v) is not int or not 0 <= v < bound for v in values):
        raise ProtocolError("SU revealed malformed split indices")
    return values


def split_entries(blocks: Blocks, lay: nb.Layout, cells: dict[int, dtpkc.Ciphertext]) -> list[Entry]:
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
