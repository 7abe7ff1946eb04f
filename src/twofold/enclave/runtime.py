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
from pathlib import Path
from typing import Any

from twofold.enclave import core_ecalls, kernels  # noqa: F401 - importing registers the ecalls
from twofold.enclave.attester import SimulationAttester, load_or_create_platform_key
from twofold.enclave.broker_client import BrokerSession
from twofold.enclave.cache import PartitionCache
from twofold.enclave.measure import current_measurement
from twofold.enclave.protocol import VERSION, decode_payload, encode_frame, frame_length
from twofold.enclave.registry import REGISTRY, check
from twofold.enclave.state import EnclaveState
from twofold.errors import ProtocolError, TwofoldError

log = logging.getLogger("twofold.enclave")


def start_state(kbs_url: str, platform_key_path: Path | None, cache_bytes: int,
                ca_file: str | None = None) -> EnclaveState:
    """Measure this code, attest to the key broker, and build the enclave's state."""
    measurement = current_measurement()
    attester = SimulationAttester(load_or_create_platform_key(platform_key_path))
    broker = BrokerSession(kbs_url, measurement, lambda nonce, pub: attester.evidence(measurement, nonce, pub),
                           ca_file=ca_file)
    broker.attest()
    return EnclaveState(attester.backend, measurement, broker, PartitionCache(cache_bytes))


def dispatch(state: EnclaveState, message: dict[str, Any]) -> dict[str, Any]:
    """Run one validated ecall; errors become typed, data-free error replies."""
    call_id = message.get("id") if isinstance(message.get("id"), int) else -1
    try:
        name = message.get("call")
        entry = REGISTRY.get(name) if isinstance(name, str) else None
        if entry is None:
            raise ProtocolError(f"unknown ecall {name!r}")
        args = check(entry.args, message.get("args"), f"arguments of {entry.name}")
        result = check(entry.result, entry.handler(state, **args), f"result of {entry.name}")
        return {"v": VERSION, "id": call_id, "ok": True, "result": result}
    except TwofoldError as exc:
        return {"v": VERSION, "id": call_id, "ok": False,
                "error": {"type": type(exc).__name__, "message": str(exc)}}
    except Exception as exc:
        log.error("ecall failed with %s", type(exc).__name__)
        return {"v": VERSION, "id": call_id, "ok": False,
                "error": {"type": "InternalError", "message": "internal error in the enclave"}}


class _Activity:
    """Open connections and the time of the last ecall, for exiting when idle."""

    def __init__(self) -> None:
        self.connections = 0
        self.last = time.monotonic()


async def _serve_connection(state: EnclaveState, pool: ThreadPoolExecutor, activity: _Activity,
                            reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    loop = asyncio.get_running_loop()
    activity.connections += 1
    try:
        while True:
            try:
                header = await reader.readexactly(4)
            except asyncio.IncompleteReadError:
                return
            try:
                payload = await reader.readexactly(frame_length(header))
                message = decode_payload(payload)
            except ProtocolError as exc:
                writer.write(encode_frame({"v": VERSION, "id": -1, "ok": False,
                                           "error": {"type": "ProtocolError", "message": str(exc)}}))
                await writer.drain()
                return  # framing is no longer trustworthy on this connection
            reply = await loop.run_in_executor(pool, dispatch, state, message)
            writer.write(encode_frame(reply))
            await writer.drain()
            activity.last = time.monotonic()
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        activity.connections -= 1
        activity.last = time.monotonic()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _exit_when_idle(activity: _Activity, idle_exit_s: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await asyncio.sleep(min(1.0, idle_exit_s))
        if activity.connections == 0 and time.monotonic() - activity.last > idle_exit_s:
            log.info("no ecalls for %.0f s: exiting", idle_exit_s)
            stop.set()


async def serve(state: EnclaveState, socket_path: Path, on_ready: Callable[[], None], workers: int = 4,
                idle_exit_s: float | None = None) -> None:
    """Serve ecalls until SIGTERM/SIGINT (or idle for ``idle_exit_s``); the socket is 0600 and removed at exit."""
    socket_path = Path(socket_path)
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ecall")
    activity = _Activity()
    old_umask = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(lambda r, w: _serve_connection(state, pool, activity, r, w),
                                                 path=str(socket_path), limit=1 << 20)
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
