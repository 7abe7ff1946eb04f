"""Fast arithmetic on the T1 component of system-key ciphertexts: fresh randomness and multi-exponentiation.

Ciphertexts under the *system* key are only ever opened by the two-server decryption (PSDec1/PSDec2), which
reads T1 alone; T2 = g^r serves weak decryption, and the system key's weak secret was discarded at
``he init``. Priv-LR therefore computes T1 only (T2 is sent as 1), halving every exponentiation. T1 alone is a
Paillier-type ciphertext h^r (1 + mN) with r uniform mod N, semantically secure under the same DCR assumption.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import gmpy2
from gmpy2 import mpz

from twofold.crypto import dtpkc

_ONE = mpz(1)


class T1Source:
    """Fresh h^r (r uniform in [1, N)) from a fixed-base table (window 8), for encryption and re-randomization."""

    def __init__(self, pk: dtpkc.PublicKey, window: int = 8) -> None:
        self.pk = pk
        self.params = pk.params
        self.n = int(pk.params.n)
        self.n_sq = pk.params.n_sq
        self._table = dtpkc.FixedBaseTable(pk.h, self.n_sq, pk.params.bits, window)

    def _hr(self) -> mpz:
        return self._table.pow(secrets.randbelow(self.n - 1) + 1)

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
