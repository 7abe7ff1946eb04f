"""Fast arithmetic on the T1 component of system-key ciphertexts: fresh randomness and multi-exponentiation.

Ciphertexts under the *system* key are only ever opened by the two-server decryption (PSDec1/PSDec2), which
reads T1 alone; T2 = g^r serves weak decryption, and the system key's weak secret was discarded at
``he init``. Priv-LR therefore computes T1 only (T2 is sent as 1), halving every exponentiation. T1 alone is a
Paillier-type ciphertext h^r (1 + mN) with r uniform mod N, semantically secure under the same DCR assumption.

The randomness h^r depends on nothing but a fresh r, so :class:`T1Source` can keep values precomputed by a
background worker process (the offline phase); every value is used exactly once, and an empty pool computes a
fresh one inline.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import Sequence

import gmpy2
from gmpy2 import mpz

from twofold.crypto import dtpkc
from twofold.he.offline import OfflineValues

_ONE = mpz(1)
_WORKER: dict[str, object] = {}


def _worker_init(h: int, n_sq: int, bits: int, window: int) -> None:
    with contextlib.suppress(OSError):
        os.nice(19)  # the offline worker takes only the CPU time online work leaves idle
    parent = os.getppid()

    def watch() -> None:  # exit with the server, even when it dies without shutting the pool down
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    _WORKER["table"] = dtpkc.FixedBaseTable(h, n_sq, bits, window)


def _worker_values(count: int, n: int) -> list[int]:
    table = _WORKER["table"]
    return [int(table.pow(secrets.randbelow(n - 1) + 1)) for _ in range(count)]  # type: ignore[attr-defined]


class T1Source(OfflineValues):
    """Fresh h^r (r uniform in [1, N)) for encryption and re-randomization (thread safe).

    Values come from a pool that a background worker process keeps near ``target`` (``start_background``) or
    that ``refill`` fills in the calling thread; each is popped once. With the pool empty, a fresh value is
    computed inline from a fixed-base table (window 8) and counted in ``made_online``; nothing is ever reused.
    The worker runs at the lowest CPU priority, so once online work starts it only fills idle time.
    """

    def __init__(self, pk: dtpkc.PublicKey, window: int = 8) -> None:
        super().__init__()
        self.pk = pk
        self.params = pk.params
        self.n = int(pk.params.n)
        self.n_sq = pk.params.n_sq
        self._window = window
        self._table = dtpkc.FixedBaseTable(pk.h, self.n_sq, pk.params.bits, window)

    def _worker(self) -> tuple:
        return (_worker_init, (int(self.pk.h), int(self.n_sq), self.params.bits, self._window), _worker_values,
                (self.n,))

    def _convert(self, raw: int) -> mpz:
        return mpz(raw)

    def _fresh(self) -> mpz:
        return self._table.pow(secrets.randbelow(self.n - 1) + 1)

    def power(self, r: int) -> mpz:
        """h^r for an exponent 0 <= r < N the caller drew fresh (for values derived from the same r)."""
        return self._table.pow(r)

    def _hr(self) -> mpz:
        value = self._pop()
        return self._fresh() if value is None else value

    def refill(self, count: int) -> None:
        """Compute ``count`` values in this thread."""
        for _ in range(count):
            self._push(self._fresh())

    def encrypt(self, m: int) -> dtpkc.Ciphertext:
        """Enc(m mod N), T1 only."""
        return dtpkc.Ciphertext(self._hr() * (1 + (int(m) % self.n) * self.n) % self.n_sq, 1)

    def rerandomize(self, ct: dtpkc.Ciphertext) -> dtpkc.Ciphertext:
        """Same plaintext, fresh randomness (T1 only)."""
        return dtpkc.Ciphertext(ct.t1 * self._hr() % self.n_sq, 1)


def _window(exp_bits: int, uses: int) -> int:
    """Comb window minimizing table cost + use cost for a base used ``uses`` times."""
    best = min(range(1, 9), key=lambda w: -(-exp_bits // w) * ((1 << w) - 1 + uses))
    return best


def _tables(bases: Sequence[mpz], exp_bits: int, window: int, mod: mpz) -> list[list[list[mpz]]]:
    rows = -(-exp_bits // window)
    out = []
    for b in bases:
        table, cur = [], b % mod
        for _ in range(rows):
            row = [_ONE, cur]
            for _ in range(2, 1 << window):
                row.append(row[-1] * cur % mod)
            table.append(row)
            cur = row[-1] * cur % mod
        out.append(table)
    return out


def multiexp(bases: Sequence[mpz], exps: Sequence[Sequence[int]], mod: mpz) -> list[mpz]:
    """For every row e of ``exps`` (non-negative integers, one per base): prod_j bases[j]^e[j] mod ``mod``."""
    if not exps:
        return []
    exp_bits = max(1, max((int(e).bit_length() for row in exps for e in row), default=1))
    if any(e < 0 for row in exps for e in row):
        raise ValueError("exponents must be non-negative")
    window = _window(exp_bits, len(exps))
    tables = _tables(bases, exp_bits, window, mod)
    mask = (1 << window) - 1
    out = []
    for row in exps:
        acc = _ONE
        for table, e in zip(tables, row, strict=True):
            e = int(e)
            k = 0
            while e:
                digit = e & mask
                if digit:
                    acc = acc * table[k][digit] % mod
                e >>= window
                k += 1
        out.append(acc)
    return out


def t1_multiexp(cts: Sequence[dtpkc.Ciphertext], exps: Sequence[Sequence[int]],
                params: dtpkc.PublicParams) -> list[dtpkc.Ciphertext]:
    """[sum_j e_ij x_j] (T1 only) for every row i, from [x_j] and non-negative integers e_ij."""
    return [dtpkc.Ciphertext(v, 1) for v in multiexp([c.t1 for c in cts], exps, params.n_sq)]


def t1_scalar(ct: dtpkc.Ciphertext, k: int, params: dtpkc.PublicParams) -> dtpkc.Ciphertext:
    """[k x] for any integer k (T1 only)."""
    k = int(k) % int(params.n)
    t1 = ct.t1
    if k > params.n // 2:
        t1, k = gmpy2.invert(t1, params.n_sq), int(params.n) - k
    return dtpkc.Ciphertext(gmpy2.powmod(t1, k, params.n_sq), 1)


def t1_add(a: dtpkc.Ciphertext, b: dtpkc.Ciphertext, params: dtpkc.PublicParams) -> dtpkc.Ciphertext:
    return dtpkc.Ciphertext(a.t1 * b.t1 % params.n_sq, 1)


def t1_sub(a: dtpkc.Ciphertext, b: dtpkc.Ciphertext, params: dtpkc.PublicParams) -> dtpkc.Ciphertext:
    return dtpkc.Ciphertext(a.t1 * gmpy2.invert(b.t1, params.n_sq) % params.n_sq, 1)


def t1_add_plain(a: dtpkc.Ciphertext, m: int, params: dtpkc.PublicParams) -> dtpkc.Ciphertext:
    n = int(params.n)
    return dtpkc.Ciphertext(a.t1 * (1 + (int(m) % n) * n) % params.n_sq, 1)


def _bucket_window(exp_bits: int, count: int) -> int:
    """Bucket width minimizing windows * (bases + running sums) for ``count`` bases per product."""
    return min(range(1, 11), key=lambda c: -(-exp_bits // c) * (count + (2 << c)))


def multiexp_buckets(bases: Sequence[mpz], exps: Sequence[Sequence[int]], mod: mpz) -> list[mpz]:
    """Like :func:`multiexp`, by Pippenger's bucket method: cheaper when each product has many bases and there
    are few products (each base is used only a few times, so per-base tables do not pay off)."""
    if not exps:
        return []
    if any(len(row) != len(bases) for row in exps):
        raise ValueError("every row needs one exponent per base")
    if any(e < 0 for row in exps for e in row):
        raise ValueError("exponents must be non-negative")
    exp_bits = max(1, max((int(e).bit_length() for row in exps for e in row), default=1))
    width = _bucket_window(exp_bits, len(bases))
    mask = (1 << width) - 1
    reduced = [mpz(b) % mod for b in bases]
    out = []
    for row in exps:
        ints = [int(e) for e in row]
        acc = _ONE
        for shift in range((exp_bits - 1) // width * width, -1, -width):
            if acc != _ONE:
                acc = gmpy2.powmod(acc, 1 << width, mod)
            buckets: dict[int, mpz] = {}
            for b, e in zip(reduced, ints, strict=True):
                digit = (e >> shift) & mask
                if digit:
                    cur = buckets.get(digit)
                    buckets[digit] = b if cur is None else cur * b % mod
            running = total = None
            for digit in range(mask, 0, -1):  # total = prod_d bucket_d^d through running products
                got = buckets.get(digit)
                if got is not None:
                    running = got if running is None else running * got % mod
                if running is not None:
                    total = running if total is None else total * running % mod
            if total is not None:
                acc = acc * total % mod
        out.append(acc)
    return out


def multiexp_small(bases: Sequence[mpz], exps: Sequence[int], mod: mpz) -> mpz:
    """prod_j bases[j]^exps[j] for a few bases and short non-negative exponents (Straus, shared squarings)."""
    if any(e < 0 for e in exps):
        raise ValueError("exponents must be non-negative")
    ints = [int(e) for e in exps]
    acc = _ONE
    for k in range(max((e.bit_length() for e in ints), default=0) - 1, -1, -1):
        if acc != _ONE:
            acc = acc * acc % mod
        for b, e in zip(bases, ints, strict=True):
            if e >> k & 1:
                acc = acc * b % mod
    return acc


def invert_many(values: Sequence[mpz], mod: mpz) -> list[mpz]:
    """Inverses of units mod ``mod`` with one inversion (Montgomery's trick); ZeroDivisionError if one is not."""
    if not values:
        return []
    prefix, acc = [], _ONE
    for v in values:
        acc = acc * v % mod
        prefix.append(acc)
    inv = gmpy2.invert(acc, mod)
    out: list[mpz] = [_ONE] * len(values)
    for i in range(len(values) - 1, 0, -1):
        out[i] = inv * prefix[i - 1] % mod
        inv = inv * values[i] % mod
    out[0] = inv
    return out


def t1_multiexp_buckets(cts: Sequence[dtpkc.Ciphertext], exps: Sequence[Sequence[int]],
                        params: dtpkc.PublicParams) -> list[dtpkc.Ciphertext]:
    """Same result as :func:`t1_multiexp` by the bucket method (many ciphertexts per row, few rows)."""
    return [dtpkc.Ciphertext(v, 1) for v in multiexp_buckets([c.t1 for c in cts], exps, params.n_sq)]
