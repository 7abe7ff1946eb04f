"""Strict integer arguments for the number-theoretic code (DT-PKC, fixed-point encoding)."""

from __future__ import annotations

import operator


def as_int(value: object, name: str) -> int:
    """An exact integer (int, mpz, numpy integer) or TypeError; floats and bools are refused."""
    if isinstance(value, bool | float):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}") from None
