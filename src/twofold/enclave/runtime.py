"""The enclave process: attest at start, then serve ecalls on a Unix socket.

Plaintext exists only in this process's memory (the partition cache and kernel working sets); it is never
written to disk or logged, and only results that match an ecall's declared schema leave the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twofold.crypto.broker_identity import BrokerIdentity
from twofold.enclave import core_ecalls, kernels  # noqa: F401 - importing registers the ecalls
from twofold.enclave.attester import SimulationAttester, load_or_create_platform_key
from twofold.enclave.broker_client import BrokerSession
from twofold.enclave.cache import PartitionCache
from twofold.enclave.hw_attesters import attester_for
from twofold.enclave.loaded import check_loaded
from twofold.enclave.measure import current_measurement, tcb_files
from twofold.enclave.protocol import (
    CONNECTION_ID,
    VERSION,
    decode_payload,
    encode_frame,
    error_reply,
    frame_length,
    heartbeat,
    request_id,
)
from twofold.enclave.registry import REGISTRY, check
from twofold.enclave.state import EnclaveState
from twofold.errors import ProtocolError, ServiceError, TwofoldError

log = logging.getLogger("twofold.enclave")
READY_PREFIX = "ready "  # the line twofold.services waits for


def start_state(kbs_url: str, identity: BrokerIdentity, platform_key_path: Path | None,
                cache_bytes: int, backend: str = "simulation") -> EnclaveState:
    """Check that only measured code is loaded, measure it, attest to the pinned key broker, build the state.

    ``backend``: ``simulation``, a hardware backend, or ``auto`` (the hardware this machine has; never simulation).
    """
    measured = frozenset(tcb_files())
    check_loaded(measured)
    measurement = current_measurement()
    attester = attester_for(backend) or SimulationAttester(load_or_create_platform_key(platform_key_path))
    broker = BrokerSession(kbs_url, measurement,
                           lambda nonce, pub, config: attester.evidence(measurement, nonce, pub, config), identity,
                           backend=attester.backend)
    broker.attest()
    return EnclaveState(attester.backend, measurement, broker, PartitionCache(cache_bytes), measured=measured)


def dispatch(state: EnclaveState, message: dict[str, Any]) -> dict[str, Any]:
    """Run one validated ecall; errors become typed, data-free error replies.

    After every ecall the loaded twofold modules are checked against the measured set: if unmeasured code was
    loaded, the result is withheld and the enclave stops (its attested identity no longer holds).
    """
    call_id = request_id(message)
    try:
        name = message.get("call")
        entry = REGISTRY.get(name) if isinstance(name, str) else None
        if entry is None:
            raise ProtocolError(f"unknown ecall {name!r}")
        args = check(entry.args, message.get("args"), f"arguments of {entry.name}")
        result = check(entry.result, entry.handler(state, **args), f"result of {entry.name}")
        reply = {"v": VERSION, "id": call_id, "ok": True, "result": result}
    except TwofoldError as exc:
        reply = error_reply(call_id, exc.code, str(exc))
    except Exception as exc:
        log.error("ecall failed with %s", type(exc).__name__)
        reply = error_reply(call_id, ServiceError.code, "internal error in the enclave")
    try:
        check_loaded(state.measured)
    except TwofoldError as exc:
        log.error("%s: stopping", exc)
        os.kill(os.getpid(), signal.SIGTERM)
        return error_reply(call_id, exc.code, "the enclave loaded unmeasured code and stopped")
    return reply


@dataclass(frozen=True)
class Limits:
    """Deadlines and bounds of the ecall server (``twofold enclave serve`` options set the first two).

    Pending work is bounded by construction: one request in flight per connection (the next frame is read only
    after the reply is written), so at most ``max_connections`` ecalls run or wait for a worker at once.
    """

    heartbeat_s: float = 5.0  # a busy-heartbeat this often while an ecall runs (clients time out on silence)
    max_connections: int = 64
    first_heartbeat_s: float = 1.0  # the first heartbeat comes sooner, so a queued ecall shows life quickly
    idle_connection_s: float = 300.0  # idle keep-alive connections are closed (clients reconnect transparently)
    frame_s: float = 60.0  # once a header has arrived, the rest of its frame must arrive within this
    send_s: float = 60.0  # a peer that does not read its reply or heartbeats within this is dropped

    def __post_init__(self) -> None:
        if not (self.heartbeat_s > 0 and self.first_heartbeat_s > 0 and self.max_connections >= 1):
            raise ValueError("heartbeat intervals must be positive and at least one connection allowed")


class _Activity:
    """Open connections and the time of the last ecall, for exiting when idle."""

    def __init__(self) -> None:
        self.connections = 0
        self.last = time.monotonic()


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any], limits: Limits) -> None:
    """Write one frame; a peer that does not take it within ``send_s`` is dropped (TimeoutError)."""
    try:
        frame = encode_frame(message)
    except ProtocolError as exc:  # a result too large to send: say so instead of dropping the connection
        frame = encode_frame(error_reply(request_id(message), ProtocolError.code, str(exc)))
    writer.write(frame)
    await asyncio.wait_for(writer.drain(), limits.send_s)


async def _read_request(reader: asyncio.StreamReader, limits: Limits) -> dict[str, Any] | None:
    """The next request; None when the peer closed or idled past ``idle_connection_s``; ProtocolError if bad."""
    try:
        header = await asyncio.wait_for(reader.readexactly(4), limits.idle_connection_s)
    except (asyncio.IncompleteReadError, TimeoutError):
        return None
    try:
        payload = await asyncio.wait_for(reader.readexactly(frame_length(header)), limits.frame_s)
    except TimeoutError:
        raise ProtocolError(f"a frame did not arrive within {limits.frame_s:.0f} s") from None
    return decode_payload(payload)


async def _run_ecall(state: EnclaveState, pool: ThreadPoolExecutor, message: dict[str, Any],
                     writer: asyncio.StreamWriter, limits: Limits) -> dict[str, Any]:
    """Run ``message`` on a worker thread, heartbeating on the connection until it is done."""
    future = asyncio.get_running_loop().run_in_executor(pool, dispatch, state, message)
    beat = heartbeat(request_id(message))
    wait = min(limits.first_heartbeat_s, limits.heartbeat_s)
    while True:  # bounded by the ecall itself; a peer that stops reading ends it through _send's deadline
        done, _ = await asyncio.wait({future}, timeout=wait)
        if done:
            return future.result()
        await _send(writer, beat, limits)
        wait = limits.heartbeat_s


async def _serve_requests(state: EnclaveState, pool: ThreadPoolExecutor, activity: _Activity, limits: Limits,
                          reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer requests one at a time until the peer closes, idles out or breaks the framing."""
    while True:  # each pass waits at most idle_connection_s for a request, then runs it under heartbeats
        try:
            message = await _read_request(reader, limits)
        except ProtocolError as exc:
            await _send(writer, error_reply(CONNECTION_ID, ProtocolError.code, str(exc)), limits)
            return  # framing is no longer trustworthy on this connection
        if message is None:
            return
        reply = await _run_ecall(state, pool, message, writer, limits)
        await _send(writer, reply, limits)
        activity.last = time.monotonic()


