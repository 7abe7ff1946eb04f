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
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twofold.errors import ConfigError, KeyAccessError, ProtocolError, ServiceError, TwofoldError
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


HEARTBEAT_S = 5.0  # a server still working on a request sends a "busy" frame this often
PEER_TIMEOUT_S = 15.0  # a peer that sends nothing for this long (three heartbeats) is frozen or gone
IDLE_TIMEOUT_S = 600.0  # a server closes a link that carries no request for this long
HANDSHAKE_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64


@dataclass
class Timing:
    """How long a link waits: ``peer_timeout`` of silence fails a request; servers send a heartbeat every
    ``heartbeat`` seconds while they work, so a long request stays alive and a frozen peer is found."""

    heartbeat: float = HEARTBEAT_S
    peer_timeout: float = PEER_TIMEOUT_S
    idle_timeout: float = IDLE_TIMEOUT_S

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat < self.peer_timeout:
            raise ConfigError("the heartbeat interval must be positive and shorter than the peer timeout")


@dataclass
class Call:
    """One request being served: the handler may publish ``progress`` (sent with every heartbeat) and should
    stop early once ``cancelled`` is set (the requester went away)."""

    cancelled: threading.Event = field(default_factory=threading.Event)
    progress: dict[str, Any] = field(default_factory=dict)


OnProgress = Callable[[dict[str, Any]], None]  # called with each heartbeat's progress map


