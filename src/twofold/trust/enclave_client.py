"""The untrusted side's handle on an enclave process: ecalls over its Unix socket."""

from __future__ import annotations

import base64
import itertools
import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

from twofold import errors
from twofold.enclave.protocol import VERSION, decode_payload, encode_frame, frame_length
from twofold.errors import ProtocolError, ServiceError, TwofoldError

_ERROR_TYPES: dict[str, type[TwofoldError]] = {
    cls.__name__: cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, TwofoldError)
}


TRACE_ENV = "TWOFOLD_ECALL_TRACE"


def _trace(name: str, args: dict[str, Any], reply_payload: bytes) -> None:
    """Record what crossed the boundary (what the untrusted side sees anyway) to $TWOFOLD_ECALL_TRACE."""
    entry = {"pid": os.getpid(), "call": name,
             "args": {k: len(v) if isinstance(v, bytes | str | list) else type(v).__name__ for k, v in args.items()},
             "reply": base64.b64encode(reply_payload).decode()}
    with open(os.environ[TRACE_ENV], "a") as handle:
        handle.write(json.dumps(entry) + "\n")


class EnclaveClient:
    """One connection to an enclave; thread-safe (calls are serialised on the connection)."""

    def __init__(self, socket_path: Path | str, timeout: float = 600.0) -> None:
        self.socket_path = str(socket_path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(self.socket_path)
        except OSError:
            self._sock.close()
            raise ServiceError(f"no enclave is listening on {self.socket_path}") from None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.bytes_sent = self.bytes_received = 0

    def call(self, name: str, **args: Any) -> dict[str, Any]:
        """Run an ecall; a typed twofold error from the enclave is raised here with the same type."""
        call_id = next(self._ids)
        frame = encode_frame({"v": VERSION, "id": call_id, "call": name, "args": args})
        with self._lock:
            try:
                self._sock.sendall(frame)
                header = self._recv_exact(4)
                payload = self._recv_exact(frame_length(header))
            except OSError:
                raise ServiceError(f"the enclave at {self.socket_path} went away during {name}") from None
            self.bytes_sent += len(frame)
            self.bytes_received += 4 + len(payload)
        reply = decode_payload(payload)
        if TRACE_ENV in os.environ:
            _trace(name, args, payload)
        if reply.get("id") != call_id:
            raise ProtocolError("enclave reply does not match the request")
        if reply.get("ok"):
            return reply["result"]
        error = reply.get("error") or {}
        raise _ERROR_TYPES.get(str(error.get("type")), ServiceError)(str(error.get("message", "enclave error")))

    def _recv_exact(self, size: int) -> bytes:
        chunks, remaining = [], size
        while remaining:
            chunk = self._sock.recv(min(remaining, 1 << 20))
            if not chunk:
                raise ConnectionResetError
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> EnclaveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
