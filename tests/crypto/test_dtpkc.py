"""DT-PKC: known answers, independent reference formulas, homomorphisms, two-party decryption, formats."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import gmpy2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twofold.crypto import dtpkc as d
from twofold.crypto import dtpkc_wire as wire
from twofold.errors import IntegrityError, ProtocolError

HYPO = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
BIG = st.integers(min_value=0, max_value=2**600)

# Tiny fixed system for known answers: safe primes 1019 = 2*509+1 and 1187 = 2*593+1, a = 5, theta = 12345.
KAT_P, KAT_Q, KAT_A, KAT_THETA = 1019, 1187, 5, 12345
KAT_N, KAT_G, KAT_H = 1209553, 42359867579, 81326048814
# (r, m, T1, T2), computed once with plain Python pow from the formulas in the module docstring.
KAT_VECTORS = [
    (6789, 424242, 1284036446844, 561442562691),
    (1000001, 0, 693521250724, 1067017025460),
    (77, KAT_N - 1, 268562843342, 881464653605),
]


@dataclass(frozen=True)
class System:
    params: d.PublicParams
    strong: d.StrongKey
    alice: d.UserKeyPair
    bob: d.UserKeyPair
    share1: d.StrongKeyShare
    share2: d.StrongKeyShare


@pytest.fixture(scope="module")
def system() -> System:
    params, strong = d.generate_params(512)
    share1, share2 = d.split_strong_key(strong)
    return System(params, strong, d.generate_user_key(params), d.generate_user_key(params), share1, share2)


@pytest.fixture(scope="module")
def kat() -> tuple[d.PublicParams, d.StrongKey, d.UserKeyPair]:
    params, strong = d.params_from_primes(KAT_P, KAT_Q, a=KAT_A)
    return params, strong, d.user_key_from_secret(params, KAT_THETA)


# ------------------------------------------------------------------ independent reference (plain Python ints)


def ref_weak_decrypt(n: int, theta: int, t1: int, t2: int) -> int:
    x = t1 * pow(t2, -theta, n * n) % (n * n)
    assert (x - 1) % n == 0
    return (x - 1) // n


def ref_strong_decrypt(p: int, q: int, t1: int) -> int:
    n, lam = p * q, math.lcm(p - 1, q - 1)
    return (pow(t1, lam, n * n) - 1) // n * pow(lam, -1, n) % n


def ref_split_s(p: int, q: int) -> int:
    """The split target of the reference notes: s = lambda * (lambda^-1 mod N^2) mod lambda*N^2."""
    n, lam = p * q, math.lcm(p - 1, q - 1)
    return lam * pow(lam, -1, n * n) % (lam * n * n)


def _yields(decrypt: Callable[[], int], m: int) -> bool:
    """Whether decrypt() returns m (an IntegrityError counts as not decrypting)."""
    try:
        return decrypt() == m
    except IntegrityError:
        return False


def ints(ct: d.Ciphertext) -> tuple[int, int]:
    return int(ct.t1), int(ct.t2)


# ------------------------------------------------------------------------------------------- known answers


def test_kat_parameters(kat) -> None:
    params, strong, user = kat
    assert (int(params.n), int(params.g), int(user.public.h)) == (KAT_N, KAT_G, KAT_H)
    assert int(params.n_sq) == KAT_N**2
    assert int(params.g) == (-pow(KAT_A, 2 * KAT_N, KAT_N**2)) % KAT_N**2
    assert int(strong.lam) == math.lcm(KAT_P - 1, KAT_Q - 1)


@pytest.mark.parametrize(("r", "m", "t1", "t2"), KAT_VECTORS)
def test_kat_encrypt_and_decrypt(kat, r: int, m: int, t1: int, t2: int) -> None:
    _, strong, user = kat
    ct = d.encrypt(user.public, m, r=r)
    assert ints(ct) == (t1, t2)
    n2 = KAT_N**2
    assert ints(ct) == (pow(KAT_H, r, n2) * (1 + m * KAT_N) % n2, pow(KAT_G, r, n2))
    assert d.weak_decrypt(user.secret, ct) == m
    assert d.strong_decrypt(strong, ct) == m
    s1, s2 = d.split_strong_key(strong)
    assert d.partial_decrypt2(s2, ct, d.partial_decrypt1(s1, ct)) == m


def test_reference_half_lambda_fails_when_theta_r_odd(kat) -> None:
    """Why the strong key is lcm(p-1, q-1): with lcm/2 (the published value) SDec breaks for odd theta*r."""
    _, _, user = kat
    r, m = 6789, 424242  # theta = 12345 and r both odd
    t1, _ = ints(d.encrypt(user.public, m, r=r))
    half = math.lcm(KAT_P - 1, KAT_Q - 1) // 2
    x = pow(t1, half, KAT_N**2)
    assert x % KAT_N != 1  # -(1 + m*lambda*N): L() is undefined
    assert ref_strong_decrypt(KAT_P, KAT_Q, t1) == m


def test_kat_split_matches_reference_target(kat) -> None:
    _, strong, _ = kat
    s1, s2 = d.split_strong_key(strong)
    lam, n = math.lcm(KAT_P - 1, KAT_Q - 1), KAT_N
    s = (int(s1.value) + int(s2.value)) % (lam * n)
    assert s % lam == 0 and s % n == 1
    assert s == ref_split_s(KAT_P, KAT_Q) % (lam * n)


def test_params_from_primes_rejects_bad_primes() -> None:
    with pytest.raises(ValueError):
        d.params_from_primes(1019, 1019)
    with pytest.raises(ValueError):
        d.params_from_primes(1019, 1201)  # 1201 is prime but 600 is not
    with pytest.raises(ValueError):
        d.params_from_primes(5, 1019)
    with pytest.raises(ValueError):
        d.params_from_primes(KAT_P, KAT_Q, a=1)  # a^(2N) = 1 has order 1


# ----------------------------------------------------------------------------------------- key generation


def test_generated_params_shape(system: System) -> None:
    params, strong = system.params, system.strong
    assert params.bits == 512
    p, q = int(strong.p), int(strong.q)
    for prime in (p, q):
        assert gmpy2.is_prime(prime) and gmpy2.is_prime((prime - 1) // 2)
        assert prime.bit_length() == 256
    assert p * q == params.n and params.n_sq == params.n**2


def test_injected_rng_makes_generation_deterministic() -> None:
    first = d.generate_params(256, rng=random.Random(7))
    assert first == d.generate_params(256, rng=random.Random(7))
    assert first != d.generate_params(256, rng=random.Random(8))
    params = first[0]
    assert d.generate_user_key(params, rng=random.Random(1)) == d.generate_user_key(params, rng=random.Random(1))


def test_generate_safe_prime_exact_bits() -> None:
    p = d.generate_safe_prime(96)
    assert p.bit_length() == 96 and gmpy2.is_prime(p) and gmpy2.is_prime((p - 1) // 2)


def test_generate_params_with_given_primes(system: System) -> None:
    primes = (int(system.strong.p), int(system.strong.q))
    params, _ = d.generate_params(512, primes=primes)
    assert params.n == system.params.n and params.g != system.params.g  # fresh g
    with pytest.raises(ValueError):
        d.generate_params(514, primes=primes)
    with pytest.raises(ValueError):
        d.generate_params(64)
    with pytest.raises(TypeError):
        d.generate_params(512.0)  # type: ignore[arg-type]


def test_secrets_are_not_in_repr(system: System) -> None:
    assert str(system.alice.secret.theta) not in repr(system.alice.secret)
    assert str(system.share1.value) not in repr(system.share1)
    assert str(system.strong.p) not in repr(system.strong)


# ----------------------------------------------------------------------------------------------- decryption


@HYPO
@given(m=BIG)
def test_round_trips(system: System, m: int) -> None:
    m %= int(system.params.n)
    for user in (system.alice, system.bob):
        ct = d.encrypt(user.public, m)
        assert d.weak_decrypt(user.secret, ct) == m
        assert d.strong_decrypt(system.strong, ct) == m
        assert d.partial_decrypt2(system.share2, ct, d.partial_decrypt1(system.share1, ct)) == m


@HYPO
@given(m=BIG)
def test_decryption_matches_reference_formulas(system: System, m: int) -> None:
    m %= int(system.params.n)
    ct = d.encrypt(system.alice.public, m)
    n, theta = int(system.params.n), int(system.alice.secret.theta)
    assert ref_weak_decrypt(n, theta, *ints(ct)) == m
    assert ref_strong_decrypt(int(system.strong.p), int(system.strong.q), int(ct.t1)) == m


@HYPO
@given(t=BIG)
def test_crt_strong_decrypt_equals_lambda_formula_on_any_unit(system: System, t: int) -> None:
    n2 = int(system.params.n_sq)
    t1 = t % n2
    if t1 == 0 or math.gcd(t1, int(system.params.n)) != 1:
        return
    ct = d.Ciphertext(t1, 1)
    assert d.strong_decrypt(system.strong, ct) == ref_strong_decrypt(int(system.strong.p), int(system.strong.q), t1)


def test_fresh_randomness_per_encryption(system: System) -> None:
    cts = [d.encrypt(system.alice.public, 42) for _ in range(20)]
    assert len({ints(c) for c in cts}) == 20
    assert len({int(c.t2) for c in cts}) == 20


def test_weak_key_of_other_user_is_rejected(system: System) -> None:
    ct = d.encrypt(system.alice.public, 1234)
    with pytest.raises(IntegrityError):
        d.weak_decrypt(system.bob.secret, ct)


def test_single_share_does_not_decrypt(system: System) -> None:
    params, m = system.params, 987654321
    ct = d.encrypt(system.alice.public, m)
    n, n2 = int(params.n), int(params.n_sq)
    for share in (system.share1, system.share2):
        x = pow(int(ct.t1), int(share.value), n2)
        assert x % n != 1 or (x - 1) // n != m
    lone = d.PartialDecryption(1)  # SU pretending MU contributed nothing
    assert not _yields(lambda: d.partial_decrypt2(system.share2, ct, lone), m)
    other1, other2 = d.split_strong_key(system.strong)
    # shares from two different splits do not combine
    assert not _yields(lambda: d.partial_decrypt2(other2, ct, d.partial_decrypt1(system.share1, ct)), m)
    assert d.partial_decrypt2(other2, ct, d.partial_decrypt1(other1, ct)) == m


def test_shares_are_fresh_and_sum_to_s(system: System) -> None:
    strong = system.strong
    modulus = int(strong.lam) * int(system.params.n)
    a1, a2 = d.split_strong_key(strong)
    assert a1.value != system.share1.value
    s = (int(a1.value) + int(a2.value)) % modulus
    assert s == (int(system.share1.value) + int(system.share2.value)) % modulus
    assert s % int(strong.lam) == 0 and s % int(system.params.n) == 1


def test_share_roles_are_enforced(system: System) -> None:
    ct = d.encrypt(system.alice.public, 5)
    with pytest.raises(ValueError):
        d.partial_decrypt1(system.share2, ct)
    with pytest.raises(ValueError):
        d.partial_decrypt2(system.share1, ct, d.partial_decrypt1(system.share1, ct))


def test_tampered_partial_is_rejected(system: System) -> None:
    ct = d.encrypt(system.alice.public, 5)
    part = d.partial_decrypt1(system.share1, ct)
    with pytest.raises(IntegrityError):
        d.partial_decrypt2(system.share2, ct, d.PartialDecryption(part.value + 1))
    with pytest.raises(IntegrityError):
        d.partial_decrypt2(system.share2, ct, d.PartialDecryption(system.params.n_sq))


@pytest.mark.parametrize("bad", ["zero_t2_mult", "t1_too_big", "t1_shares_p"])
def test_out_of_range_ciphertexts_are_rejected(system: System, bad: str) -> None:
    params, p = system.params, int(system.strong.p)
    ct = d.encrypt(system.alice.public, 5)
    forged = {
        "zero_t2_mult": d.Ciphertext(ct.t1, params.n),
        "t1_too_big": d.Ciphertext(ct.t1 + params.n_sq, ct.t2),
        "t1_shares_p": d.Ciphertext(p, ct.t2),
    }[bad]
    for decrypt in (lambda c: d.weak_decrypt(system.alice.secret, c), lambda c: d.strong_decrypt(system.strong, c),
                    lambda c: d.partial_decrypt1(system.share1, c)):
        with pytest.raises(IntegrityError):
            decrypt(forged)


def test_batched_helpers(system: System) -> None:
    ms = [0, 1, 2, 3, int(system.params.n) - 1]
    cts = d.encrypt_many(system.alice.public, ms)
    assert d.weak_decrypt_many(system.alice.secret, cts) == ms
    assert d.strong_decrypt_many(system.strong, cts) == ms
    parts = d.partial_decrypt1_many(system.share1, cts)
    assert d.partial_decrypt2_many(system.share2, cts, parts) == ms
    assert d.partial_decrypt1_many(system.share1, []) == []
    with pytest.raises(ValueError):
        d.partial_decrypt2_many(system.share2, cts, parts[:-1])
    assert d.weak_decrypt(system.alice.secret, d.sum_ciphertexts(system.params, cts[:4])) == 6
    with pytest.raises(ValueError):
        d.sum_ciphertexts(system.params, [])


# ------------------------------------------------------------------------------------------- homomorphisms


@HYPO
@given(a=BIG, b=BIG, k=st.integers(min_value=-(2**600), max_value=2**600))
def test_homomorphic_identities(system: System, a: int, b: int, k: int) -> None:
    params, pk, sk = system.params, system.alice.public, system.alice.secret
    n = int(params.n)
    a, b = a % n, b % n
    ca, cb = d.encrypt(pk, a), d.encrypt(pk, b)
    assert d.weak_decrypt(sk, d.add(params, ca, cb)) == (a + b) % n
    assert d.weak_decrypt(sk, d.sub(params, ca, cb)) == (a - b) % n
    assert d.weak_decrypt(sk, d.negate(params, ca)) == (-a) % n
    assert d.weak_decrypt(sk, d.scalar_mul(params, ca, k)) == (k * a) % n
    assert d.weak_decrypt(sk, d.add_plain(params, ca, k)) == (a + k) % n
    assert d.strong_decrypt(system.strong, d.scalar_mul(params, ca, k)) == (k * a) % n


def test_negate_equals_power_n_minus_one(system: System) -> None:
    params, pk, sk = system.params, system.alice.public, system.alice.secret
    ca = d.encrypt(pk, 77)
    powered = d.Ciphertext(pow(int(ca.t1), int(params.n) - 1, int(params.n_sq)),
                           pow(int(ca.t2), int(params.n) - 1, int(params.n_sq)))
    assert d.weak_decrypt(sk, powered) == d.weak_decrypt(sk, d.negate(params, ca))


def test_rerandomize_changes_ciphertext_not_plaintext(system: System) -> None:
    params, pk, sk = system.params, system.alice.public, system.alice.secret
    ct = d.scalar_mul(params, d.encrypt(pk, 9), 0)
    assert ints(ct) == (1, 1)  # trivial: must be re-randomized before it leaves
    fresh = d.rerandomize(pk, ct)
    assert fresh != ct and d.weak_decrypt(sk, fresh) == 0
    assert d.rerandomize(pk, ct) != fresh


# ---------------------------------------------------------------------------------------- input validation


def test_encrypt_validates_inputs(system: System) -> None:
    pk, n = system.alice.public, int(system.params.n)
    for bad in (-1, n):
        with pytest.raises(ValueError):
            d.encrypt(pk, bad)
    for bad_type in (1.0, "1", None, True):
        with pytest.raises(TypeError):
            d.encrypt(pk, bad_type)  # type: ignore[arg-type]
    for r in (0, n):
        with pytest.raises(ValueError):
            d.encrypt(pk, 1, r=r)
    with pytest.raises(TypeError):
        d.encrypt(system.alice.secret, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        d.weak_decrypt(system.alice.public, d.encrypt(pk, 1))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        d.add(system.params, d.encrypt(pk, 1), (1, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        d.scalar_mul(system.alice.public, d.encrypt(pk, 1), 2)  # type: ignore[arg-type]


def test_value_types_validate() -> None:
    with pytest.raises(ValueError):
        d.Ciphertext(0, 1)
    with pytest.raises(TypeError):
        d.Ciphertext("1", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        d.PublicParams(KAT_N, 1)
    with pytest.raises(ValueError):
        d.PublicParams(KAT_N + 1, KAT_G)
    params = d.PublicParams(KAT_N, KAT_G)
    with pytest.raises(ValueError):
        d.StrongKeyShare(params, 3, 5)
    with pytest.raises(ValueError):
        d.WeakSecretKey(params, KAT_N)
    with pytest.raises(ValueError):
        d.StrongKey(params, 1019, 1019)


def test_ciphertext_is_immutable(system: System) -> None:
    ct = d.encrypt(system.alice.public, 1)
    with pytest.raises(AttributeError):
        ct.t1 = 5  # type: ignore[misc]


# -------------------------------------------------------------------------------------- encryption pool


@HYPO
@given(e=st.integers(min_value=0, max_value=2**512 - 1), window=st.integers(min_value=1, max_value=7))
def test_fixed_base_table_matches_powmod(system: System, e: int, window: int) -> None:
    n2 = int(system.params.n_sq)
    table = _table_cache(system, window)
    assert table.pow(e) == pow(int(system.params.g), e, n2)


def test_fixed_base_table_rejects_out_of_range(system: System) -> None:
    table = _table_cache(system, 6)
    with pytest.raises(ValueError):
        table.pow(-1)
    with pytest.raises(ValueError):
        table.pow(1 << table.exp_bits)


_TABLES: dict[tuple[int, int], d.FixedBaseTable] = {}


def _table_cache(system: System, window: int) -> d.FixedBaseTable:
    key = (int(system.params.n), window)
    if key not in _TABLES:
        _TABLES[key] = d.FixedBaseTable(system.params.g, system.params.n_sq, 512, window)
    return _TABLES[key]


# ----------------------------------------------------------------------------------------- serialization


def test_serialization_round_trips(system: System) -> None:
    params = system.params
    raw = wire.params_to_bytes(params)
    assert raw[0] == d.FORMAT_VERSION
    assert wire.params_from_bytes(raw, min_bits=512) == params
    pk = system.alice.public
    assert wire.public_key_from_bytes(params, wire.public_key_to_bytes(pk)) == pk
    sk = system.alice.secret
    assert wire.weak_key_from_bytes(params, wire.weak_key_to_bytes(sk)) == sk
    for share in (system.share1, system.share2):
        assert wire.share_from_bytes(params, wire.share_to_bytes(share)) == share
    cts = d.encrypt_many(pk, [1, 2, 3])
    one = wire.ciphertext_to_bytes(params, cts[0])
    assert len(one) == 2 + 2 * 128
    assert wire.ciphertext_from_bytes(params, one) == cts[0]
    assert wire.ciphertexts_from_bytes(params, wire.ciphertexts_to_bytes(params, cts)) == cts
    assert wire.ciphertexts_from_bytes(params, wire.ciphertexts_to_bytes(params, [])) == []
    part = d.partial_decrypt1(system.share1, cts[0])
    assert wire.partial_from_bytes(params, wire.partial_to_bytes(params, part)) == part


def test_params_min_bits_is_a_secure_default(system: System) -> None:
    with pytest.raises(ProtocolError):
        wire.params_from_bytes(wire.params_to_bytes(system.params))


def test_fingerprint_binds_keys_to_params(system: System, kat) -> None:
    other_params = kat[0]
    with pytest.raises(ProtocolError):
        wire.public_key_from_bytes(other_params, wire.public_key_to_bytes(system.alice.public))
    wb = 2 + d.FINGERPRINT_BYTES + 128
    forged = wire.public_key_to_bytes(system.alice.public)[:2] + bytes(d.FINGERPRINT_BYTES) + bytes(128)
    assert len(forged) == wb
    with pytest.raises(ProtocolError):
        wire.public_key_from_bytes(system.params, forged)


def _mutations(blob: bytes) -> list[bytes]:
    return [b"", blob[:1], bytes([99]) + blob[1:], blob[:1] + b"Z" + blob[2:], blob[:-1], blob + b"\x00"]


def test_malformed_bytes_raise_protocol_error(system: System) -> None:
    params, pk = system.params, system.alice.public
    ct = d.encrypt(pk, 3)
    cases = [
        (lambda b: wire.params_from_bytes(b, min_bits=0), wire.params_to_bytes(params)),
        (lambda b: wire.public_key_from_bytes(params, b), wire.public_key_to_bytes(pk)),
        (lambda b: wire.weak_key_from_bytes(params, b), wire.weak_key_to_bytes(system.alice.secret)),
        (lambda b: wire.share_from_bytes(params, b), wire.share_to_bytes(system.share1)),
        (lambda b: wire.ciphertext_from_bytes(params, b), wire.ciphertext_to_bytes(params, ct)),
        (lambda b: wire.ciphertexts_from_bytes(params, b), wire.ciphertexts_to_bytes(params, [ct, ct])),
        (lambda b: wire.partial_from_bytes(params, b),
         wire.partial_to_bytes(params, d.partial_decrypt1(system.share1, ct))),
    ]
    for parse, blob in cases:
        parse(blob)
        for bad in _mutations(blob):
            with pytest.raises(ProtocolError):
                parse(bad)
        with pytest.raises(TypeError):
            parse(blob.hex())


def test_out_of_range_values_in_bytes(system: System) -> None:
    params = system.params
    header = bytes([d.FORMAT_VERSION, ord("C")])
    wb, n2, n, p = 128, int(params.n_sq), int(params.n), int(system.strong.p)
    good = int(d.encrypt(system.alice.public, 1).t2).to_bytes(wb, "big")
    for t1 in (0, n, 3 * n, p, n2, 2 ** (8 * wb) - 1):
        with pytest.raises(IntegrityError):
            wire.ciphertext_from_bytes(params, header + t1.to_bytes(wb, "big") + good)
        with pytest.raises(IntegrityError):
            wire.ciphertext_from_bytes(params, header + good + t1.to_bytes(wb, "big"))
    bad_share = wire.share_to_bytes(system.share1)
    with pytest.raises(ProtocolError):
        wire.share_from_bytes(params, bad_share[:2] + b"\x07" + bad_share[3:])
    raw = wire.params_to_bytes(params)
    last_n_byte = 2 + 2 + 64 - 1
    even_n = raw[:last_n_byte] + bytes([raw[last_n_byte] & 0xFE]) + raw[last_n_byte + 1 :]
    with pytest.raises(ProtocolError):
        wire.params_from_bytes(even_n, min_bits=0)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=600), kind=st.sampled_from("PKWSCBD"))
def test_fuzzed_bytes_only_raise_twofold_errors(system: System, blob: bytes, kind: str) -> None:
    parsers = {
        "P": lambda b: wire.params_from_bytes(b, min_bits=0),
        "K": lambda b: wire.public_key_from_bytes(system.params, b),
        "W": lambda b: wire.weak_key_from_bytes(system.params, b),
        "S": lambda b: wire.share_from_bytes(system.params, b),
        "C": lambda b: wire.ciphertext_from_bytes(system.params, b),
        "B": lambda b: wire.ciphertexts_from_bytes(system.params, b),
        "D": lambda b: wire.partial_from_bytes(system.params, b),
    }
    data = bytes([d.FORMAT_VERSION, ord(kind)]) + blob
    with contextlib.suppress(ProtocolError, IntegrityError):
        parsers[kind](data)
