"""The untrusted side's handle on an enclave process: ecalls over its Unix socket.

Every read has a silence deadline: while an ecall runs, the enclave heartbeats (see
:mod:`twofold.enclave.protocol`), so a long ecall stays alive and a frozen enclave is detected within
``silence_timeout`` seconds. Calls from many threads run side by side on a small pool of connections; the lock
guards only the pool, never a socket operation.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import select
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twofold import errors
from twofold.enclave.protocol import (
    CONNECTION_ID,
    VERSION,
    decode_payload,
    encode_frame,
    frame_length,
    is_heartbeat,
)
from twofold.errors import ProtocolError, ServiceError

TRACE_ENV = "TWOFOLD_ECALL_TRACE"
SILENCE_TIMEOUT_S = 20.0  # the enclave heartbeats every 5 s by default while an ecall runs
MAX_CALL_S = 3600.0  # no single ecall, however well it heartbeats, runs longer than this
KEEPALIVE_S = 240.0  # pooled connections idle longer are replaced (the enclave closes them after 300 s)
MAX_IDLE_CONNECTIONS = 8


class EnclaveSilentError(ServiceError):
    """The enclave sent nothing, not even a heartbeat, within the silence timeout (frozen or overloaded)."""


class EnclaveGoneError(ServiceError):
    """The connection broke mid-call: the enclave exited or closed it."""


def _trace(name: str, args: dict[str, Any], reply_payload: bytes) -> None:
    """Record what crossed the boundary (what the untrusted side sees anyway) to $TWOFOLD_ECALL_TRACE."""
    entry = {"pid": os.getpid(), "call": name,
             "args": {k: len(v) if isinstance(v, bytes | str | list) else type(v).__name__ for k, v in args.items()},
             "reply": base64.b64encode(reply_payload).decode()}
    with open(os.environ[TRACE_ENV], "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def _readable(sock: socket.socket) -> bool:
    """Whether an idle connection has something to read: EOF or a farewell frame, so it is no longer usable."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _result(reply: dict[str, Any], call_id: int) -> dict[str, Any]:
    """The result of a reply, or its error raised with the same type it had in the enclave."""
    if reply.get("ok") is True and reply.get("id") == call_id:
        return reply["result"]
    if reply.get("ok") is False and reply.get("id") in (call_id, CONNECTION_ID):
        error = reply.get("error") or {}
        raise errors.from_code(error.get("code"), error.get("message", "enclave error"))
    raise ProtocolError("enclave reply does not match the request")


@dataclass
class _Idle:
    sock: socket.socket
    since: float


