"""Precomputed encryption randomness: pairs (h^r, g^r) made offline, each used exactly once.

A :class:`PairPool` serves encryptions and re-randomizations of one public key from a deque of pairs. It can
be refilled synchronously or by a background worker process (``start_background``), which keeps the pool near
a target size (refilling once it falls below half of it) so that online work pays one multiplication per
encryption. When the pool runs dry it computes
a fresh pair on the spot; a pair is never reused.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable

from gmpy2 import mpz

from twofold.crypto import dtpkc
from twofold.he.offline import OfflineValues

_WORKER: dict[str, object] = {}


def _worker_init(h: int, g: int, n_sq: int, bits: int) -> None:
    _WORKER["h"] = dtpkc.FixedBaseTable(h, n_sq, bits)
    _WORKER["g"] = dtpkc.FixedBaseTable(g, n_sq, bits)
    _WORKER["n"] = None


def _worker_pairs(count: int, n: int) -> list[tuple[int, int]]:
    h, g = _WORKER["h"], _WORKER["g"]
    out = []
    for _ in range(count):
        r = secrets.randbelow(n - 1) + 1
        out.append((int(h.pow(r)), int(g.pow(r))))  # type: ignore[attr-defined]
    return out


class PairPool(OfflineValues):
    """Encryption under one public key from precomputed pairs (thread safe)."""

    low_water = True  # online work has the cores until half the pool is used

    def __init__(self, pk: dtpkc.PublicKey, *, g_table: dtpkc.FixedBaseTable | None = None) -> None:
        super().__init__()
        self.pk = pk
        self.params = pk.params
        self._h = dtpkc.FixedBaseTable(pk.h, self.params.n_sq, self.params.bits)
        self._g = g_table or dtpkc.FixedBaseTable(self.params.g, self.params.n_sq, self.params.bits)

    @property
    def g_table(self) -> dtpkc.FixedBaseTable:
        """The fixed-base table of g (the same for every key of the system; pools may share it)."""
        return self._g

    def _worker(self) -> tuple:
        return (_worker_init, (int(self.pk.h), int(self.params.g), int(self.params.n_sq), self.params.bits),
                _worker_pairs, (int(self.params.n),))

    def _convert(self, raw: tuple[int, int]) -> tuple[mpz, mpz]:
        return mpz(raw[0]), mpz(raw[1])

    def _fresh(self) -> tuple[mpz, mpz]:
        r = secrets.randbelow(int(self.params.n) - 1) + 1
        return self._h.pow(r), self._g.pow(r)

    def refill(self, count: int) -> None:
        """Compute ``count`` pairs in this thread."""
        for _ in range(count):
            self._push(self._fresh())

    def _take(self) -> tuple[mpz, mpz]:
        pair = self._pop()
        return self._fresh() if pair is None else pair

    def take_h(self) -> mpz:
        """h^r for a fresh r, for T1-only ciphertexts (opened only by PSDec): the h-part of a precomputed pair
        (its g^r is dropped, the pair is never used again), or h^r alone computed on the spot."""
        pair = self._pop()
        return self._h.pow(secrets.randbelow(int(self.params.n) - 1) + 1) if pair is None else pair[0]

    def encrypt(self, m: int) -> dtpkc.Ciphertext:
        """Enc(m mod N) with one fresh pair."""
        n, n_sq = self.params.n, self.params.n_sq
        hr, gr = self._take()
        return dtpkc.Ciphertext(hr * (1 + (int(m) % n) * n) % n_sq, gr)

    def rerandomize(self, ct: dtpkc.Ciphertext) -> dtpkc.Ciphertext:
        """ct times a fresh Enc(0): unlinkable to ct, same plaintext."""
        hr, gr = self._take()
        n_sq = self.params.n_sq
        return dtpkc.Ciphertext(ct.t1 * hr % n_sq, ct.t2 * gr % n_sq)


class KeyPools:
    """Pools for other parties' keys, kept across requests; beyond ``limit`` the least recently used is dropped
    (each holds two fixed-base tables, about 11 MB at 2048 bits), so a long-running server's memory stays bounded.
    """

    def __init__(self, limit: int = 16) -> None:
        self._pools: OrderedDict[bytes, PairPool] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._pools)

    def __contains__(self, key: bytes) -> bool:
        return key in self._pools

    def get(self, key: bytes, make: Callable[[], PairPool]) -> PairPool:
        """The pool of ``key``, made by ``make`` (outside the lock: tables take time) when not kept."""
        with self._lock:
            pool = self._pools.get(key)
            if pool is not None:
                self._pools.move_to_end(key)
                return pool
        made = make()
        dropped = []
        with self._lock:
            pool = self._pools.setdefault(key, made)
            self._pools.move_to_end(key)
            while len(self._pools) > self._limit:
                dropped.append(self._pools.popitem(last=False)[1])
        for old in dropped:  # outside the lock: closing stops a worker process
            old.close()  # still usable by a request holding it
        if made is not pool:
            made.close()
        return pool
