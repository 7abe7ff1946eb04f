"""MU's side of the interactive building blocks, batched: one SU round trip carries a whole list.

Each block blinds its inputs with fresh randomness from :mod:`secrets`, partially decrypts (PSDec1), lets SU
finish the decryption and compute on the blinded values, and removes the blinding homomorphically. What MU and
SU each see is listed in docs/he.md (leakage table).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence

from twofold.crypto import dtpkc
from twofold.errors import ProtocolError
from twofold.he import codec
from twofold.he.randomness import KeyPools, PairPool
from twofold.he.transport import Channel, LinkPool


def log_uniform(max_shift: int) -> int:
    """A random factor 2^(63 + U + u): U uniform in [0, max_shift], u uniform in [0, 1) (log-uniform mantissa).

    So log2 of the factor is uniform on [63, 64 + max_shift) and multiplying a value x by it hides log2 x up
    to a statistical distance of |log2 x - log2 x'| / (max_shift + 1). The 11 low mantissa bits are random.
    """
    if max_shift < 0:
        raise ValueError("no room for the blinding factor")
    u = secrets.randbits(53) / (1 << 53)
    mantissa = (int(math.exp2(u) * (1 << 52)) << 11) | secrets.randbits(11)  # in [2^63, 2^64)
    return mantissa << secrets.randbelow(max_shift + 1)


class Blocks:
    """Building blocks run by MU against an SU link."""

    def __init__(self, link: Channel | LinkPool, share1: dtpkc.StrongKeyShare, system_pool: PairPool, *,
                 threads: int = 2, pools: KeyPools | None = None) -> None:
        if share1.role != 1:
            raise ValueError("MU needs the role-1 share")
        self.link = link
        self.share = share1
        self.params = share1.params
        self.system_pool = system_pool
        self.system_pk = system_pool.pk
        self.threads = threads
        # per-key pools (fixed-base tables and their pairs) may outlive one request: ``pools`` is shared
        self._pools = pools if pools is not None else KeyPools()
        self._system_key = codec.key_id(self.system_pk)

    def pool(self, pk: dtpkc.PublicKey | None) -> PairPool:
        key = None if pk is None else codec.key_id(pk)
        if pk is None or key == self._system_key:
            return self.system_pool
        return self._pools.get(key, lambda: PairPool(pk, g_table=self.system_pool.g_table))

    def open_items(self, cts: Sequence[dtpkc.Ciphertext]) -> list[list[bytes]]:
        """(ct, PSDec1(ct)) pairs ready for SU."""
        return codec.pair_items(self.params, cts, codec.psdec1_many(self.share, cts, self.threads))

    def _cts(self, reply: dict) -> list[dtpkc.Ciphertext]:
        return codec.cts_from_bytes(self.params, reply["cts"])

    def _expect(self, got: list, n: int) -> list:
        if len(got) != n:
            raise ProtocolError(f"SU returned {len(got)} ciphertexts, expected {n}")
        return got

    # ------------------------------------------------------------------------------------------ the blocks

    def key_switch(self, cts: Sequence[dtpkc.Ciphertext], target: dtpkc.PublicKey,
                   source: dtpkc.PublicKey | None = None) -> list[dtpkc.Ciphertext]:
        """[x]_source -> [x]_target: SU sees x + r with r uniform mod N, MU subtracts Enc_target(r)."""
        n = int(self.params.n)
        src = self.pool(source)
        masks = [secrets.randbelow(n) for _ in cts]
        blinded = [src.rerandomize(dtpkc.add_plain(self.params, c, r)) for c, r in zip(cts, masks, strict=True)]
        body = {"target": codec.key_id(target), "items": self.open_items(blinded)}
        reply = self.link.request("su.key_switch", body)
        out = self._expect(self._cts(reply), len(cts))
        tgt = self.pool(target)
        return [tgt.rerandomize(dtpkc.add_plain(self.params, c, -r)) for c, r in zip(out, masks, strict=True)]

    def mul(self, a: Sequence[dtpkc.Ciphertext], b: Sequence[dtpkc.Ciphertext]) -> list[dtpkc.Ciphertext]:
        """[a], [b] -> [a*b mod N] under the system key: SU sees a + r and b + s (r, s uniform mod N)."""
        if len(a) != len(b):
            raise ValueError("operands differ in length")
        p, n = self.params, int(self.params.n)
        rs = [(secrets.randbelow(n), secrets.randbelow(n)) for _ in a]
        blinded = []
        for x, y, (r, s) in zip(a, b, rs, strict=True):
            blinded += [self.system_pool.rerandomize(dtpkc.add_plain(p, x, r)),
                        self.system_pool.rerandomize(dtpkc.add_plain(p, y, s))]
        items = self.open_items(blinded)
        reply = self.link.request("su.mul", {"items": [items[i] + items[i + 1] for i in range(0, len(items), 2)]})
        out = []
        for z, x, y, (r, s) in zip(self._expect(self._cts(reply), len(a)), a, b, rs, strict=True):
            # (a + r)(b + s) - s*a - r*b - r*s = a*b
            z = dtpkc.sub(p, z, dtpkc.scalar_mul(p, x, s))
            z = dtpkc.sub(p, z, dtpkc.scalar_mul(p, y, r))
            out.append(self.system_pool.rerandomize(dtpkc.add_plain(p, z, -r * s)))
        return out

    def compare(self, a: Sequence[dtpkc.Ciphertext], b: Sequence[dtpkc.Ciphertext], bound_bits: int,
                target: dtpkc.PublicKey | None = None) -> list[dtpkc.Ciphertext]:
        """[a >= b] (0 or 1) for signed a, b with |a - b| < 2^bound_bits, under ``target`` (default: system).

        Each comparison has a random orientation, so SU sees the sign of r1*(a - b) + r2 or of r1*(b - a) - r2
        and cannot tell which; r1 is log-uniform, so |a - b| is hidden up to a statistical leak (docs/he.md).
        """
        p = self.params
        max_shift = p.bits - 2 - bound_bits - 64 - 2
        plans, blinded = [], []
        for x, y in zip(a, b, strict=True):
            r1 = log_uniform(max_shift)
            r2 = secrets.randbelow(r1 - 1) + 1
            flip = secrets.randbits(1)
            diff = dtpkc.sub(p, y, x) if flip else dtpkc.sub(p, x, y)
            v = dtpkc.add_plain(p, dtpkc.scalar_mul(p, diff, r1), -r2 if flip else r2)
            blinded.append(self.system_pool.rerandomize(v))
            plans.append(flip)
        key = codec.key_id(target) if target is not None else b""
        reply = self.link.request("su.compare", {"target": key, "items": self.open_items(blinded)})
        tgt = self.pool(target)
        out = []
        for bit, flip in zip(self._expect(self._cts(reply), len(plans)), plans, strict=True):
            out.append(tgt.rerandomize(dtpkc.add_plain(p, dtpkc.negate(p, bit), 1) if flip else bit))
        return out

    def log(self, cts: Sequence[dtpkc.Ciphertext], value_bits: int, frac_bits: int = 16) -> list[dtpkc.Ciphertext]:
        """[x] -> [round(ln(x) * 2^frac_bits)] for integers 1 <= x < 2^value_bits (error at most 2 units).

        SU sees x * R + e with R log-uniform over about (bits - value_bits - 70) octaves and e < R / 2^23.
        """
        p = self.params
        vwidth = p.bits - 2
        max_shift = vwidth - value_bits - 64 - 4
        factors, blinded = [], []
        for ct in cts:
            big_r = log_uniform(max_shift)
            noise = secrets.randbelow(max(1, big_r >> 24))
            v = dtpkc.add(p, dtpkc.scalar_mul(p, ct, big_r), self.system_pool.encrypt(noise))
            blinded.append(self.system_pool.rerandomize(v))
            factors.append(big_r)
        body = {"groups": self.open_items(blinded), "gids": list(range(len(cts))), "group": 1, "vwidth": vwidth,
                "frac": frac_bits, "width": p.bits - 2, "offset": 0,
                "outputs": [[[[i, 1]]] for i in range(len(cts))]}
        out = self._expect(self._cts(self.link.request("su.log_pack", body)), len(cts))
        scale = 1 << frac_bits
        return [dtpkc.add_plain(p, c, -round(math.log(f) * scale)) for c, f in zip(out, factors, strict=True)]

    def pack(self, cts: Sequence[dtpkc.Ciphertext], width: int) -> dtpkc.Ciphertext:
        """Horner packing: [sum_i x_i 2^(width*i)] from [x_i] (about width squarings per input)."""
        p = self.params
        acc = cts[-1]
        for ct in reversed(cts[:-1]):
            acc = dtpkc.add(p, dtpkc.scalar_mul(p, acc, 1 << width), ct)
        return acc

    def argmax_packed(self, packed: Sequence[dtpkc.Ciphertext], rotations: Sequence[int], classes: int, width: int,
                      score_bits: int, target: dtpkc.PublicKey) -> list[dtpkc.Ciphertext]:
        """[argmax] under ``target`` from packed, non-negative scores whose slot c holds class (c + rotation) % C.

        MU blinds every slot with the same fresh a * s + b (a log-uniform, 0 <= b < a), so SU learns only the
        position of the maximum in an order rotated by a secret amount, and returns a one-hot under ``target``.
        """
        p = self.params
        max_shift = width - score_bits - 64 - 2
        ones = codec.pack([1] * classes, width)
        blinded = []
        for ct in packed:
            a = log_uniform(max_shift)
            b = secrets.randbelow(a)
            blinded.append(self.system_pool.rerandomize(dtpkc.add_plain(p, dtpkc.scalar_mul(p, ct, a), b * ones)))
        body = {"target": codec.key_id(target), "classes": classes, "width": width,
                "items": self.open_items(blinded)}
        onehots = self._expect(self._cts(self.link.request("su.argmax", body)), classes * len(packed))
        tgt = self.pool(target)
        out = []
        for q, rot in enumerate(rotations):
            acc = tgt.encrypt(0)
            for k in range(classes):
                label = (k + rot) % classes
                if label:
                    acc = dtpkc.add(p, acc, dtpkc.scalar_mul(p, onehots[q * classes + k], label))
            out.append(acc)
        return out

    def argmax(self, scores: Sequence[Sequence[dtpkc.Ciphertext]], score_bits: int,
               target: dtpkc.PublicKey) -> list[dtpkc.Ciphertext]:
        """[argmax_c s_c] under ``target`` for each list of non-negative encrypted scores s_c < 2^score_bits."""
        classes = len(scores[0])
        width = (self.params.bits - 2) // classes
        rotations, packed = [], []
        for row in scores:
            if len(row) != classes:
                raise ValueError("every item needs the same number of scores")
            rot = secrets.randbelow(classes)
            packed.append(self.pack([row[(c + rot) % classes] for c in range(classes)], width))
            rotations.append(rot)
        return self.argmax_packed(packed, rotations, classes, width, score_bits, target)
