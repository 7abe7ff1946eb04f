"""Precomputed encryption randomness: pairs (h^r, g^r) made offline, each used exactly once.

A :class:`PairPool` serves encryptions and re-randomizations of one public key from a deque of pairs. It can
be refilled synchronously or by a background worker process (``start_background``), which keeps the pool near
a target size (refilling once it falls below half of it) so that online work pays one multiplication per
encryption. When the pool runs dry it computes
a fresh pair on the spot; a pair is never reused.
"""

from __future__ import annotations

import multiprocessing
import secrets
import threading
from collections import deque
from concurrent.futures import ProcessPoolExecutor

from gmpy2 import mpz

from twofold.crypto import dtpkc

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


class PairPool:
    """Encryption under one public key from precomputed pairs (thread safe)."""

    def __init__(self, pk: dtpkc.PublicKey, *, g_table: dtpkc.FixedBaseTable | None = None) -> None:
        self.pk = pk
        self.params = pk.params
        self._h = dtpkc.FixedBaseTable(pk.h, self.params.n_sq, self.params.bits)
        self._g = g_table or dtpkc.FixedBaseTable(self.params.g, self.params.n_sq, self.params.bits)
        self._pairs: deque[tuple[mpz, mpz]] = deque()
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._target = 0
        self._inflight = 0
        self._filling = True
        self.made_online = 0

    def __len__(self) -> int:
        return len(self._pairs)

    @property
    def g_table(self) -> dtpkc.FixedBaseTable:
        """The fixed-base table of g (the same for every key of the system; pools may share it)."""
        return self._g

    def _fresh(self) -> tuple[mpz, mpz]:
        r = secrets.randbelow(int(self.params.n) - 1) + 1
        return self._h.pow(r), self._g.pow(r)

    def refill(self, count: int) -> None:
        """Compute ``count`` pairs in this thread."""
        for _ in range(count):
            pair = self._fresh()
            with self._lock:
                self._pairs.append(pair)

    def _take(self) -> tuple[mpz, mpz]:
        with self._lock:
            if self._pairs:
                pair = self._pairs.popleft()
                self._top_up()
                return pair
        self.made_online += 1
        return self._fresh()

    def take_h(self) -> mpz:
        """h^r for a fresh r, for T1-only ciphertexts (opened only by PSDec): the h-part of a precomputed pair
        (its g^r is dropped, the pair is never used again), or h^r alone computed on the spot."""
        with self._lock:
            if self._pairs:
                pair = self._pairs.popleft()
                self._top_up()
                return pair[0]
        self.made_online += 1
        return self._h.pow(secrets.randbelow(int(self.params.n) - 1) + 1)

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

    # ---------------------------------------------------------------------------------- background refill

    def start_background(self, target: int, batch: int = 64) -> None:
        """Keep about ``target`` pairs ready, computed by one worker process (the offline phase)."""
        if target <= 0:
            return
        self._target, self._batch = target, batch
        ctx = multiprocessing.get_context("spawn")
        self._executor = ProcessPoolExecutor(1, mp_context=ctx, initializer=_worker_init,
                                             initargs=(int(self.pk.h), int(self.params.g), int(self.params.n_sq),
                                                       self.params.bits))
        with self._lock:
            self._top_up()

    def _top_up(self) -> None:  # called with the lock held
        if self._executor is None:
            return
        if len(self._pairs) < self._target // 2:
            self._filling = True  # low-water mark: online work has the cores until half the pool is used
        if not self._filling:
            return
        if len(self._pairs) + self._inflight >= self._target:
            self._filling = False
            return
        while len(self._pairs) + self._inflight < self._target and self._inflight < 2 * self._batch:
            self._inflight += self._batch
            fut = self._executor.submit(_worker_pairs, self._batch, int(self.params.n))
            fut.add_done_callback(self._collect)

    def _collect(self, fut: object) -> None:
        try:
            pairs = fut.result()  # type: ignore[attr-defined]
        except Exception:
            pairs = []
        with self._lock:
            self._inflight -= self._batch
            self._pairs.extend((mpz(a), mpz(b)) for a, b in pairs)
            if pairs:
                self._top_up()

    def wait_filled(self, minimum: int, timeout: float = 600.0) -> bool:
        """Block until at least ``minimum`` pairs are ready (or the timeout passes)."""
        import time

        deadline = time.monotonic() + timeout
        while len(self._pairs) < minimum and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self._pairs) >= minimum

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