class EnclaveClient:
    """Ecalls to one enclave; thread-safe, each concurrent call on its own pooled connection.

    ``bytes_sent``, ``bytes_received``, ``heartbeats`` and ``connections_opened`` count this client's traffic.
    """

    def __init__(self, socket_path: Path | str, silence_timeout: float = SILENCE_TIMEOUT_S,
                 max_call_s: float = MAX_CALL_S, max_idle: int = MAX_IDLE_CONNECTIONS) -> None:
        if silence_timeout <= 0 or max_call_s <= 0 or max_idle < 0:
            raise ValueError("timeouts must be positive and max_idle non-negative")
        self.socket_path = str(socket_path)
        self.silence_timeout, self.max_call_s, self.max_idle = silence_timeout, max_call_s, max_idle
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # guards the fields below; never held across I/O
        self._free: list[_Idle] = []
        self._closed = False
        self.bytes_sent = self.bytes_received = self.heartbeats = self.connections_opened = 0
        self._free.append(_Idle(self._connect(), time.monotonic()))  # fail now if nothing listens

    def call(self, name: str, **args: Any) -> dict[str, Any]:
        """Run an ecall; a typed twofold error from the enclave is raised here with the same type."""
        with self._lock:
            call_id = next(self._ids)
        frame = encode_frame({"v": VERSION, "id": call_id, "call": name, "args": args})
        sock = self._take()
        try:
            reply, payload, beats = self._exchange(sock, frame, call_id, name)
        except BaseException:
            sock.close()  # its state is unknown: a late reply must not reach the next caller
            raise
        self._give_back(sock)
        with self._lock:
            self.bytes_sent += len(frame)
            self.bytes_received += 4 + len(payload)
            self.heartbeats += beats
        if TRACE_ENV in os.environ:
            _trace(name, args, payload)
        return _result(reply, call_id)

    def _exchange(self, sock: socket.socket, frame: bytes, call_id: int,
                  name: str) -> tuple[dict[str, Any], bytes, int]:
        """Send one request and read frames, skipping its heartbeats, until the reply."""
        deadline = time.monotonic() + self.max_call_s
        try:
            sock.settimeout(self.silence_timeout)
            sock.sendall(frame)
        except TimeoutError:
            raise self._silent(name) from None
        except OSError:
            pass  # the enclave may have said why it closed (at its connection cap, say): read that below
        beats = 0
        while True:  # bounded by the deadline
            payload = self._read_frame(sock, name, deadline)
            message = decode_payload(payload)
            if not is_heartbeat(message):
                return message, payload, beats
            if message.get("id") != call_id:
                raise ProtocolError("enclave heartbeat does not match the request")
            beats += 1

    def _read_frame(self, sock: socket.socket, name: str, deadline: float) -> bytes:
        return self._recv_exact(sock, frame_length(self._recv_exact(sock, 4, name, deadline)), name, deadline)

    def _recv_exact(self, sock: socket.socket, size: int, name: str, deadline: float) -> bytes:
        chunks, remaining = [], size
        while remaining:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServiceError(f"ecall {name} on the enclave at {self.socket_path} ran past its "
                                   f"{self.max_call_s:.0f} s limit")
            sock.settimeout(min(self.silence_timeout, left))
            try:
                chunk = sock.recv(min(remaining, 1 << 20))
            except TimeoutError:
                if left <= self.silence_timeout:
                    continue  # the overall deadline, reported above
                raise self._silent(name) from None
            except OSError:
                chunk = b""
            if not chunk:
                raise EnclaveGoneError(f"the enclave at {self.socket_path} went away during {name}")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _silent(self, name: str) -> EnclaveSilentError:
        return EnclaveSilentError(f"the enclave at {self.socket_path} sent nothing for {self.silence_timeout:g} s "
                                  f"during {name} (frozen or overloaded)")

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.silence_timeout)
        try:
            sock.connect(self.socket_path)
        except TimeoutError:
            sock.close()
            raise EnclaveSilentError(f"the enclave at {self.socket_path} did not accept a connection within "
                                     f"{self.silence_timeout:g} s (frozen or overloaded)") from None
        except OSError:
            sock.close()
            raise ServiceError(f"no enclave is listening on {self.socket_path}") from None
        with self._lock:
            self.connections_opened += 1
        return sock

    def _take(self) -> socket.socket:
        """A free, fresh connection from the pool, or a new one; stale ones are closed outside the lock."""
        now, stale, found = time.monotonic(), [], None
        with self._lock:
            if self._closed:
                raise ServiceError(f"the client of the enclave at {self.socket_path} is closed")
            while self._free and found is None:
                idle = self._free.pop()
                if now - idle.since > KEEPALIVE_S:
                    stale.append(idle.sock)
                else:
                    found = idle.sock
        for sock in stale:
            sock.close()
        if found is not None and not _readable(found):
            return found
        if found is not None:
            found.close()
        return self._connect()

    def _give_back(self, sock: socket.socket) -> None:
        with self._lock:
            keep = not self._closed and len(self._free) < self.max_idle
            if keep:
                self._free.append(_Idle(sock, time.monotonic()))
        if not keep:
            sock.close()

    def close(self) -> None:
        """Close idle connections now and the others when their calls end; later calls raise ServiceError."""
        with self._lock:
            self._closed = True
            idle, self._free = self._free, []
        for entry in idle:
            entry.sock.close()

    def __enter__(self) -> EnclaveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def responsive(socket_path: Path | str, timeout: float) -> bool:
    """Whether the enclave answers an ``info`` ecall, or heartbeats for it, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.settimeout(timeout)
            sock.connect(str(socket_path))
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.sendall(encode_frame({"v": VERSION, "id": 0, "call": "info", "args": {}}))
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            return bool(sock.recv(4))
        except OSError:
            return False
