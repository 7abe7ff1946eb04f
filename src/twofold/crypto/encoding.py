"""Plaintext encodings for DT-PKC: signed integers and fixed-point reals in Z_N, and slot packing.

Signed integers z with |z| <= (N-1)/2 map to z mod N (negatives as N - |z|); decoding reads the upper half of
Z_N as negative. Fixed-point reals are scaled by 2^f and rounded half to even, so after homomorphic sums the
scale stays 2^f and after a product with another encoded value it becomes 2^(2f): the caller tracks the scale
and decodes with the matching ``frac_bits``.

Packing puts several small values in one plaintext, slot i holding bits [i*w, (i+1)*w) with
w = slot_bits + headroom_bits, so up to 2^headroom_bits packed plaintexts (or a packed plaintext times a
scalar below 2^headroom_bits) can be added homomorphically without one slot carrying into the next.
Signed values use an ``offset`` added to every slot before packing; after a sum of ``terms`` packed
plaintexts each slot holds sum(v) + terms*offset, which :func:`unpack` removes.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from numbers import Integral, Rational, Real

from twofold.crypto.integers import as_int as _as_int


def _check_modulus(n: object) -> int:
    n = _as_int(n, "n")
    if n < 3 or n % 2 == 0:
        raise ValueError("modulus must be an odd integer >= 3")
    return n


def _check_frac_bits(frac_bits: object) -> int:
    frac_bits = _as_int(frac_bits, "frac_bits")
    if frac_bits < 0:
        raise ValueError("frac_bits must be >= 0")
    return frac_bits


# ----------------------------------------------------------------------------------------- signed integers


def max_signed(n: int) -> int:
    """Largest magnitude a signed value may have in Z_N: (N-1)/2."""
    return (_check_modulus(n) - 1) // 2


def encode_signed(z: int, n: int) -> int:
    """z mod N for |z| <= (N-1)/2; OverflowError beyond."""
    z, n = _as_int(z, "z"), _check_modulus(n)
    if abs(z) > (n - 1) // 2:
        raise OverflowError(f"|value| exceeds (N-1)/2 for a {n.bit_length()}-bit N")
    return z % n


def decode_signed(v: int, n: int) -> int:
    """Inverse of :func:`encode_signed`: values above (N-1)/2 are negative."""
    v, n = _as_int(v, "v"), _check_modulus(n)
    if not 0 <= v < n:
        raise ValueError("encoded value must lie in [0, N)")
    return v - n if v > (n - 1) // 2 else v


# -------------------------------------------------------------------------------------------- fixed point


def to_fixed(x: Real | int, frac_bits: int) -> int:
    """round(x * 2^frac_bits), half to even, exactly (no rounding beyond the input's own)."""
    frac_bits = _check_frac_bits(frac_bits)
    if isinstance(x, bool) or not isinstance(x, Real | int):
        raise TypeError(f"value must be a real number, not {type(x).__name__}")
    if isinstance(x, Integral):
        return operator.index(x) << frac_bits
    if isinstance(x, Rational):
        return round(Fraction(x.numerator, x.denominator) * (1 << frac_bits))
    x = float(x)
    if not math.isfinite(x):
        raise ValueError("cannot encode NaN or infinity")
    try:
        return round(math.ldexp(x, frac_bits))  # scaling by 2^f is exact for a finite float
    except OverflowError:
        return round(Fraction(x) * (1 << frac_bits))


def encode_fixed(x: Real | int, n: int, frac_bits: int) -> int:
    """Fixed-point value round(x * 2^f) as an element of Z_N (negatives as N - |.|)."""
    return encode_signed(to_fixed(x, frac_bits), n)


def decode_fixed(v: int, n: int, frac_bits: int) -> float:
    """Inverse of :func:`encode_fixed` for scale 2^frac_bits (pass 2f after one product of encoded values)."""
    frac_bits = _check_frac_bits(frac_bits)
    return decode_signed(v, n) / (1 << frac_bits)


def decode_fixed_exact(v: int, n: int, frac_bits: int) -> Fraction:
    """Like :func:`decode_fixed` but exact."""
    frac_bits = _check_frac_bits(frac_bits)
    return Fraction(decode_signed(v, n), 1 << frac_bits)


@dataclass(frozen=True)
class FixedPointCodec:
    """Fixed-point codec bound to a modulus N and a scale 2^frac_bits."""

    n: int
    frac_bits: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", _check_modulus(self.n))
        object.__setattr__(self, "frac_bits", _check_frac_bits(self.frac_bits))

    @property
    def max_abs(self) -> float:
        """Largest magnitude that still encodes."""
        return max_signed(self.n) / (1 << self.frac_bits)

    def encode(self, x: Real | int) -> int:
        """x -> Z_N."""
        return encode_fixed(x, self.n, self.frac_bits)

    def decode(self, v: int, *, products: int = 0) -> float:
        """Z_N -> float, for a value that went through ``products`` multiplications by encoded values."""
        return decode_fixed(v, self.n, self.frac_bits * (1 + _as_int(products, "products")))

    def encode_many(self, xs: Iterable[Real | int]) -> list[int]:
        """Encode each value."""
        return [self.encode(x) for x in xs]

    def decode_many(self, vs: Iterable[int], *, products: int = 0) -> list[float]:
        """Decode each value."""
        return [self.decode(v, products=products) for v in vs]


# ---------------------------------------------------------------------------------------------- packing


@dataclass(frozen=True)
class SlotLayout:
    """``slots`` slots of ``slot_bits`` value bits plus ``headroom_bits`` for sums; signed via ``offset``.

    Values must lie in [-offset, 2^slot_bits - offset).
    """

    slot_bits: int
    headroom_bits: int
    slots: int
    offset: int = 0

    def __post_init__(self) -> None:
        for name in ("slot_bits", "headroom_bits", "slots", "offset"):
            object.__setattr__(self, name, _as_int(getattr(self, name), name))
        if self.slot_bits < 1 or self.headroom_bits < 0 or self.slots < 1:
            raise ValueError("need slot_bits >= 1, headroom_bits >= 0 and slots >= 1")
        if not 0 <= self.offset < (1 << self.slot_bits):
            raise ValueError("offset must lie in [0, 2^slot_bits)")

    @property
    def width(self) -> int:
        """Bits per slot: value bits plus headroom."""
        return self.slot_bits + self.headroom_bits

    @property
    def capacity_bits(self) -> int:
        """Total bits used by a packed plaintext."""
        return self.width * self.slots

    @property
    def max_terms(self) -> int:
        """How many packed plaintexts may be summed without overflow."""
        return 1 << self.headroom_bits

    @classmethod
    def for_modulus(cls, n: int, slot_bits: int, headroom_bits: int, offset: int = 0) -> SlotLayout:
        """The layout with as many slots as fit below N."""
        width = _as_int(slot_bits, "slot_bits") + _as_int(headroom_bits, "headroom_bits")
        slots = (_check_modulus(n).bit_length() - 1) // max(width, 1)
        if slots < 1:
            raise ValueError("not even one slot fits below N")
        return cls(slot_bits, headroom_bits, slots, offset)

    def check_modulus(self, n: int) -> None:
        """ValueError unless every packed sum (below 2^capacity_bits) stays below N."""
        bits = _check_modulus(n).bit_length()
        if self.capacity_bits >= bits:
            raise ValueError(f"layout needs {self.capacity_bits} bits below N, N has only {bits}")


def pack(layout: SlotLayout, values: Sequence[int]) -> int:
    """Pack up to ``layout.slots`` values (missing slots hold 0) into one non-negative integer."""
    if len(values) > layout.slots:
        raise OverflowError(f"{len(values)} values do not fit in {layout.slots} slots")
    limit = 1 << layout.slot_bits
    packed = 0
    for i, value in enumerate(values):
        stored = _as_int(value, "value") + layout.offset
        if not 0 <= stored < limit:
            raise OverflowError(f"value at slot {i} outside [{-layout.offset}, {limit - layout.offset})")
        packed |= stored << (i * layout.width)
    return packed


def unpack(layout: SlotLayout, packed: int, *, terms: int = 1, count: int | None = None) -> list[int]:
    """Slot values of ``packed``, the sum of ``terms`` packed plaintexts; the first ``count`` slots.

    OverflowError if ``packed`` exceeds the layout's capacity (sums overflowed the top slot's headroom, or a
    negative total wrapped modulo N).
    """
    packed, terms = _as_int(packed, "packed"), _as_int(terms, "terms")
    count = layout.slots if count is None else _as_int(count, "count")
    if not 1 <= terms <= layout.max_terms:
        raise ValueError(f"terms must lie in [1, {layout.max_terms}] for {layout.headroom_bits} headroom bits")
    if not 0 <= count <= layout.slots:
        raise ValueError(f"count must lie in [0, {layout.slots}]")
    if not 0 <= packed < (1 << layout.capacity_bits):
        raise OverflowError("packed value exceeds the layout's capacity: headroom overflowed or value wrapped")
    mask = (1 << layout.width) - 1
    shift = terms * layout.offset
    return [((packed >> (i * layout.width)) & mask) - shift for i in range(count)]
