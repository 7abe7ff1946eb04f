"""DT-PKC, the Distributed Two Trapdoors Public-Key Cryptosystem (Liu, Deng, Choo, Weng; IEEE TIFS 2016).

Pure functions on gmpy2: no I/O, no module state. Randomness comes from :mod:`secrets` unless injected
(``r=`` for encryption, ``rng=`` for key generation and key splitting) for known-answer tests.

Scheme (all arithmetic mod N^2 unless said otherwise)::

    p = 2p'+1, q = 2q'+1 safe primes, N = pq, g = -a^(2N) for random a
    strong key      lambda = lcm(p-1, q-1)                      (held by whoever generated the system)
    user key        theta random, h = g^theta                   (WeakSecretKey / PublicKey)
    Enc(m; r)       T1 = h^r (1 + mN), T2 = g^r
    WDec            m = L(T1 / T2^theta),  L(x) = (x - 1) / N
    SDec            m = L(T1^lambda) * lambda^-1 mod N          (computed with CRT on p^2, q^2)
    split           s = 0 mod lambda, s = 1 mod N; lambda1 uniform in Z_(lambda N), lambda2 = s - lambda1
    PSDec1 (MU)     CT1 = T1^lambda1
    PSDec2 (SU)     m = L(CT1 * T1^lambda2)

Two deliberate deviations from the published formulas, both checked by the tests:

* The strong key is the Carmichael value ``lcm(p-1, q-1)``, not ``lcm(p-1, q-1)/2``. With ``g = -a^(2N)`` the
  element g has order ``2 p'q'``, so ``g^(lcm/2) = -1`` and the published SDec fails whenever theta*r is odd.
* Shares are taken modulo ``lambda*N`` (the exponent of Z*_(N^2)) rather than ``lambda*N^2``: every element
  raised to ``lambda*N`` is 1, so this is equivalent and makes PSDec exponents 4096 instead of 6144 bits at
  2048-bit N. Each share alone is uniform in Z_(lambda N) and says nothing about lambda.

Key generation at 2048 bits (two 1024-bit safe primes, found with a joint sieve over q' and 2q'+1 followed by
Fermat and Miller-Rabin tests) takes about 1 s (0.3-3 s) on one core, at 3072 bits a few seconds (2-20 s); pass
``primes=`` to skip it. Measured at 2048-bit N on one core: encrypt 22 ms (two powmods), pool refill 4.4 ms
per pair and pooled encrypt 7 us, WDec 11 ms, SDec 3 ms (CRT; 11 ms without), PSDec1 22 ms + PSDec2 22 ms.

Byte encodings of every type are in :mod:`twofold.crypto.dtpkc_wire`.

Outputs of homomorphic operations are NOT re-randomized (``scalar_mul`` by 0 even gives the trivial (1, 1)):
call :func:`rerandomize` before a result leaves the party that computed it.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import gmpy2
from gmpy2 import mpz

from twofold.crypto.integers import as_int as _as_int
from twofold.errors import IntegrityError

FORMAT_VERSION = 1  # of the byte encodings (dtpkc_wire); the parameters' fingerprint hashes one
FINGERPRINT_BYTES = 16
MIN_GENERATED_BITS = 128
DEFAULT_MIN_BITS = 2048
_MR_ROUNDS = 40
_SIEVE_LIMIT = 1 << 16
_SIEVE_WINDOW = 1 << 14


_ONE = mpz(1)


class RandomSource(Protocol):
    """What key generation needs from a random source (``secrets.SystemRandom``, ``random.Random``)."""

    def getrandbits(self, k: int, /) -> int: ...

    def randrange(self, start: int, stop: int, /) -> int: ...


# --------------------------------------------------------------------------------------------------- helpers


def _system_rng(rng: RandomSource | None) -> RandomSource:
    return secrets.SystemRandom() if rng is None else rng




def _as_mpz(value: object, name: str) -> mpz:
    if type(value) is type(_ONE):
        return value  # type: ignore[return-value]
    return mpz(_as_int(value, name))


def _is_nontrivial_unit(x: mpz, n: mpz, n_sq: mpz) -> bool:
    """1 < x < N^2 - 1 and gcd(x, N) = 1 (excludes the degenerate generators 1 and -1)."""
    return bool(1 < x < n_sq - 1 and gmpy2.gcd(x, n) == 1)


def _byte_len(x: int) -> int:
    return (int(x).bit_length() + 7) // 8


def _L(x: mpz, n: mpz) -> mpz:
    """Paillier's L function, raising the opaque IntegrityError when x is not 1 mod N."""
    if x % n != 1:
        raise IntegrityError()
    return (x - 1) // n