class Channel:
    """One end of a link: framed, sequence-checked request/reply over a stream socket, one request at a time.

    Every read has a deadline (``peer_timeout`` of silence); a link that timed out or broke is ``broken`` and
    refuses further use. Concurrent requests need separate channels (:class:`LinkPool`).
    """

    def __init__(self, sock: socket.socket, peer: tuple[str, str] = ("?", "?"), *,
                 max_frame: int = protocol.DEFAULT_MAX_FRAME, stats: list[LinkStats] | None = None,
                 peer_timeout: float = PEER_TIMEOUT_S) -> None:
        self.sock = sock
        self.peer = peer
        self.max_frame = max_frame
        self.peer_timeout = peer_timeout
        self.stats = LinkStats()
        self.broken = False
        self._shared = stats or []
        self._tx = 0
        self._rx = 0
        self._in_use = threading.Lock()  # only ever try-acquired: a second user fails, never waits

    @property
    def bytes_sent(self) -> int:
        return self.stats.sent

    @property
    def bytes_received(self) -> int:
        return self.stats.received

    def _count(self, sent: int = 0, received: int = 0) -> None:
        for s in (self.stats, *self._shared):
            s.add(sent, received)

    def _fail(self, message: str) -> ServiceError:
        self.broken = True
        return ServiceError(message)

    def send(self, kind: str, body: dict[str, Any]) -> None:
        if self.broken:
            raise ServiceError(f"the link to {self.peer[1]} is broken")
        frame = protocol.encode_frame(self._tx, kind, body, self.max_frame)
        try:
            self.sock.settimeout(self.peer_timeout)
            self.sock.sendall(frame)
        except TimeoutError:
            raise self._fail(f"{self.peer[1]} took no data for {self.peer_timeout:.0f} s (frozen?)") from None
        except OSError as exc:
            raise self._fail(f"link to {self.peer[1]} broke while sending: {exc.strerror or exc}") from None
        self._tx += 1
        self._count(sent=len(frame))

    def reject(self, message: str) -> None:
        """Tell the peer that the link closes because of a protocol violation (its framing may be broken)."""
        frame = protocol.encode_frame(self._tx, "error", {"code": "protocol", "message": message}, self.max_frame)
        with contextlib.suppress(OSError):
            self.sock.settimeout(self.peer_timeout)
            self.sock.sendall(frame)
        self.broken = True

    def send_raw(self, data: bytes) -> None:
        """Send bytes that are not a well-formed frame (only for tests of the peer's checks)."""
        self.sock.sendall(data)

    def _read_exact(self, n: int, timeout: float) -> bytes:
        chunks, left = [], n
        self.sock.settimeout(timeout)
        while left:
            try:
                chunk = self.sock.recv(min(left, 1 << 20))
            except TimeoutError:
                raise self._fail(f"{self.peer[1]} sent nothing for {timeout:.0f} s: it is frozen, overloaded "
                                 "or unreachable") from None
            except (OSError, ssl.SSLError) as exc:
                raise self._fail(f"link to {self.peer[1]} broke while receiving: {exc}") from None
            if not chunk:
                raise self._fail(f"{self.peer[1]} closed the connection")
            chunks.append(chunk)
            left -= len(chunk)
            timeout = self.peer_timeout  # once a frame has started, the rest must follow promptly
            self.sock.settimeout(timeout)
        return b"".join(chunks)

    def recv(self, timeout: float | None = None) -> tuple[str, dict[str, Any]]:
        """The next frame; ``timeout`` (default ``peer_timeout``) bounds the wait for its first byte."""
        if self.broken:
            raise ServiceError(f"the link to {self.peer[1]} is broken")
        header = self._read_exact(protocol.HEADER.size, self.peer_timeout if timeout is None else timeout)
        (length,) = protocol.HEADER.unpack(header)
        try:
            protocol.check_length(length, self.max_frame)
            payload = self._read_exact(length, self.peer_timeout)
            self._count(received=len(header) + length)
            kind, body = protocol.decode_payload(payload, self._rx)
        except ProtocolError:
            self.broken = True  # framing is no longer trustworthy
            raise
        self._rx += 1
        return kind, body

    def request(self, kind: str, body: dict[str, Any], expect: str | tuple[str, ...] = ("ok", "cts"), *,
                on_progress: OnProgress | None = None) -> dict[str, Any]:
        """Send a request and return the reply body; an error frame raises the matching local error.

        Heartbeats ("busy" frames) keep a long request alive and are passed to ``on_progress``; silence for
        ``peer_timeout`` raises :class:`ServiceError`.
        """
        expect = (expect,) if isinstance(expect, str) else expect
        if not self._in_use.acquire(blocking=False):
            raise ServiceError(f"the link to {self.peer[1]} is already carrying a request")
        try:
            self.send(kind, body)
            reply_kind, reply = self.recv()
            while reply_kind == "busy":
                if on_progress is not None:
                    on_progress(reply["progress"])
                reply_kind, reply = self.recv()
        finally:
            self._in_use.release()
        if reply_kind == "error":
            protocol.raise_remote(reply)
        if reply_kind not in expect:
            raise ProtocolError(f"expected a {'/'.join(expect)} reply to {kind}, got {reply_kind}")
        return reply

    def close(self) -> None:
        self.broken = True
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Handler = Callable[[str, dict[str, Any], tuple[str, str], Call], tuple[str, dict[str, Any]]]


def _answer(handler: Handler, kind: str, body: dict[str, Any], peer: tuple[str, str],
            call: Call) -> tuple[str, dict[str, Any]]:
    try:
        return handler(kind, body, peer, call)
    except TwofoldError as exc:
        return "error", {"code": protocol.error_code(exc), "message": str(exc)}
    except Exception as exc:  # never leak details of unexpected failures
        log.exception("handler failed")
        return "error", {"code": "service", "message": f"internal error ({type(exc).__name__})"}


def _serve_request(channel: Channel, worker: ThreadPoolExecutor, handler: Handler, kind: str,
                   body: dict[str, Any], timing: Timing) -> bool:
    """Run one request in ``worker``, sending heartbeats meanwhile; False if the peer went away."""
    call = Call()
    future = worker.submit(_answer, handler, kind, body, channel.peer, call)
    while True:
        try:
            reply_kind, reply = future.result(timeout=timing.heartbeat)
            break
        except FutureTimeout:
            try:
                channel.send("busy", {"progress": dict(call.progress)})
            except TwofoldError:
                call.cancelled.set()  # the requester is gone: let the handler stop early
                return False
    try:
        channel.send(reply_kind, reply)
    except TwofoldError:
        return False
    return True


