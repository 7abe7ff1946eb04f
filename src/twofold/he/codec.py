"""Ciphertext encodings, slot packing and thread-parallel partial decryption."""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import gmpy2
from gmpy2 import mpz

from twofold.crypto import dtpkc
from twofold.crypto import dtpkc_wire as wire
from twofold.errors import IntegrityError, ProtocolError

KAPPA = 40  # statistical hiding parameter of every additive blinding (bits)


def ct_to_bytes(params: dtpkc.PublicParams, ct: dtpkc.Ciphertext) -> bytes:
    return wire.ciphertext_to_bytes(params, ct)


def ct_from_bytes(params: dtpkc.PublicParams, data: bytes) -> dtpkc.Ciphertext:
    """Strict decoding; IntegrityError for values that are not units mod N^2."""
    return wire.ciphertext_from_bytes(params, data)


def cts_from_bytes(params: dtpkc.PublicParams, items: Sequence[bytes]) -> list[dtpkc.Ciphertext]:
    return [ct_from_bytes(params, b) for b in items]


def partial_to_bytes(params: dtpkc.PublicParams, p: dtpkc.PartialDecryption) -> bytes:
    return wire.partial_to_bytes(params, p)


def pair_items(params: dtpkc.PublicParams, cts: Sequence[dtpkc.Ciphertext],
               partials: Sequence[dtpkc.PartialDecryption]) -> list[list[bytes]]:
    return [[ct_to_bytes(params, c), partial_to_bytes(params, p)] for c, p in zip(cts, partials, strict=True)]


def load_pairs(params: dtpkc.PublicParams, items: Sequence[Sequence[bytes]]
               ) -> tuple[list[dtpkc.Ciphertext], list[dtpkc.PartialDecryption]]:
    cts, parts = [], []
    for item in items:
        if len(item) != 2:
            raise ProtocolError("expected (ciphertext, partial) pairs")
        cts.append(ct_from_bytes(params, item[0]))
        parts.append(wire.partial_from_bytes(params, item[1]))
    return cts, parts


def key_id(pk: dtpkc.PublicKey) -> bytes:
    """The wire identity of a public key: its strict encoding."""
    return wire.public_key_to_bytes(pk)


# ------------------------------------------------------------------------------------------------ packing


def pack(values: Sequence[int], width: int) -> int:
    """sum(v_i * 2^(width*i)) over Python integers (values may be negative; reduce mod N to encrypt)."""
    total = 0
    for i, v in enumerate(values):
        total += int(v) << (width * i)
    return total


def unpack(x: int, width: int, count: int) -> list[int]:
    """The first ``count`` unsigned slots of a non-negative packed integer."""
    mask = (1 << width) - 1
    return [(int(x) >> (width * i)) & mask for i in range(count)]


def slots_per_ct(params: dtpkc.PublicParams, width: int) -> int:
    """How many ``width``-bit slots fit strictly below N."""
    k = (params.bits - 2) // width
    if k < 1:
        raise ValueError(f"a {width}-bit slot does not fit below a {params.bits}-bit N")
    return k


def chunks(seq: Sequence, size: int) -> list[Sequence]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def signed(v: int, n: int) -> int:
    """Z_N element as a signed integer in (-N/2, N/2]."""
    v = int(v)
    return v - int(n) if v > int(n) // 2 else v


# ------------------------------------------------------------------------------------ parallel decryption


def _shards(n: int, threads: int) -> list[tuple[int, int]]:
    threads = max(1, min(threads, n))
    step = math.ceil(n / threads) if n else 1
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def _pow_list(bases: list[mpz], exp: mpz, mod: mpz, threads: int) -> list[mpz]:
    if len(bases) <= 1 or threads <= 1:
        return list(gmpy2.powmod_base_list(bases, exp, mod)) if bases else []
    with ThreadPoolExecutor(max_workers=threads) as ex:  # powmod_base_list releases the GIL
        parts = ex.map(lambda r: gmpy2.powmod_base_list(bases[r[0]:r[1]], exp, mod), _shards(len(bases), threads))
        return [v for part in parts for v in part]


def psdec1_many(share: dtpkc.StrongKeyShare, cts: Sequence[dtpkc.Ciphertext],
                threads: int = 2) -> list[dtpkc.PartialDecryption]:
    """PSDec1 (MU) of many ciphertexts, sharded over threads."""
    if share.role != 1:
        raise ValueError("PSDec1 needs the MU share")
    params = share.params
    for ct in cts:
        dtpkc.validate_ciphertext(params, ct)
    return [dtpkc.PartialDecryption(v) for v in _pow_list([c.t1 for c in cts], share.value, params.n_sq, threads)]


def psdec2_many(share: dtpkc.StrongKeyShare, cts: Sequence[dtpkc.Ciphertext],
                partials: Sequence[dtpkc.PartialDecryption], threads: int = 2) -> list[int]:
    """PSDec2 (SU): the plaintexts; IntegrityError if any input is malformed."""
    if share.role != 2:
        raise ValueError("PSDec2 needs the SU share")
    params = share.params
    n, n_sq = params.n, params.n_sq
    for ct, p in zip(cts, partials, strict=True):
        dtpkc.validate_ciphertext(params, ct)
        if not 0 < p.value < n_sq or gmpy2.gcd(p.value, n) != 1:
            raise IntegrityError()
    powers = _pow_list([c.t1 for c in cts], share.value, n_sq, threads)
    out = []
    for p, x in zip(partials, powers, strict=True):
        y = p.value * x % n_sq
        if y % n != 1:
            raise IntegrityError()
        out.append(int((y - 1) // n))
    return out