def _random_unit(n: mpz, rng: RandomSource) -> mpz:
    """A uniform element of [1, n) coprime to n."""
    while True:
        x = mpz(rng.randrange(1, int(n)))
        if gmpy2.gcd(x, n) == 1:
            return x


def _fresh_exponent(n: mpz) -> mpz:
    """Fresh encryption randomness r, uniform in [1, N), from :mod:`secrets`."""
    return mpz(secrets.randbelow(int(n) - 1) + 1)


# ------------------------------------------------------------------------------------------------ key types


@dataclass(frozen=True)
class PublicParams:
    """System parameters shared by every party: N, N^2 and the generator g."""

    n: mpz
    g: mpz
    n_sq: mpz = field(init=False)

    def __post_init__(self) -> None:
        n = _as_mpz(self.n, "n")
        g = _as_mpz(self.g, "g")
        if n < 3 or n % 2 == 0:
            raise ValueError("n must be an odd integer >= 3")
        n_sq = n * n
        if not _is_nontrivial_unit(g, n, n_sq):
            raise ValueError("g must be a unit modulo N^2 other than 1 and -1")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "g", g)
        object.__setattr__(self, "n_sq", n_sq)

    @property
    def bits(self) -> int:
        """Bit length of N."""
        return int(self.n.bit_length())

    @cached_property
    def fingerprint(self) -> bytes:
        """First 16 bytes of SHA-256 over the serialized parameters; binds keys to their system."""
        return hashlib.sha256(canonical_params(self)).digest()[:FINGERPRINT_BYTES]


@dataclass(frozen=True)
class PublicKey:
    """A user's public key h = g^theta mod N^2."""

    params: PublicParams
    h: mpz

    def __post_init__(self) -> None:
        _check_params_type(self.params)
        h = _as_mpz(self.h, "h")
        if not _is_nontrivial_unit(h, self.params.n, self.params.n_sq):
            raise ValueError("h must be a unit modulo N^2 other than 1 and -1")
        object.__setattr__(self, "h", h)


@dataclass(frozen=True)
class WeakSecretKey:
    """A user's weak secret theta: decrypts only ciphertexts under that user's public key."""

    params: PublicParams
    theta: mpz = field(repr=False)

    def __post_init__(self) -> None:
        _check_params_type(self.params)
        theta = _as_mpz(self.theta, "theta")
        if not 0 < theta < self.params.n:
            raise ValueError("theta must lie in [1, N)")
        object.__setattr__(self, "theta", theta)

    @cached_property
    def public_key(self) -> PublicKey:
        """The matching public key g^theta."""
        return PublicKey(self.params, gmpy2.powmod(self.params.g, self.theta, self.params.n_sq))


@dataclass(frozen=True)
class UserKeyPair:
    """A user's public key and weak secret key."""

    public: PublicKey
    secret: WeakSecretKey


@dataclass(frozen=True)
class StrongKey:
    """The strong trapdoor: the factors p, q of N, so lambda = lcm(p-1, q-1). Held only by the key generator.

    Obtain it from :func:`generate_params` or :func:`params_from_primes`, which check that p, q are safe primes.
    """

    params: PublicParams
    p: mpz = field(repr=False)
    q: mpz = field(repr=False)

    def __post_init__(self) -> None:
        _check_params_type(self.params)
        p, q = _as_mpz(self.p, "p"), _as_mpz(self.q, "q")
        if p == q or p < 3 or q < 3 or p * q != self.params.n:
            raise ValueError("p and q must be distinct odd primes with p*q == N")
        object.__setattr__(self, "p", p)
        object.__setattr__(self, "q", q)

    @cached_property
    def lam(self) -> mpz:
        """lambda = lcm(p-1, q-1)."""
        return gmpy2.lcm(self.p - 1, self.q - 1)

    @cached_property
    def _crt(self) -> tuple[mpz, mpz, mpz, mpz, mpz]:
        """(p^2, q^2, ((p-1)q)^-1 mod p, ((q-1)p)^-1 mod q, q^-1 mod p) for CRT decryption."""
        p, q = self.p, self.q
        return (p * p, q * q, gmpy2.invert((p - 1) * q % p, p), gmpy2.invert((q - 1) * p % q, q),
                gmpy2.invert(q, p))