def serve_channel(channel: Channel, handler: Handler, timing: Timing | None = None) -> None:
    """Answer requests on a channel until the peer leaves, idles too long or breaks the protocol.

    Each request runs in a worker thread while this thread sends heartbeats; the worker is joined before the
    link closes, so a connection never holds more than two threads.
    """
    timing = timing or Timing()
    worker = ThreadPoolExecutor(1, thread_name_prefix="twofold-request")
    try:
        while True:
            try:
                kind, body = channel.recv(timeout=timing.idle_timeout)
            except ServiceError:
                return
            except ProtocolError as exc:
                channel.reject(str(exc))
                log.warning("closing link from %s: %s", channel.peer[1], exc)
                return
            if not _serve_request(channel, worker, handler, kind, body, timing):
                return
    finally:
        worker.shutdown(wait=True)
        channel.close()


def local_pair(handler: Handler, peer: tuple[str, str] = ("mu", "mu"),
               server_peer: tuple[str, str] = ("su", "su"), timing: Timing | None = None) -> Channel:
    """An in-process link: a socket pair whose far end is served by ``handler`` in a daemon thread."""
    a, b = socket.socketpair()
    timing = timing or Timing()
    server = Channel(b, peer, peer_timeout=timing.peer_timeout)
    threading.Thread(target=serve_channel, args=(server, handler, timing), daemon=True).start()
    return Channel(a, server_peer, peer_timeout=timing.peer_timeout)


class LinkPool:
    """Links to one server for requests from many threads: each request takes a free link (or opens one, up to
    ``limit``) and gives it back afterwards. The lock guards only the free list; links are opened, used and
    closed outside it, and a request waiting for a free link gives up after ``wait_timeout``."""

    def __init__(self, opener: Callable[[], Channel], *, limit: int = 8, wait_timeout: float = 600.0) -> None:
        self._opener = opener
        self._limit = limit
        self._wait_timeout = wait_timeout
        self._free: list[Channel] = []
        self._open = 0
        self._cond = threading.Condition()

    def _take(self) -> Channel:
        with self._cond:
            if not self._cond.wait_for(lambda: self._free or self._open < self._limit, self._wait_timeout):
                raise ServiceError(f"all {self._limit} links are busy")
            if self._free:
                return self._free.pop()
            self._open += 1
        try:
            return self._opener()
        except BaseException:
            self._give_back(None)
            raise

    def _give_back(self, channel: Channel | None) -> None:
        broken = channel is None or channel.broken
        with self._cond:
            if broken:
                self._open -= 1
            else:
                self._free.append(channel)  # type: ignore[arg-type]
            self._cond.notify()
        if channel is not None and broken:
            channel.close()

    def request(self, kind: str, body: dict[str, Any], expect: str | tuple[str, ...] = ("ok", "cts"), *,
                on_progress: OnProgress | None = None) -> dict[str, Any]:
        channel = self._take()
        try:
            return channel.request(kind, body, expect, on_progress=on_progress)
        finally:
            self._give_back(channel)

    def close(self) -> None:
        """Close the free links; links in use close when their request gives them back."""
        with self._cond:
            free, self._free = self._free, []
            self._open -= len(free)
            self._cond.notify_all()
        for channel in free:
            channel.close()


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


