"""The one framing core of every twofold link: ``u32 length (big endian) | msgpack payload``, never pickle.

Both the MU/SU protocol (:mod:`twofold.he.protocol`) and the ecall protocol (:mod:`twofold.enclave.protocol`) put
their versioned messages in these frames. Lengths are checked against the link's limit before a payload is
read, and decoding is bounded (string, list and map sizes), so a peer cannot make the reader allocate more than
the limit allows. Pure functions: no I/O, no state; the enclave may import this module.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from twofold.errors import ProtocolError

HEADER = struct.Struct(">I")


def encode(message: Any, max_frame: int) -> bytes:
    """One frame holding ``message``; ProtocolError if its payload exceeds ``max_frame`` bytes."""
    payload = msgpack.packb(message, use_bin_type=True)
    if len(payload) > max_frame:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds the limit of {max_frame}")
    return HEADER.pack(len(payload)) + payload


def length(header: bytes, max_frame: int) -> int:
    """The payload length a frame header announces, refused above ``max_frame`` or when zero."""
    (size,) = HEADER.unpack(header)
    if size > max_frame:
        raise ProtocolError(f"frame of {size} bytes exceeds the limit of {max_frame}")
    if size == 0:
        raise ProtocolError("empty frame")
    return size


def decode(payload: bytes, *, max_items: int = 1 << 24, max_map: int = 1 << 16, max_str: int = 1 << 20) -> Any:
    """The msgpack value of a payload (bounded), ProtocolError if it is not exactly one valid value."""
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True, max_bin_len=len(payload),
                               max_str_len=max_str, max_array_len=max_items, max_map_len=max_map)
    except Exception:
        raise ProtocolError("malformed frame (not msgpack)") from None
