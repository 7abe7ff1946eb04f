"""Versioned, length-prefixed msgpack frames with explicit schemas.

A frame is ``u32 length | msgpack map {"v": VERSION, "seq": n, "kind": str, "body": map}``. Each direction of a
link numbers its frames 0, 1, 2, ...; a frame with an unknown version or kind, a body that does not match its
kind's schema, a sequence number other than the next one, or a length above the link's limit raises
:class:`~twofold.errors.ProtocolError`. Bodies hold only msgpack scalars, bytes, lists and maps (no pickle);
ciphertexts travel as DT-PKC's own strict byte encodings.
"""

from __future__ import annotations

from typing import Any

from twofold import errors, framing
from twofold.errors import ProtocolError

VERSION = 1
HEADER = framing.HEADER
DEFAULT_MAX_FRAME = 256 * 1024 * 1024
_FRAME_KEYS = frozenset(("v", "seq", "kind", "body"))

Spec = Any  # "bytes" | "int" | "str" | "bool" | "float" | "map" | [Spec] | {field: Spec}

_PAIRS = [["bytes"]]  # [(ciphertext, partial decryption), ...]
SCHEMAS: dict[str, dict[str, Spec]] = {
    # replies and errors
    "error": {"code": "str", "message": "str"},
    "ok": {"result": "map"},
    "cts": {"cts": ["bytes"]},
    "busy": {"progress": "map"},  # a heartbeat: the server is still working on the request
    # parties -> MU
    "hello": {"version": "int"},
    "upload": {"model": "str", "key_id": "bytes", "chunk": "str", "records": "int", "cts": ["bytes"]},
    "train": {"model": "str", "chunk": "int", "iterations": "int", "fresh": "bool"},
    "status": {},
    "cancel": {},
    "predict": {"model": "str", "key_id": "bytes", "queries": [["bytes"]]},
    # MU -> SU building blocks
    "su.key_switch": {"target": "bytes", "items": _PAIRS},
    "su.mul": {"items": [["bytes"]]},
    "su.compare": {"target": "bytes", "items": _PAIRS},
    "su.shares_mulpack": {"counts": [_PAIRS], "width": "int", "slots": "int", "cells": [["int"]],
                          "q": ["bytes"], "c": ["bytes"], "group": "int"},
    "su.log_pack": {"groups": [["bytes"]], "gids": ["int"], "group": "int", "vwidth": "int", "frac": "int",
                    "width": "int", "offset": "int", "outputs": [[[["int"]]]]},
    "su.select_sum": {"queries": [{"q": _PAIRS, "table": ["bytes"]}], "qwidth": "int", "bins": "int",
                      "features": "int"},
    "su.argmax": {"target": "bytes", "classes": "int", "width": "int", "items": _PAIRS},
    "su.stats": {},
    # MU -> SU, Priv-LR
    "lr.load": {"session": "str", "first": "bool", "cols": "int", "width": "int", "slots": "int", "per": "int",
                "x": _PAIRS, "stats": _PAIRS, "swidth": "int", "sslots": "int"},
    "lr.forward": {"session": "str", "w": ["bytes"]},
    "lr.sigmoid": {"session": "str", "z": _PAIRS, "zwidth": "int", "zslots": "int", "trig": ["bytes"],
                   "period": "int", "harmonics": ["int"], "coef": ["int"]},
    "lr.backward": {"session": "str"},
    "lr.scale": {"items": _PAIRS, "width": "int", "slots": "int", "count": "int", "mult": "int", "shift": "int"},
    "lr.dot": {"w": ["bytes"], "x": _PAIRS, "per": "int", "cols": "int", "width": "int", "slots": "int"},
    "lr.close": {"session": "str"},
    # MU -> SU, Priv-DT
    "dt.unpack": {"items": _PAIRS, "width": "int", "slots": "int", "count": "int"},
    "dt.select": {"items": [{"q": _PAIRS, "sel": [{"feature": "int", "table": ["bytes"]}]}], "qwidth": "int",
                  "bins": "int", "features": "int"},
    "dt.pick": {"groups": [{"key": "bytes", "bits": _PAIRS, "cts": [["bytes"]]}], "width": "int", "slots": "int"},
    "dt.mul": {"items": _PAIRS, "width": "int", "count": "int"},
    "dt.duel": {"items": _PAIRS, "entries": [["bytes"]], "width": "int"},
    "dt.reveal": {"items": _PAIRS, "bound": "int"},
}

