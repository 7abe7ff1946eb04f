"""The ecall wire format: length-prefixed msgpack frames with a declared, versioned schema (never pickle).

Request:   {"v": 1, "id": int, "call": str, "args": {field: value}}
Response:  {"v": 1, "id": int, "ok": true, "result": {field: value}}
           {"v": 1, "id": int, "ok": false, "error": {"code": str, "message": str}}
Heartbeat: {"v": 1, "id": int, "busy": true}

One request is in flight per connection: the enclave reads the next request only after it has answered the
current one. While an ecall runs (or waits for a worker), the enclave sends heartbeats carrying the request's id,
the first about a second after the request and then every heartbeat interval, so a client can tell a long ecall
from a frozen enclave by silence alone. An error about the connection itself (bad framing, too many
connections) carries id -1 and is followed by the enclave closing the connection. Error codes are those of
:mod:`twofold.errors` (one per class); frames are :mod:`twofold.framing`'s.
"""

from __future__ import annotations

from typing import Any

from twofold import framing
from twofold.errors import ProtocolError

VERSION = 1
MAX_FRAME = 512 << 20
CONNECTION_ID = -1  # the id of an error that concerns the connection, not one request


def encode_frame(message: dict[str, Any]) -> bytes:
    return framing.encode(message, MAX_FRAME)


def frame_length(header: bytes) -> int:
    return framing.length(header, MAX_FRAME)


def decode_payload(payload: bytes) -> dict[str, Any]:
    message = framing.decode(payload)
    if not isinstance(message, dict):
        raise ProtocolError("frame must be a map")
    if message.get("v") != VERSION:
        raise ProtocolError(f"unsupported ecall protocol version {message.get('v')!r} (this is {VERSION})")
    return message


def request_id(message: dict[str, Any]) -> int:
    """The id a reply to ``message`` carries (-1 when the request has none)."""
    call_id = message.get("id")
    return call_id if isinstance(call_id, int) and not isinstance(call_id, bool) else CONNECTION_ID


def heartbeat(call_id: int) -> dict[str, Any]:
    """The frame that says the ecall ``call_id`` is still running."""
    return {"v": VERSION, "id": call_id, "busy": True}


def is_heartbeat(message: dict[str, Any]) -> bool:
    return message.get("busy") is True and "ok" not in message


def error_reply(call_id: int, code: str, message: str) -> dict[str, Any]:
    """A data-free error reply with an error ``code`` of :mod:`twofold.errors`."""
    return {"v": VERSION, "id": call_id, "ok": False, "error": {"code": code, "message": message}}
