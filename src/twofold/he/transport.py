"""Links between parties: mutually authenticated TLS 1.3 over TCP, or an in-process socket pair for tests.

Both carry the same frames (:mod:`twofold.he.protocol`) through :class:`Channel`, which counts the bytes of every
frame it sends and receives, so bandwidth is measured at the transport (TLS record overhead, about 22 bytes per
16 KiB record, is not included).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twofold.errors import KeyAccessError, ProtocolError, ServiceError, TwofoldError
from twofold.he import protocol
from twofold.he.keys import SERVER_NAMES, peer_identity

log = logging.getLogger("twofold.he")


@dataclass
class LinkStats:
    """Byte and frame counters of one link (or of all links of one kind)."""

    sent: int = 0
    received: int = 0
    frames: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, sent: int = 0, received: int = 0) -> None:
        with self.lock:
            self.sent += sent
            self.received += received
            self.frames += 1

    def as_dict(self) -> dict[str, int]:
        return {"sent": self.sent, "received": self.received, "frames": self.frames}


class Channel:
    """One end of a link: framed, sequence-checked request/reply over a stream socket."""

    def __init__(self, sock: socket.socket, peer: tuple[str, str] = ("?", "?"), *,
                 max_frame: int = protocol.DEFAULT_MAX_FRAME, stats: list[LinkStats] | None = None) -> None:
        self.sock = sock
        self.peer = peer
        self.max_frame = max_frame
        self.stats = LinkStats()
        self._shared = stats or []
        self._tx = 0
        self._rx = 0
        self._lock = threading.Lock()

    @property
    def bytes_sent(self) -> int:
        return self.stats.sent

    @property
    def bytes_received(self) -> int:
        return self.stats.received

    def _count(self, sent: int = 0, received: int = 0) -> None:
        for s in (self.stats, *self._shared):
            s.add(sent, received)

    def send(self, kind: str, body: dict[str, Any]) -> None:
        frame = protocol.encode_frame(self._tx, kind, body, self.max_frame)
        try:
            self.sock.sendall(frame)
        except OSError as exc:
            raise ServiceError(f"link to {self.peer[1]} broke while sending: {exc.strerror or exc}") from None
        self._tx += 1
        self._count(sent=len(frame))

    def send_raw(self, data: bytes) -> None:
        """Send bytes that are not a well-formed frame (only for tests of the peer's checks)."""
        self.sock.sendall(data)

    def _read_exact(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            try:
                chunk = self.sock.recv(min(left, 1 << 20))
            except (OSError, ssl.SSLError) as exc:
                raise ServiceError(f"link to {self.peer[1]} broke while receiving: {exc}") from None
            if not chunk:
                raise ServiceError(f"{self.peer[1]} closed the connection")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def recv(self) -> tuple[str, dict[str, Any]]:
        header = self._read_exact(protocol.HEADER.size)
        (length,) = protocol.HEADER.unpack(header)
        protocol.check_length(length, self.max_frame)
        payload = self._read_exact(length)
        self._count(received=len(header) + length)
        kind, body = protocol.decode_payload(payload, self._rx)
        self._rx += 1
        return kind, body

    def request(self, kind: str, body: dict[str, Any], expect: str | tuple[str, ...] = ("ok", "cts")
                ) -> dict[str, Any]:
        """Send a request and return the reply body; an error frame raises the matching local error."""
        expect = (expect,) if isinstance(expect, str) else expect
        with self._lock:
            self.send(kind, body)
            reply_kind, reply = self.recv()
        if reply_kind == "error":
            protocol.raise_remote(reply)
        if reply_kind not in expect:
            raise ProtocolError(f"expected a {'/'.join(expect)} reply to {kind}, got {reply_kind}")
        return reply

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Handler = Callable[[str, dict[str, Any], tuple[str, str]], tuple[str, dict[str, Any]]]


def serve_channel(channel: Channel, handler: Handler) -> None:
    """Answer requests on a channel until the peer leaves; a protocol violation ends the connection."""
    try:
        while True:
            try:
                kind, body = channel.recv()
            except ServiceError:
                return
            except ProtocolError as exc:
                with contextlib.suppress(TwofoldError, OSError):
                    channel.send("error", {"code": "protocol", "message": str(exc)})
                log.warning("closing link from %s: %s", channel.peer[1], exc)
                return
            try:
                reply_kind, reply = handler(kind, body, channel.peer)
            except TwofoldError as exc:
                reply_kind, reply = "error", {"code": protocol.error_code(exc), "message": str(exc)}
            except Exception as exc:  # never leak details of unexpected failures
                log.exception("handler failed")
                reply_kind, reply = "error", {"code": "service", "message": f"internal error ({type(exc).__name__})"}
            channel.send(reply_kind, reply)
    except TwofoldError:
        return
    finally:
        channel.close()


def local_pair(handler: Handler, peer: tuple[str, str] = ("mu", "mu"),
               server_peer: tuple[str, str] = ("su", "su")) -> Channel:
    """An in-process link: a socket pair whose far end is served by ``handler`` in a daemon thread."""
    a, b = socket.socketpair()
    server = Channel(b, peer)
    threading.Thread(target=serve_channel, args=(server, handler), daemon=True).start()
    return Channel(a, server_peer)


# --------------------------------------------------------------------------------------------------- TLS


def server_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.3 server context that requires a client certificate signed by the system CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=str(ca))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.3 client context presenting our certificate and trusting only the system CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=str(ca))
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ServiceError(f"bad address {address!r}: expected HOST:PORT")
    return host, int(port)