# Control messages are small: a larger frame of these kinds is refused before its body is checked.
SMALL_FRAME = 64 * 1024
KIND_MAX_BYTES = {kind: SMALL_FRAME for kind in ("error", "busy", "hello", "train", "status", "cancel", "lr.backward",
                                                 "lr.close", "su.stats")}
# The most entries a list field may hold, per message kind (DEFAULT_MAX_ITEMS otherwise).
DEFAULT_MAX_ITEMS = 1_000_000
KIND_MAX_ITEMS = {"predict": 4096, "upload": DEFAULT_MAX_ITEMS}

def error_code(exc: BaseException) -> str:
    """The wire code of an exception (its class's code; unknown exceptions are 'service')."""
    return errors.code_of(exc)


def raise_remote(body: dict[str, Any]) -> None:
    """Raise the local exception class for an error frame received from a peer."""
    raise errors.from_code(body["code"], body["message"], prefix="peer: ")


def _check(value: Any, spec: Spec, where: str, max_items: int = DEFAULT_MAX_ITEMS) -> None:
    if isinstance(spec, str):
        ok = {"bytes": lambda v: isinstance(v, bytes), "int": lambda v: type(v) is int,
              "str": lambda v: isinstance(v, str), "bool": lambda v: isinstance(v, bool),
              "float": lambda v: isinstance(v, float | int) and not isinstance(v, bool),
              "map": lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v)}[spec](value)
        if not ok:
            raise ProtocolError(f"field {where} must be {spec}")
    elif isinstance(spec, list):
        if not isinstance(value, list):
            raise ProtocolError(f"field {where} must be a list")
        if len(value) > max_items:
            raise ProtocolError(f"field {where} holds {len(value)} entries, more than the limit of {max_items}")
        for i, item in enumerate(value):
            _check(item, spec[0], f"{where}[{i}]", max_items)
    else:
        if not isinstance(value, dict) or set(value) != set(spec):
            raise ProtocolError(f"field {where} must be a map with exactly {sorted(spec)}")
        for key, sub in spec.items():
            _check(value[key], sub, f"{where}.{key}", max_items)


def validate(kind: str, body: Any) -> dict[str, Any]:
    """The body if it matches the schema of ``kind``; ProtocolError otherwise."""
    spec = SCHEMAS.get(kind) if isinstance(kind, str) else None
    if spec is None:
        raise ProtocolError(f"unknown message kind {kind!r}")
    _check(body, spec, kind, KIND_MAX_ITEMS.get(kind, DEFAULT_MAX_ITEMS))
    return body


def encode_frame(seq: int, kind: str, body: dict[str, Any], max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """One frame: length prefix and msgpack payload; the body is validated first."""
    validate(kind, body)
    return framing.encode({"v": VERSION, "seq": seq, "kind": kind, "body": body}, max_frame)


def check_length(length: int, max_frame: int) -> None:
    framing.length(framing.HEADER.pack(length), max_frame)


def decode_payload(payload: bytes, expected_seq: int) -> tuple[str, dict[str, Any]]:
    """(kind, body) of a frame payload; checks version, sequence number and schema."""
    frame = framing.decode(payload, max_items=DEFAULT_MAX_ITEMS)
    if not isinstance(frame, dict) or set(frame) != _FRAME_KEYS:
        raise ProtocolError("malformed frame (expected v, seq, kind, body)")
    if frame["v"] != VERSION:
        raise ProtocolError(f"unsupported protocol version {frame['v']!r} (this side speaks {VERSION})")
    if type(frame["seq"]) is not int or frame["seq"] != expected_seq:
        raise ProtocolError(f"out-of-order frame: sequence {frame['seq']!r}, expected {expected_seq}")
    limit = KIND_MAX_BYTES.get(frame["kind"]) if isinstance(frame["kind"], str) else None
    if limit is not None and len(payload) > limit:
        raise ProtocolError(f"a {frame['kind']} frame of {len(payload)} bytes exceeds its limit of {limit}")
    return frame["kind"], validate(frame["kind"], frame["body"])
