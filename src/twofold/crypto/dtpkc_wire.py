"""Byte encodings of DT-PKC's parameters, keys, shares, ciphertexts and partial decryptions.

Every encoding is: version (1 byte) | kind (1 byte) | fields as fixed-width big-endian integers. Widths: nb =
bytes of N, wb = bytes of N^2. Parsing is strict: exact lengths, known version and kind, canonical values. Format
errors raise ProtocolError; ciphertext values out of range raise the opaque IntegrityError.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import gmpy2
from gmpy2 import mpz

from twofold.crypto.dtpkc import (
    DEFAULT_MIN_BITS,
    FINGERPRINT_BYTES,
    FORMAT_VERSION,
    Ciphertext,
    PartialDecryption,
    PublicKey,
    PublicParams,
    StrongKeyShare,
    WeakSecretKey,
    _byte_len,
    _check_ct_type,
    _check_pk,
    canonical_params,
    validate_ciphertext,
)
from twofold.errors import IntegrityError, ProtocolError

_KIND_PARAMS = ord("P")
_KIND_PUBLIC_KEY = ord("K")
_KIND_WEAK_KEY = ord("W")
_KIND_SHARE = ord("S")
_KIND_CIPHERTEXT = ord("C")
_KIND_CIPHERTEXT_BATCH = ord("B")
_KIND_PARTIAL = ord("D")

def _header(kind: int) -> bytes:
    return bytes((FORMAT_VERSION, kind))


def _body(data: object, kind: int) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError("expected bytes")
    data = bytes(data)
    if len(data) < 2:
        raise ProtocolError("truncated DT-PKC encoding")
    if data[0] != FORMAT_VERSION:
        raise ProtocolError(f"unsupported DT-PKC format version {data[0]}")
    if data[1] != kind:
        raise ProtocolError(f"expected DT-PKC object of kind {chr(kind)!r}")
    return data[2:]


def _expect_len(body: bytes, length: int) -> None:
    if len(body) != length:
        raise ProtocolError(f"DT-PKC encoding has {len(body)} body bytes, expected {length}")


def _widths(params: PublicParams) -> tuple[int, int]:
    return _byte_len(params.n), _byte_len(params.n_sq)


def _fields(body: bytes, widths: Sequence[int]) -> list[mpz]:
    out, pos = [], 0
    for w in widths:
        out.append(mpz(int.from_bytes(body[pos : pos + w], "big")))
        pos += w
    return out


def _check_fingerprint(params: PublicParams, fp: bytes) -> None:
    if fp != params.fingerprint:
        raise ProtocolError("object belongs to different DT-PKC parameters")


def params_to_bytes(params: PublicParams) -> bytes:
    """version | 'P' | u16 nb | N (nb) | g (wb)."""
    return canonical_params(params)


def params_from_bytes(data: bytes, *, min_bits: int = DEFAULT_MIN_BITS) -> PublicParams:
    """Strict inverse of :func:`params_to_bytes`; refuses N shorter than ``min_bits`` (a secure default)."""
    body = _body(data, _KIND_PARAMS)
    if len(body) < 3:
        raise ProtocolError("truncated DT-PKC parameters")
    (nb,) = struct.unpack(">H", body[:2])
    n = int.from_bytes(body[2 : 2 + nb], "big")
    if nb == 0 or body[2] == 0:
        raise ProtocolError("non-canonical modulus encoding")
    wb = _byte_len(n * n)
    _expect_len(body, 2 + nb + wb)
    g = int.from_bytes(body[2 + nb :], "big")
    if n.bit_length() < min_bits:
        raise ProtocolError(f"N has {n.bit_length()} bits, fewer than min_bits={min_bits}")
    try:
        return PublicParams(n, g)
    except ValueError as exc:
        raise ProtocolError(f"invalid DT-PKC parameters: {exc}") from None


def public_key_to_bytes(pk: PublicKey) -> bytes:
    """version | 'K' | params fingerprint (16) | h (wb)."""
    params = _check_pk(pk).params
    return _header(_KIND_PUBLIC_KEY) + params.fingerprint + int(pk.h).to_bytes(_widths(params)[1], "big")


def _fingerprinted(params: PublicParams, data: bytes, kind: int, width: int) -> int:
    """The one value of an encoding ``version | kind | params fingerprint | value (width bytes)``."""
    body = _body(data, kind)
    _expect_len(body, FINGERPRINT_BYTES + width)
    _check_fingerprint(params, body[:FINGERPRINT_BYTES])
    return int.from_bytes(body[FINGERPRINT_BYTES:], "big")


def public_key_from_bytes(params: PublicParams, data: bytes) -> PublicKey:
    """Strict inverse of :func:`public_key_to_bytes` under the given parameters."""
    value = _fingerprinted(params, data, _KIND_PUBLIC_KEY, _widths(params)[1])
    try:
        return PublicKey(params, value)
    except ValueError as exc:
        raise ProtocolError(f"invalid DT-PKC public key: {exc}") from None


def weak_key_to_bytes(sk: WeakSecretKey) -> bytes:
    """version | 'W' | params fingerprint | theta (nb). Secret: wrap it before storing."""
    if not isinstance(sk, WeakSecretKey):
        raise TypeError("sk must be WeakSecretKey")
    return _header(_KIND_WEAK_KEY) + sk.params.fingerprint + int(sk.theta).to_bytes(_widths(sk.params)[0], "big")


def weak_key_from_bytes(params: PublicParams, data: bytes) -> WeakSecretKey:
    """Strict inverse of :func:`weak_key_to_bytes`."""
    value = _fingerprinted(params, data, _KIND_WEAK_KEY, _widths(params)[0])
    try:
        return WeakSecretKey(params, value)
    except ValueError as exc:
        raise ProtocolError(f"invalid DT-PKC weak key: {exc}") from None


def share_to_bytes(share: StrongKeyShare) -> bytes:
    """version | 'S' | role (1) | params fingerprint | value (wb). Secret: wrap it before storing."""
    if not isinstance(share, StrongKeyShare):
        raise TypeError("share must be StrongKeyShare")
    return _header(_KIND_SHARE) + bytes((share.role,)) + share.params.fingerprint \
        + int(share.value).to_bytes(_widths(share.params)[1], "big")


def share_from_bytes(params: PublicParams, data: bytes) -> StrongKeyShare:
    """Strict inverse of :func:`share_to_bytes`."""
    body = _body(data, _KIND_SHARE)
    _expect_len(body, 1 + FINGERPRINT_BYTES + _widths(params)[1])
    _check_fingerprint(params, body[1 : 1 + FINGERPRINT_BYTES])
    try:
        return StrongKeyShare(params, body[0], int.from_bytes(body[1 + FINGERPRINT_BYTES :], "big"))
    except ValueError as exc:
        raise ProtocolError(f"invalid DT-PKC key share: {exc}") from None


def _ct_bytes(ct: Ciphertext, wb: int) -> bytes:
    _check_ct_type(ct)
    return int(ct.t1).to_bytes(wb, "big") + int(ct.t2).to_bytes(wb, "big")


def ciphertext_to_bytes(params: PublicParams, ct: Ciphertext) -> bytes:
    """version | 'C' | T1 (wb) | T2 (wb)."""
    return _header(_KIND_CIPHERTEXT) + _ct_bytes(ct, _widths(params)[1])


def ciphertext_from_bytes(params: PublicParams, data: bytes) -> Ciphertext:
    """Strict inverse of :func:`ciphertext_to_bytes`; IntegrityError if a value is not a unit mod N^2."""
    body = _body(data, _KIND_CIPHERTEXT)
    wb = _widths(params)[1]
    _expect_len(body, 2 * wb)
    return _ct_from_fields(params, *_fields(body, (wb, wb)))


def _ct_from_fields(params: PublicParams, t1: mpz, t2: mpz) -> Ciphertext:
    if t1 == 0 or t2 == 0:
        raise IntegrityError()
    return validate_ciphertext(params, Ciphertext(t1, t2))


def ciphertexts_to_bytes(params: PublicParams, cts: Sequence[Ciphertext]) -> bytes:
    """version | 'B' | u32 count | count * (T1 | T2)."""
    wb = _widths(params)[1]
    return _header(_KIND_CIPHERTEXT_BATCH) + struct.pack(">I", len(cts)) + b"".join(_ct_bytes(c, wb) for c in cts)


def ciphertexts_from_bytes(params: PublicParams, data: bytes) -> list[Ciphertext]:
    """Strict inverse of :func:`ciphertexts_to_bytes`."""
    body = _body(data, _KIND_CIPHERTEXT_BATCH)
    if len(body) < 4:
        raise ProtocolError("truncated DT-PKC ciphertext batch")
    (count,) = struct.unpack(">I", body[:4])
    wb = _widths(params)[1]
    _expect_len(body, 4 + 2 * wb * count)
    out = []
    for i in range(count):
        start = 4 + 2 * wb * i
        out.append(_ct_from_fields(params, *_fields(body[start : start + 2 * wb], (wb, wb))))
    return out


def partial_to_bytes(params: PublicParams, partial: PartialDecryption) -> bytes:
    """version | 'D' | CT1 (wb)."""
    if not isinstance(partial, PartialDecryption):
        raise TypeError("partial must be PartialDecryption")
    return _header(_KIND_PARTIAL) + int(partial.value).to_bytes(_widths(params)[1], "big")


def partial_from_bytes(params: PublicParams, data: bytes) -> PartialDecryption:
    """Strict inverse of :func:`partial_to_bytes`; IntegrityError if the value is not a unit mod N^2."""
    body = _body(data, _KIND_PARTIAL)
    _expect_len(body, _widths(params)[1])
    value = mpz(int.from_bytes(body, "big"))
    if not 0 < value < params.n_sq or gmpy2.gcd(value, params.n) != 1:
        raise IntegrityError()
    return PartialDecryption(value)
