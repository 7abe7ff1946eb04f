"""Signed and fixed-point encodings into Z_N, and slot packing, alone and through DT-PKC."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twofold.crypto import dtpkc as d
from twofold.crypto import encoding as enc

N = (2**127 - 1) * (2**89 - 1)  # any odd modulus works for the encodings
HALF = (N - 1) // 2
FAST = settings(max_examples=100, deadline=None)
REALS = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)


# ---------------------------------------------------------------------------------------- signed integers


@FAST
@given(z=st.integers(min_value=-HALF, max_value=HALF))
def test_signed_round_trip(z: int) -> None:
    v = enc.encode_signed(z, N)
    assert 0 <= v < N
    assert enc.decode_signed(v, N) == z


@FAST
@given(a=st.integers(min_value=-(2**100), max_value=2**100), b=st.integers(min_value=-(2**100), max_value=2**100))
def test_signed_values_add_in_z_n(a: int, b: int) -> None:
    total = (enc.encode_signed(a, N) + enc.encode_signed(b, N)) % N
    assert enc.decode_signed(total, N) == a + b


def test_signed_boundaries() -> None:
    assert enc.max_signed(N) == HALF
    assert enc.decode_signed(enc.encode_signed(HALF, N), N) == HALF
    assert enc.decode_signed(enc.encode_signed(-HALF, N), N) == -HALF
    assert enc.encode_signed(-1, N) == N - 1
    for bad in (HALF + 1, -HALF - 1):
        with pytest.raises(OverflowError):
            enc.encode_signed(bad, N)
    for bad in (-1, N):
        with pytest.raises(ValueError):
            enc.decode_signed(bad, N)
    with pytest.raises(ValueError):
        enc.encode_signed(1, 10)  # even modulus
    with pytest.raises(TypeError):
        enc.encode_signed(1.0, N)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------------- fixed point


@FAST
@given(x=REALS, f=st.integers(min_value=0, max_value=64))
def test_fixed_round_trip_within_half_ulp(x: float, f: int) -> None:
    decoded = enc.decode_fixed_exact(enc.encode_fixed(x, N, f), N, f)
    assert abs(decoded - Fraction(x)) <= Fraction(1, 2 ** (f + 1))


@FAST
@given(k=st.integers(min_value=-(2**60), max_value=2**60), f=st.integers(min_value=0, max_value=40))
def test_fixed_exact_for_dyadic_values(k: int, f: int) -> None:
    x = Fraction(k, 2**f)
    assert enc.decode_fixed_exact(enc.encode_fixed(x, N, f), N, f) == x
    assert enc.decode_fixed(enc.encode_fixed(x, N, f), N, f) == float(x)


@FAST
@given(a=REALS, b=REALS)
def test_fixed_sum_and_product_scales(a: float, b: float) -> None:
    f = 20
    ea, eb = enc.encode_fixed(a, N, f), enc.encode_fixed(b, N, f)
    step = 2.0**-f
    assert math.isclose(enc.decode_fixed((ea + eb) % N, N, f), a + b, abs_tol=step)
    product = enc.decode_fixed(ea * eb % N, N, 2 * f)
    assert math.isclose(product, a * b, rel_tol=1e-9, abs_tol=step * (abs(a) + abs(b) + 1))


def test_fixed_rounding_and_types() -> None:
    assert enc.to_fixed(2.5, 0) == 2 and enc.to_fixed(3.5, 0) == 4  # half to even
    assert enc.to_fixed(-0.75, 2) == -3
    assert enc.to_fixed(3, 4) == 48
    assert enc.to_fixed(Fraction(1, 3), 3) == 3
    assert enc.to_fixed(1e300, 200) == int(1e300) << 200  # beyond float range after scaling
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            enc.encode_fixed(bad, N, 8)
    for bad_type in ("1.0", None, True, complex(1, 0)):
        with pytest.raises(TypeError):
            enc.encode_fixed(bad_type, N, 8)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        enc.encode_fixed(1.0, N, -1)
    with pytest.raises(OverflowError):
        enc.encode_fixed(2.0**200, N, 20)


def test_fixed_accepts_numpy_scalars() -> None:
    np = pytest.importorskip("numpy")
    assert enc.to_fixed(np.float64(0.5), 4) == 8
    assert enc.to_fixed(np.float32(-0.25), 4) == -4
    assert enc.to_fixed(np.int64(-3), 2) == -12


def test_codec() -> None:
    codec = enc.FixedPointCodec(N, 16)
    assert codec.max_abs == HALF / 2**16
    xs = [-1.5, 0.0, 3.25, 1e6]
    assert codec.decode_many(codec.encode_many(xs)) == xs
    prod = codec.encode(1.5) * codec.encode(-2.0) % N
    assert codec.decode(prod, products=1) == -3.0
    with pytest.raises(ValueError):
        enc.FixedPointCodec(N, -3)
    with pytest.raises(ValueError):
        enc.FixedPointCodec(4, 3)


# ---------------------------------------------------------------------------------------------- packing


LAYOUT = enc.SlotLayout(slot_bits=12, headroom_bits=4, slots=6)
SIGNED = enc.SlotLayout(slot_bits=12, headroom_bits=4, slots=6, offset=2048)
UNSIGNED_SLOTS = st.lists(st.integers(min_value=0, max_value=2**12 - 1), min_size=0, max_size=6)
SIGNED_SLOTS = st.lists(st.integers(min_value=-2048, max_value=2047), min_size=6, max_size=6)


@FAST
@given(values=UNSIGNED_SLOTS)
def test_pack_round_trip(values: list[int]) -> None:
    packed = enc.pack(LAYOUT, values)
    assert 0 <= packed < 2**LAYOUT.capacity_bits
    assert enc.unpack(LAYOUT, packed, count=len(values)) == values
    assert enc.unpack(LAYOUT, packed) == values + [0] * (6 - len(values))


@FAST
@given(rows=st.lists(SIGNED_SLOTS, min_size=1, max_size=16))
def test_packed_sums_with_offset(rows: list[list[int]]) -> None:
    total = sum(enc.pack(SIGNED, row) for row in rows)
    assert enc.unpack(SIGNED, total, terms=len(rows)) == [sum(col) for col in zip(*rows, strict=True)]


@FAST
@given(values=st.lists(st.integers(min_value=0, max_value=2**12 - 1), min_size=6, max_size=6),
       k=st.integers(min_value=1, max_value=16))
def test_packed_scalar_multiple_within_headroom(values: list[int], k: int) -> None:
    assert enc.unpack(LAYOUT, k * enc.pack(LAYOUT, values)) == [k * v for v in values]


def test_pack_overflow_errors() -> None:
    with pytest.raises(OverflowError, match="slot 1"):
        enc.pack(LAYOUT, [0, 2**12])
    with pytest.raises(OverflowError):
        enc.pack(LAYOUT, [-1])
    with pytest.raises(OverflowError):
        enc.pack(SIGNED, [2048])
    with pytest.raises(OverflowError):
        enc.pack(SIGNED, [-2049])
    with pytest.raises(OverflowError, match="7 values"):
        enc.pack(LAYOUT, [1] * 7)
    with pytest.raises(TypeError):
        enc.pack(LAYOUT, [1.5])  # type: ignore[list-item]
    top_full = enc.pack(LAYOUT, [0] * 5 + [2**12 - 1])
    with pytest.raises(OverflowError, match="capacity"):
        enc.unpack(LAYOUT, top_full * 17)  # 17 > 2^4 terms overflows the top slot
    with pytest.raises(OverflowError):
        enc.unpack(LAYOUT, -1)
    with pytest.raises(ValueError, match="terms"):
        enc.unpack(LAYOUT, 0, terms=17)
    with pytest.raises(ValueError):
        enc.unpack(LAYOUT, 0, count=7)


def test_layout_validation_and_sizing() -> None:
    assert LAYOUT.width == 16 and LAYOUT.capacity_bits == 96 and LAYOUT.max_terms == 16
    bad_layouts = [(0, 0, 1, 0), (8, -1, 1, 0), (8, 0, 0, 0), (8, 0, 1, 256), (8, 0, 1, -1)]
    for slot_bits, headroom_bits, slots, offset in bad_layouts:
        with pytest.raises(ValueError):
            enc.SlotLayout(slot_bits, headroom_bits, slots, offset)
    fitted = enc.SlotLayout.for_modulus(N, 30, 10)
    assert fitted.slots == (N.bit_length() - 1) // 40
    fitted.check_modulus(N)
    with pytest.raises(ValueError):
        enc.SlotLayout(30, 10, fitted.slots + 1).check_modulus(N)
    with pytest.raises(ValueError):
        enc.SlotLayout.for_modulus(1019, 30, 10)


# --------------------------------------------------------------------------------------- through DT-PKC


@pytest.fixture(scope="module")
def keys() -> tuple[d.PublicParams, d.StrongKey, d.UserKeyPair]:
    params, strong = d.generate_params(256)
    return params, strong, d.generate_user_key(params)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=REALS, b=REALS, w=st.integers(min_value=-1000, max_value=1000))
def test_fixed_point_through_encryption(keys, a: float, b: float, w: int) -> None:
    params, strong, user = keys
    codec = enc.FixedPointCodec(int(params.n), 16)
    ca, cb = d.encrypt(user.public, codec.encode(a)), d.encrypt(user.public, codec.encode(b))
    combined = d.scalar_mul(params, d.sub(params, ca, cb), w)  # w * (a - b)
    assert math.isclose(codec.decode(d.strong_decrypt(strong, combined)), w * (a - b), rel_tol=1e-9,
                        abs_tol=abs(w) * 2.0**-16 + 1e-12)


def test_packed_sums_through_encryption(keys) -> None:
    params, _, user = keys
    layout = enc.SlotLayout.for_modulus(int(params.n), 16, 8, offset=2**15)
    layout.check_modulus(int(params.n))
    rows = [[(i * 37 + j * 101) % 2**16 - 2**15 for j in range(layout.slots)] for i in range(10)]
    cts = [d.encrypt(user.public, enc.pack(layout, row)) for row in rows]
    total = d.weak_decrypt(user.secret, d.sum_ciphertexts(params, cts))
    assert enc.unpack(layout, total, terms=len(rows)) == [sum(col) for col in zip(*rows, strict=True)]
