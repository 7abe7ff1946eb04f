"""The ecall wire format: length-prefixed msgpack frames with a declared, versioned schema (never pickle).

Request:  {"v": 1, "id": int, "call": str, "args": {field: value}}
Response: {"v": 1, "id": int, "ok": true, "result": {field: value}}
          {"v": 1, "id": int, "ok": false, "error": {"type": str, "message": str}}
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from twofold.errors import ProtocolError

VERSION = 1
MAX_FRAME = 512 << 20
_HEADER = struct.Struct(">I")


def encode_frame(message: dict[str, Any]) -> bytes:
    payload = msgpack.packb(message, use_bin_type=True)
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds the {MAX_FRAME} byte limit")
    return _HEADER.pack(len(payload)) + payload


def frame_length(header: bytes) -> int:
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolError(f"frame of {length} bytes exceeds the {MAX_FRAME} byte limit")
    return length


def decode_payload(payload: bytes) -> dict[str, Any]:
    try:
        message = msgpack.unpackb(payload, raw=False, strict_map_key=True, max_bin_len=MAX_FRAME,
                                  max_str_len=1 << 20, max_array_len=1 << 24, max_map_len=1 << 16)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, TypeError):
        raise ProtocolError("frame is not valid msgpack") from None
    if not isinstance(message, dict):
        raise ProtocolError("frame must be a map")
    if message.get("v") != VERSION:
        raise ProtocolError(f"unsupported ecall protocol version {message.get('v')!r} (this is {VERSION})")
    return message
