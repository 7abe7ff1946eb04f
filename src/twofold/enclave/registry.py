"""Ecall registration with declared argument and result schemas, checked on the way in and out.

A schema maps field names to Python types (``bytes``, ``str``, ``int``, ``float``, ``bool``, ``list``,
``dict``). Arguments must match exactly; results are checked before they leave the enclave, so only declared
outputs ever cross the boundary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twofold.errors import ProtocolError

Schema = dict[str, type]


@dataclass(frozen=True)
class Ecall:
    name: str
    args: Schema
    result: Schema
    handler: Callable[..., dict[str, Any]]
    doc: str


REGISTRY: dict[str, Ecall] = {}


def ecall(name: str, args: Schema, result: Schema) -> Callable[[Callable[..., dict[str, Any]]], Callable]:
    """Register ``handler(state, **args) -> result`` as an ecall."""

    def register(handler: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        if name in REGISTRY:
            raise ValueError(f"ecall {name!r} registered twice")
        REGISTRY[name] = Ecall(name, args, result, handler, (handler.__doc__ or "").strip().split("\n")[0])
        return handler

    return register


def check(schema: Schema, values: Any, what: str) -> dict[str, Any]:
    """Exactly the declared fields, each of the declared type (int accepted where float is declared)."""
    if not isinstance(values, dict):
        raise ProtocolError(f"{what} must be a map")
    if set(values) != set(schema):
        missing, extra = sorted(set(schema) - set(values)), sorted(set(values) - set(schema))
        raise ProtocolError(f"{what} fields do not match the schema (missing {missing}, unexpected {extra})")
    for field, expected in schema.items():
        value = values[field]
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ProtocolError(f"{what} field {field!r} must be {expected.__name__}")
    return values


def describe() -> dict[str, Any]:
    """The declared schema of every ecall (public: part of the enclave's interface)."""
    return {
        name: {"args": {k: t.__name__ for k, t in e.args.items()},
               "result": {k: t.__name__ for k, t in e.result.items()}, "doc": e.doc}
        for name, e in sorted(REGISTRY.items())
    }