async def _serve_connection(state: EnclaveState, pool: ThreadPoolExecutor, activity: _Activity, limits: Limits,
                            reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # Over the cap, a connection is told why and closed at once rather than left waiting for a slot: the slots
    # may be held by idle keep-alive connections of other Spark tasks, so waiting could stall a task until its
    # deadline; refusing fails it fast with a clear error that Spark's task retry can act on.
    full = activity.connections >= limits.max_connections
    activity.connections += 1
    try:
        if full:
            message = f"the enclave already serves its maximum of {limits.max_connections} connections"
            await _send(writer, error_reply(CONNECTION_ID, ServiceError.code, message), limits)
        else:
            await _serve_requests(state, pool, activity, limits, reader, writer)
    except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
        return
    finally:
        activity.connections -= 1
        activity.last = time.monotonic()
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), limits.send_s)


async def _exit_when_idle(activity: _Activity, idle_exit_s: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await asyncio.sleep(min(1.0, idle_exit_s))
        if activity.connections == 0 and time.monotonic() - activity.last > idle_exit_s:
            log.info("no ecalls for %.0f s: exiting", idle_exit_s)
            stop.set()


async def serve(state: EnclaveState, socket_path: Path, on_ready: Callable[[], None], workers: int = 4,
                idle_exit_s: float | None = None, limits: Limits | None = None) -> None:
    """Serve ecalls until SIGTERM/SIGINT (or idle for ``idle_exit_s``); the socket is 0600 and removed at exit."""
    limits = limits or Limits()
    socket_path = Path(socket_path)
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ecall")
    activity = _Activity()
    old_umask = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(
            lambda r, w: _serve_connection(state, pool, activity, limits, r, w), path=str(socket_path),
            limit=1 << 20)
    finally:
        os.umask(old_umask)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    on_ready()
    watchdog = asyncio.create_task(_exit_when_idle(activity, idle_exit_s, stop)) if idle_exit_s else None
    try:
        await stop.wait()
    finally:
        if watchdog:
            watchdog.cancel()
        server.close()
        await server.wait_closed()
        pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