def connect(address: str, ctx: ssl.SSLContext, server_role: str, *, timeout: float | None = 600.0,
            stats: list[LinkStats] | None = None) -> Channel:
    """Open a mutually authenticated TLS link to MU or SU and check it really is that server."""
    host, port = parse_address(address)
    try:
        raw = socket.create_connection((host, port), timeout=10)
    except OSError as exc:
        raise ServiceError(f"cannot reach {server_role.upper()} at {address}: {exc.strerror or exc}") from None
    try:
        raw.settimeout(timeout)
        sock = ctx.wrap_socket(raw, server_hostname=SERVER_NAMES[server_role])
    except (ssl.SSLError, OSError) as exc:
        raw.close()
        raise KeyAccessError(f"TLS handshake with {server_role.upper()} at {address} failed: {exc}") from None
    role, name = peer_identity(sock.getpeercert(binary_form=True))
    if role != server_role:
        sock.close()
        raise KeyAccessError(f"{address} presented a {role} certificate, not {server_role}")
    return Channel(sock, (role, name), stats=stats)


class TLSServer:
    """Accept TLS connections on a loopback (or any) port and serve each in its own thread."""

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext, handler: Handler,
                 allowed_roles: tuple[str, ...], stats: dict[str, LinkStats] | None = None) -> None:
        self.ctx = ctx
        self.handler = handler
        self.allowed_roles = allowed_roles
        self.stats = stats if stats is not None else {}
        self.sock = socket.create_server((host, port), reuse_port=False)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()

    def _link_stats(self, role: str) -> LinkStats:
        return self.stats.setdefault(role, LinkStats())

    def _serve_one(self, raw: socket.socket) -> None:
        try:
            raw.settimeout(30)
            sock = self.ctx.wrap_socket(raw, server_side=True)
            role, name = peer_identity(sock.getpeercert(binary_form=True))
        except (ssl.SSLError, OSError, TwofoldError) as exc:
            log.warning("refused a connection: %s", exc)
            raw.close()
            return
        sock.settimeout(None)
        channel = Channel(sock, (role, name), stats=[self._link_stats(role)])
        if role not in self.allowed_roles:
            with contextlib.suppress(TwofoldError, OSError):
                channel.send("error", {"code": "key", "message": f"role {role} may not use this server"})
            channel.close()
            return
        serve_channel(channel, self.handler)

    def serve_forever(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                raise
            threading.Thread(target=self._serve_one, args=(raw,), daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.close()