@dataclass(frozen=True)
class StrongKeyShare:
    """One additive share of the strong key: role 1 (lambda1) for MU, role 2 (lambda2) for SU."""

    params: PublicParams
    role: int
    value: mpz = field(repr=False)

    def __post_init__(self) -> None:
        _check_params_type(self.params)
        if isinstance(self.role, bool) or self.role not in (1, 2):
            raise ValueError("role must be 1 (MU) or 2 (SU)")
        value = _as_mpz(self.value, "value")
        if not 0 <= value < self.params.n_sq:
            raise ValueError("share value must lie in [0, N^2)")
        object.__setattr__(self, "value", value)


@dataclass(frozen=True)
class Ciphertext:
    """An immutable DT-PKC ciphertext (T1, T2)."""

    t1: mpz
    t2: mpz

    def __post_init__(self) -> None:
        t1, t2 = _as_mpz(self.t1, "t1"), _as_mpz(self.t2, "t2")
        if t1 <= 0 or t2 <= 0:
            raise ValueError("ciphertext components must be positive")
        object.__setattr__(self, "t1", t1)
        object.__setattr__(self, "t2", t2)


@dataclass(frozen=True)
class PartialDecryption:
    """Output of PSDec1 (CT1 = T1^lambda1), sent by MU to SU together with the ciphertext."""

    value: mpz

    def __post_init__(self) -> None:
        value = _as_mpz(self.value, "value")
        if value <= 0:
            raise ValueError("partial decryption must be positive")
        object.__setattr__(self, "value", value)


def _check_params_type(params: object) -> None:
    if not isinstance(params, PublicParams):
        raise TypeError("params must be PublicParams")


def _check_ct_type(ct: object) -> Ciphertext:
    if not isinstance(ct, Ciphertext):
        raise TypeError(f"expected Ciphertext, not {type(ct).__name__}")
    return ct


def validate_ciphertext(params: PublicParams, ct: Ciphertext) -> Ciphertext:
    """Return ct if 0 < T1, T2 < N^2 and both are coprime to N; otherwise raise the opaque IntegrityError."""
    _check_ct_type(ct)
    for t in (ct.t1, ct.t2):
        if not t < params.n_sq or gmpy2.gcd(t, params.n) != 1:
            raise IntegrityError()
    return ct


# -------------------------------------------------------------------------------------------- key generation


def _small_odd_primes(limit: int) -> list[int]:
    sieve = bytearray(b"\x01") * limit
    sieve[0:2] = b"\x00\x00"
    for i in range(2, math.isqrt(limit) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, limit, i)))
    return [i for i in range(3, limit) if sieve[i]]