def connect(address: str, ctx: ssl.SSLContext, server_role: str, *, peer_timeout: float = PEER_TIMEOUT_S,
            stats: list[LinkStats] | None = None) -> Channel:
    """Open a mutually authenticated TLS link to MU or SU and check it really is that server."""
    host, port = parse_address(address)
    try:
        raw = socket.create_connection((host, port), timeout=HANDSHAKE_TIMEOUT_S)
    except OSError as exc:
        raise ServiceError(f"cannot reach {server_role.upper()} at {address}: {exc.strerror or exc}") from None
    try:
        sock = ctx.wrap_socket(raw, server_hostname=SERVER_NAMES[server_role])
    except TimeoutError:
        raw.close()
        raise ServiceError(f"{server_role.upper()} at {address} did not complete the TLS handshake in "
                           f"{HANDSHAKE_TIMEOUT_S:.0f} s") from None
    except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
        raw.close()
        raise ServiceError(f"{server_role.upper()} at {address} closed the connection during the TLS handshake "
                           "(it may be at its connection limit)") from None
    except (ssl.SSLError, OSError) as exc:
        raw.close()
        raise KeyAccessError(f"TLS handshake with {server_role.upper()} at {address} failed: {exc}") from None
    role, name = peer_identity(sock.getpeercert(binary_form=True))
    if role != server_role:
        sock.close()
        raise KeyAccessError(f"{address} presented a {role} certificate, not {server_role}")
    return Channel(sock, (role, name), stats=stats, peer_timeout=peer_timeout)


class TLSServer:
    """Accept TLS connections on a loopback (or any) port and serve each in its own thread.

    At most ``max_connections`` links are served at once: a connection beyond that is closed at accept, before
    any handshake work. The handshake has a deadline, and each role's frames are capped (``frame_limits``).
    """

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext, handler: Handler,
                 allowed_roles: tuple[str, ...], stats: dict[str, LinkStats] | None = None, *,
                 timing: Timing | None = None, max_connections: int = MAX_CONNECTIONS,
                 frame_limits: dict[str, int] | None = None) -> None:
        self.ctx = ctx
        self.handler = handler
        self.allowed_roles = allowed_roles
        self.stats = stats if stats is not None else {}
        self.timing = timing or Timing()
        self.frame_limits = frame_limits or {}
        self.max_connections = max_connections
        self.refused = 0
        self._slots = threading.BoundedSemaphore(max_connections)
        self._active = 0
        self._count_lock = threading.Lock()
        self.sock = socket.create_server((host, port), reuse_port=False)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()

    @property
    def connections(self) -> int:
        """Links being served now."""
        return self._active

    def _link_stats(self, role: str) -> LinkStats:
        return self.stats.setdefault(role, LinkStats())

    def _serve_one(self, raw: socket.socket) -> None:
        with self._count_lock:
            self._active += 1
        try:
            self._handshake_and_serve(raw)
        finally:
            with self._count_lock:
                self._active -= 1
            self._slots.release()

    def _handshake_and_serve(self, raw: socket.socket) -> None:
        try:
            raw.settimeout(HANDSHAKE_TIMEOUT_S)
            sock = self.ctx.wrap_socket(raw, server_side=True)
            role, name = peer_identity(sock.getpeercert(binary_form=True))
        except (ssl.SSLError, OSError, TwofoldError) as exc:
            log.warning("refused a connection: %s", exc)
            raw.close()
            return
        limit = self.frame_limits.get(role, protocol.DEFAULT_MAX_FRAME)
        channel = Channel(sock, (role, name), stats=[self._link_stats(role)], max_frame=limit,
                          peer_timeout=self.timing.peer_timeout)
        if role not in self.allowed_roles:
            with contextlib.suppress(TwofoldError, OSError):
                channel.send("error", {"code": "key", "message": f"role {role} may not use this server"})
            channel.close()
            return
        serve_channel(channel, self.handler, self.timing)

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
            if not self._slots.acquire(blocking=False):
                self.refused += 1
                if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
                    log.warning("refused %d connection(s): %d links are being served", self.refused,
                                self.max_connections)
                raw.close()
                continue
            threading.Thread(target=self._serve_one, args=(raw,), daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.close()