def _sieve_window(q0: int, primes: Sequence[int], window: int) -> bytearray:
    """Flags k in [0, window) for which neither q0 + 2k nor 2(q0 + 2k) + 1 has a factor in primes."""
    ok = bytearray(b"\x01") * window
    for sp in primes:
        half = (sp + 1) // 2  # inverse of 2 mod sp
        r = q0 % sp
        for k in ((-r * half) % sp, (((sp - 1) // 2 - r) * half) % sp):
            if k < window:
                ok[k::sp] = bytes(len(range(k, window, sp)))
    return ok


def _is_safe_prime_pair(q: mpz) -> bool:
    """q and 2q+1 both prime: cheap base-2 Fermat filters first, then Miller-Rabin."""
    p = 2 * q + 1
    if gmpy2.powmod(2, q - 1, q) != 1 or gmpy2.powmod(2, p - 1, p) != 1:
        return False
    return bool(gmpy2.is_prime(q, _MR_ROUNDS) and gmpy2.is_prime(p, _MR_ROUNDS))


def generate_safe_prime(bits: int, rng: RandomSource | None = None) -> mpz:
    """A random safe prime p = 2q+1 of exactly ``bits`` bits with its top two bits set.

    Sieves a window of candidates q' jointly for q' and 2q'+1 with the odd primes below 2^16, then tests the
    survivors; about 0.05-1 s for 1024 bits, 1-10 s for 1536 bits on one core.
    """
    bits = _as_int(bits, "bits")
    if bits < MIN_GENERATED_BITS // 2:
        raise ValueError(f"safe primes below {MIN_GENERATED_BITS // 2} bits are not generated")
    rng = _system_rng(rng)
    primes = [sp for sp in _small_odd_primes(_SIEVE_LIMIT) if sp.bit_length() < bits - 2]
    while True:
        q0 = rng.getrandbits(bits - 1) | (3 << (bits - 3)) | 1
        ok = _sieve_window(q0, primes, _SIEVE_WINDOW)
        for k in (k for k in range(_SIEVE_WINDOW) if ok[k]):
            q = mpz(q0 + 2 * k)
            if (2 * q + 1).bit_length() == bits and _is_safe_prime_pair(q):
                return 2 * q + 1


def _check_safe_prime(p: mpz) -> None:
    if p < 7 or not gmpy2.is_prime(p, _MR_ROUNDS) or not gmpy2.is_prime((p - 1) // 2, _MR_ROUNDS):
        raise ValueError("p and q must be safe primes (p = 2p'+1 with p' prime) larger than 5")


def _generator(n: mpz, p: mpz, q: mpz, a: mpz) -> mpz | None:
    """g = -a^(2N) mod N^2 if a^(2N) has full order p'q' in the squares of Z*_N, else None."""
    n_sq = n * n
    if not 0 < a < n_sq or gmpy2.gcd(a, n) != 1:
        return None
    x = gmpy2.powmod(a, 2 * n, n_sq)
    p1, q1 = (p - 1) // 2, (q - 1) // 2
    if x == 1 or gmpy2.powmod(x, p1, n_sq) == 1 or gmpy2.powmod(x, q1, n_sq) == 1:
        return None
    return n_sq - x


def params_from_primes(p: int, q: int, *, a: int | None = None,
                       rng: RandomSource | None = None) -> tuple[PublicParams, StrongKey]:
    """System parameters and strong key from given safe primes; ``a`` fixes g = -a^(2N) for known answers."""
    p, q = _as_mpz(p, "p"), _as_mpz(q, "q")
    if p == q:
        raise ValueError("p and q must differ")
    _check_safe_prime(p)
    _check_safe_prime(q)
    n = p * q
    if a is not None:
        g = _generator(n, p, q, _as_mpz(a, "a"))
        if g is None:
            raise ValueError("a must be a unit mod N^2 whose a^(2N) has order p'q'")
    else:
        rng = _system_rng(rng)
        g = None
        while g is None:
            g = _generator(n, p, q, _random_unit(n * n, rng))
    params = PublicParams(n, g)
    return params, StrongKey(params, p, q)


def generate_params(bits: int, rng: RandomSource | None = None,
                    primes: tuple[int, int] | None = None) -> tuple[PublicParams, StrongKey]:
    """Generate a DT-PKC system with an N of exactly ``bits`` bits; returns (public params, strong key).

    ``primes`` (p, q) skips the safe-prime search (the slow part: ~1 s at 2048 bits, a few s at 3072).
    """
    bits = _as_int(bits, "bits")
    if bits < MIN_GENERATED_BITS or bits % 2:
        raise ValueError(f"bits must be even and >= {MIN_GENERATED_BITS}")
    rng = _system_rng(rng)
    if primes is None:
        p = generate_safe_prime(bits // 2, rng)
        q = p
        while q == p:
            q = generate_safe_prime(bits // 2, rng)
    else:
        p, q = (_as_mpz(x, "primes") for x in primes)
    params, strong = params_from_primes(p, q, rng=rng)
    if params.bits != bits:
        raise ValueError(f"primes give a {params.bits}-bit N, not {bits} bits")
    return params, strong


def user_key_from_secret(params: PublicParams, theta: int) -> UserKeyPair:
    """The key pair of a given weak secret theta (for known-answer tests and key loading)."""
    secret = WeakSecretKey(params, theta)
    return UserKeyPair(secret.public_key, secret)


def generate_user_key(params: PublicParams, rng: RandomSource | None = None) -> UserKeyPair:
    """A fresh user key pair: theta uniform in [1, N), h = g^theta mod N^2."""
    _check_params_type(params)
    theta = _system_rng(rng).randrange(1, int(params.n))
    return user_key_from_secret(params, theta)


def split_strong_key(strong: StrongKey,
                     rng: RandomSource | None = None) -> tuple[StrongKeyShare, StrongKeyShare]:
    """Split lambda into (share for MU, share for SU) with share1 + share2 = s (mod lambda*N).

    s = 0 mod lambda and s = 1 mod N; share1 is uniform in Z_(lambda N), so neither share alone decrypts.
    """
    if not isinstance(strong, StrongKey):
        raise TypeError("strong must be StrongKey")
    n, lam = strong.params.n, strong.lam
    modulus = lam * n
    s = lam * gmpy2.invert(lam, n) % modulus
    share1 = mpz(_system_rng(rng).randrange(0, int(modulus)))
    share2 = (s - share1) % modulus
    return StrongKeyShare(strong.params, 1, share1), StrongKeyShare(strong.params, 2, share2)


# ---------------------------------------------------------------------------------------------- encryption


def _check_plaintext(params: PublicParams, m: object) -> mpz:
    value = _as_mpz(m, "m")
    if not 0 <= value < params.n:
        raise ValueError("plaintext must lie in [0, N); encode signed or real values first")
    return value


def _check_pk(pk: object) -> PublicKey:
    if not isinstance(pk, PublicKey):
        raise TypeError("pk must be PublicKey")
    return pk


def _from_pair(params: PublicParams, m: mpz, hr: mpz, gr: mpz) -> Ciphertext:
    return Ciphertext(hr * (1 + m * params.n) % params.n_sq, gr)


def encrypt(pk: PublicKey, m: int, r: int | None = None) -> Ciphertext:
    """Enc(m) = (h^r (1 + mN), g^r) mod N^2 with fresh r from :mod:`secrets` (inject r only in tests)."""
    params = _check_pk(pk).params
    m = _check_plaintext(params, m)
    if r is None:
        r = _fresh_exponent(params.n)
    else:
        r = _as_mpz(r, "r")
        if not 0 < r < params.n:
            raise ValueError("r must lie in [1, N)")
    return _from_pair(params, m, gmpy2.powmod(pk.h, r, params.n_sq), gmpy2.powmod(params.g, r, params.n_sq))


def encrypt_many(pk: PublicKey, messages: Iterable[int]) -> list[Ciphertext]:
    """Encrypt each message with its own fresh randomness."""
    return [encrypt(pk, m) for m in messages]


def rerandomize(pk: PublicKey, ct: Ciphertext, r: int | None = None) -> Ciphertext:
    """Multiply ct by a fresh Enc(0) so the result is unlinkable to ct (same plaintext)."""
    return add(_check_pk(pk).params, ct, encrypt(pk, 0, r))


class FixedBaseTable:
    """Powers base^(j * 2^(w*i)) mod m, so base^e costs about bits/w multiplications and no squarings.

    Memory is ceil(bits/w) * 2^w residues: about 11 MB for w = 6 at 2048-bit N (residues mod N^2).
    """

    def __init__(self, base: int, modulus: int, exp_bits: int, window: int = 6) -> None:
        modulus, exp_bits = _as_int(modulus, "modulus"), _as_int(exp_bits, "exp_bits")
        window = _as_int(window, "window")
        if modulus < 2 or exp_bits < 1 or not 1 <= window <= 10:
            raise ValueError("need modulus >= 2, exp_bits >= 1 and 1 <= window <= 10")
        self._mod = mpz(modulus)
        self._window = window
        self._mask = (1 << window) - 1
        self._rows = self._build(_as_mpz(base, "base") % self._mod, -(-exp_bits // window))

    def _build(self, b: mpz, count: int) -> tuple[tuple[mpz, ...], ...]:
        rows = []
        for _ in range(count):
            row = [_ONE, b]
            for _ in range(2, 1 << self._window):
                row.append(row[-1] * b % self._mod)
            rows.append(tuple(row))
            b = row[-1] * b % self._mod
        return tuple(rows)

    @property
    def exp_bits(self) -> int:
        """Largest exponent bit length the table covers."""
        return len(self._rows) * self._window

    def pow(self, e: int) -> mpz:
        """base^e mod m for 0 <= e < 2^exp_bits."""
        e = _as_int(e, "e")
        if e < 0 or e.bit_length() > self.exp_bits:
            raise ValueError("exponent out of the table's range")
        acc, i = _ONE, 0
        while e:
            digit = e & self._mask
            if digit:
                acc = acc * self._rows[i][digit] % self._mod
            e >>= self._window
            i += 1
        return acc


# ---------------------------------------------------------------------------------------------- decryption


def weak_decrypt(sk: WeakSecretKey, ct: Ciphertext) -> mpz:
    """WDec: m = L(T1 / T2^theta mod N^2); IntegrityError if ct is malformed or under another key."""
    if not isinstance(sk, WeakSecretKey):
        raise TypeError("sk must be WeakSecretKey")
    params = sk.params
    validate_ciphertext(params, ct)
    x = ct.t1 * gmpy2.powmod(ct.t2, -sk.theta, params.n_sq) % params.n_sq
    return _L(x, params.n)


def weak_decrypt_many(sk: WeakSecretKey, cts: Iterable[Ciphertext]) -> list[mpz]:
    """WDec of each ciphertext."""
    return [weak_decrypt(sk, ct) for ct in cts]


def _strong_decrypt_half(t1: mpz, prime: mpz, prime_sq: mpz, h: mpz) -> mpz:
    return (gmpy2.powmod(t1, prime - 1, prime_sq) - 1) // prime * h % prime


def strong_decrypt(strong: StrongKey, ct: Ciphertext) -> mpz:
    """SDec of a ciphertext under any user's key, with CRT over p^2 and q^2 (about 4x faster than lambda).

    Equal to L(T1^lambda mod N^2) * lambda^-1 mod N for every T1 in Z*_(N^2).
    """
    if not isinstance(strong, StrongKey):
        raise TypeError("strong must be StrongKey")
    validate_ciphertext(strong.params, ct)
    p, q = strong.p, strong.q
    p_sq, q_sq, hp, hq, q_inv = strong._crt
    mp = _strong_decrypt_half(ct.t1, p, p_sq, hp)
    mq = _strong_decrypt_half(ct.t1, q, q_sq, hq)
    return mq + q * ((mp - mq) * q_inv % p)


def strong_decrypt_many(strong: StrongKey, cts: Iterable[Ciphertext]) -> list[mpz]:
    """SDec of each ciphertext."""
    return [strong_decrypt(strong, ct) for ct in cts]


def _check_share(share: object, role: int) -> StrongKeyShare:
    if not isinstance(share, StrongKeyShare):
        raise TypeError("share must be StrongKeyShare")
    if share.role != role:
        raise ValueError(f"PSDec{role} needs the role-{role} share")
    return share


def partial_decrypt1(share1: StrongKeyShare, ct: Ciphertext) -> PartialDecryption:
    """PSDec1 (MU): CT1 = T1^lambda1 mod N^2. Reveals nothing about m without SU's share."""
    params = _check_share(share1, 1).params
    validate_ciphertext(params, ct)
    return PartialDecryption(gmpy2.powmod(ct.t1, share1.value, params.n_sq))


def partial_decrypt2(share2: StrongKeyShare, ct: Ciphertext, partial: PartialDecryption) -> mpz:
    """PSDec2 (SU): m = L(CT1 * T1^lambda2 mod N^2); IntegrityError if ct or partial is malformed."""
    params = _check_share(share2, 2).params
    validate_ciphertext(params, ct)
    if not isinstance(partial, PartialDecryption):
        raise TypeError("partial must be PartialDecryption")
    if not partial.value < params.n_sq or gmpy2.gcd(partial.value, params.n) != 1:
        raise IntegrityError()
    x = partial.value * gmpy2.powmod(ct.t1, share2.value, params.n_sq) % params.n_sq
    return _L(x, params.n)


def partial_decrypt1_many(share1: StrongKeyShare, cts: Sequence[Ciphertext]) -> list[PartialDecryption]:
    """PSDec1 of many ciphertexts in one gmpy2 call that releases the GIL (shard across threads)."""
    params = _check_share(share1, 1).params
    for ct in cts:
        validate_ciphertext(params, ct)
    values = gmpy2.powmod_base_list([ct.t1 for ct in cts], share1.value, params.n_sq)
    return [PartialDecryption(v) for v in values]


def partial_decrypt2_many(share2: StrongKeyShare, cts: Sequence[Ciphertext],
                          partials: Sequence[PartialDecryption]) -> list[mpz]:
    """PSDec2 of many ciphertexts; the lists must have equal lengths."""
    if len(cts) != len(partials):
        raise ValueError("cts and partials differ in length")
    return [partial_decrypt2(share2, ct, part) for ct, part in zip(cts, partials, strict=True)]


# ------------------------------------------------------------------------------------ homomorphic operations


def add(params: PublicParams, a: Ciphertext, b: Ciphertext) -> Ciphertext:
    """Enc(x) (+) Enc(y) = Enc(x + y mod N): component-wise product. Both must be under the same key."""
    _check_params_type(params)
    _check_ct_type(a)
    _check_ct_type(b)
    return Ciphertext(a.t1 * b.t1 % params.n_sq, a.t2 * b.t2 % params.n_sq)


def negate(params: PublicParams, a: Ciphertext) -> Ciphertext:
    """Enc(-x mod N): component-wise inverse (the same as the power N-1, far cheaper)."""
    _check_params_type(params)
    _check_ct_type(a)
    try:
        return Ciphertext(gmpy2.invert(a.t1, params.n_sq), gmpy2.invert(a.t2, params.n_sq))
    except ZeroDivisionError:
        raise IntegrityError() from None


def sub(params: PublicParams, a: Ciphertext, b: Ciphertext) -> Ciphertext:
    """Enc(x - y mod N)."""
    return add(params, a, negate(params, b))


def scalar_mul(params: PublicParams, a: Ciphertext, k: int) -> Ciphertext:
    """Enc(k * x mod N) for any integer k; k is reduced to (-N/2, N/2] to keep the exponent short."""
    _check_params_type(params)
    _check_ct_type(a)
    k = _as_int(k, "k") % int(params.n)
    if k > params.n // 2:
        a, k = negate(params, a), int(params.n) - k
    t2 = a.t2 if a.t2 == 1 else gmpy2.powmod(a.t2, k, params.n_sq)  # T1-only ciphertexts (T2 = 1) stay so
    return Ciphertext(gmpy2.powmod(a.t1, k, params.n_sq), t2)


def add_plain(params: PublicParams, a: Ciphertext, m: int) -> Ciphertext:
    """Enc(x + m mod N) for any integer m: T1 times (1 + mN). Not re-randomized."""
    _check_params_type(params)
    _check_ct_type(a)
    m = _as_int(m, "m") % int(params.n)
    return Ciphertext(a.t1 * (1 + m * params.n) % params.n_sq, a.t2)


def sum_ciphertexts(params: PublicParams, cts: Iterable[Ciphertext]) -> Ciphertext:
    """Enc of the sum of all plaintexts (at least one ciphertext)."""
    it = iter(cts)
    try:
        total = _check_ct_type(next(it))
    except StopIteration:
        raise ValueError("need at least one ciphertext") from None
    for ct in it:
        total = add(params, total, ct)
    return total


def canonical_params(params: PublicParams) -> bytes:
    """version | 'P' | u16 nb | N (nb bytes) | g (wb bytes): the parameters' encoding, which their fingerprint
    hashes and :func:`twofold.crypto.dtpkc_wire.params_to_bytes` writes."""
    _check_params_type(params)
    nb, wb = _byte_len(params.n), _byte_len(params.n_sq)
    return bytes((FORMAT_VERSION, ord("P"))) + struct.pack(">H", nb) + int(params.n).to_bytes(nb, "big") \
        + int(params.g).to_bytes(wb, "big")
