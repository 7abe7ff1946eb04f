"""Deadlines and bounds on the task -> enclave link: heartbeats, frozen and killed enclaves, caps and floods.

Real ecalls are made long without test hooks in the trusted code: k-means seeding with many clusters on a
partition of a few thousand rows (cost grows with k squared) for a long computation, and a partition read from
storage that stalls (a FIFO in the directory the untrusted side names) for an ecall in flight exactly as long as
a test needs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pyarrow as pa
import pytest

from twofold.data import EncryptedDataset
from twofold.errors import IntegrityError, ProtocolError, ServiceError
from twofold.services import ServiceProcess, start_enclave
from twofold.spark.enclave_client import EnclaveClient, EnclaveGoneError, EnclaveSilentError
from twofold.spark.host_enclave import PROBE_TIMEOUT_S, EnclaveConfig, HostEnclave, stop_enclave

from .conftest import Broker

pytestmark = pytest.mark.service  # repeated in CI: races show only sometimes

ROWS = (3000, 1000)  # rows of the two partitions
HEARTBEAT_S = 0.2
SILENCE_S = 1.0
LONG_CALL_S = 3.0  # what the calibrated long ecall should take at least


@pytest.fixture
def big(keystore, tmp_path) -> EncryptedDataset:
    x = np.random.default_rng(7).normal(size=(sum(ROWS), 2))
    table = pa.table({"x0": x[:, 0], "x1": x[:, 1]})
    return EncryptedDataset.write(table, tmp_path / "big", keystore, rows_per_file=ROWS[0])


@pytest.fixture
def kbs(home, keystore, big, tmp_path) -> Iterator[Broker]:
    work = tmp_path / "kbs"
    work.mkdir()
    made = Broker(keystore, work, [big])
    yield made
    made.process.stop()


@pytest.fixture
def start(kbs, tmp_path) -> Iterator[Callable[..., ServiceProcess]]:
    """Start ``twofold enclave serve`` with short deadlines; every process is stopped by PID afterwards."""
    started: list[ServiceProcess] = []

    def make(name: str = "e", max_connections: int = 64) -> ServiceProcess:
        started.append(start_enclave(tmp_path / f"{name}.sock", kbs.url, kbs.identity_path, cache_mib=256,
                                     log_path=tmp_path / f"{name}.log",
                                     extra=("--heartbeat", str(HEARTBEAT_S), "--max-connections",
                                            str(max_connections))))
        return started[-1]

    yield make
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)
        process.stop(timeout=2)


class _StalledStorage:
    """A copy of a dataset directory whose second partition is a FIFO: reading it blocks until ``release``."""

    def __init__(self, dataset: EncryptedDataset, directory: Path) -> None:
        directory.mkdir()
        self.directory = directory
        self.fifo = directory / dataset.files[1].name
        os.mkfifo(self.fifo)

    def release(self, attempts: int = 100) -> None:
        """Let the blocked reader through (it then reads nothing: not the file the manifest names)."""
        for _ in range(attempts):
            try:
                os.close(os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK))
                return
            except OSError:  # no reader yet
                time.sleep(0.05)
        raise AssertionError("nothing read the stalled partition")


@pytest.fixture
def stalled(big, tmp_path) -> _StalledStorage:
    return _StalledStorage(big, tmp_path / "stalled")


def _stalled_load(call: Callable[..., dict], dataset: EncryptedDataset, storage: _StalledStorage) -> Any:
    return call("load_partition_from", dataset_id=dataset.dataset_id, index=1, directory=str(storage.directory))


def _kmeans_args(call: Callable[..., dict], dataset: EncryptedDataset, k: int) -> dict[str, Any]:
    """The arguments of a k-means fit_stats ecall, at the initial state the enclave seals for the fit."""
    terms = {"dataset_id": dataset.dataset_id, "algorithm": "kmeans", "columns": ["x0", "x1"], "label": "",
             "params": {"k": k, "seed": 1}, "release": "sealed", "job": "job-deadlines"}
    return {**terms, "index": 0, "iteration": 0, "model_state": call("fit_init", **terms)["state"]}


def _load(call: Callable[..., dict], dataset: EncryptedDataset, index: int = 0) -> int:
    return call("load_partition_from", dataset_id=dataset.dataset_id, index=index, directory=str(dataset.path))["rows"]


def _prepared(process: ServiceProcess, dataset: EncryptedDataset, silence: float = SILENCE_S) -> EnclaveClient:
    client = EnclaveClient(process.address, silence_timeout=silence)
    client.call("open_dataset", manifest=(dataset.path / "manifest.json").read_bytes())
    assert _load(client.call, dataset) == ROWS[0]
    return client


class _Background:
    """One call on a thread: its result or error and when it ended."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.ended = float("inf")
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.result = call()
        except BaseException as exc:
            self.error = exc
        self.ended = time.monotonic()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the call did not return within its deadline"


def _long_kmeans(client: EnclaveClient, dataset: EncryptedDataset, at_least: float) -> tuple[dict, float]:
    """A k-means seeding ecall that ran at least ``at_least`` seconds (k grows until it does; 5 tries at most)."""
    k, elapsed, reply = 400, 0.0, {}
    for _ in range(5):
        began = time.monotonic()
        reply = client.call("fit_stats", **_kmeans_args(client.call, dataset, k))
        elapsed = time.monotonic() - began
        if elapsed >= at_least or k == ROWS[0]:
            break
        k = min(ROWS[0], int(k * 1.6))
    return reply, elapsed


def test_long_computation_is_kept_alive_by_heartbeats(start, big):
    with _prepared(start(), big) as client:
        reply, elapsed = _long_kmeans(client, big, at_least=2.5 * SILENCE_S)
    assert isinstance(reply["stats"], bytes) and reply["stats"]  # sealed: the enclave answered
    assert elapsed > 2 * SILENCE_S, f"the ecall took only {elapsed:.1f} s: not long enough to test anything"
    assert client.heartbeats >= elapsed / HEARTBEAT_S / 3


def test_stalled_storage_read_is_kept_alive_until_it_fails(start, big, stalled):
    with _prepared(start(), big) as client:
        call = _Background(lambda: _stalled_load(client.call, big, stalled))
        time.sleep(3 * SILENCE_S)
        assert call.error is None and call.ended == float("inf"), call.error  # still in flight, not timed out
        stalled.release()
        call.join(5)
    # it failed on what it read (not the file the manifest names), not on a deadline
    assert isinstance(call.error, IntegrityError), call.error


def test_frozen_enclave_is_detected_within_the_silence_timeout(start, kbs, big, stalled):
    process = start()
    client = _prepared(process, big)
    call = _Background(lambda: _stalled_load(client.call, big, stalled))
    time.sleep(0.5)
    os.kill(process.pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        call.join(SILENCE_S + 5)
        assert isinstance(call.error, EnclaveSilentError), call.error
        assert "sent nothing for" in str(call.error) and "frozen" in str(call.error)
        assert SILENCE_S * 0.5 < call.ended - frozen_at < SILENCE_S + 1.0
        host = HostEnclave(EnclaveConfig(process.address, "http://unused", kbs.identity.to_json(),
                                         silence_timeout_s=SILENCE_S))
        began = time.monotonic()
        with pytest.raises(EnclaveSilentError, match="did not answer a probe"):
            host.call("info")  # retried at most once, after a probe: not forever
        assert time.monotonic() - began < SILENCE_S + PROBE_TIMEOUT_S + 2
        host.reset()
    finally:
        os.kill(process.pid, signal.SIGCONT)
        process.kill()
    assert not process.alive()


def test_killed_enclave_fails_the_call_and_host_enclave_restarts_it(kbs, big, stalled, tmp_path):
    config = EnclaveConfig(str(tmp_path / "host.sock"), kbs.url, kbs.identity.to_json(), cache_mib=256,
                           idle_exit_s=120, heartbeat_s=HEARTBEAT_S, silence_timeout_s=5.0)
    host = HostEnclave(config)
    try:
        host.ensure_partition(str(big.path), big.dataset_id, 0)
        first = int(config.pid_path.read_text())
        call = _Background(lambda: _stalled_load(host.client().call, big, stalled))
        time.sleep(0.5)
        os.kill(first, signal.SIGKILL)
        killed_at = time.monotonic()
        call.join(5)
        assert isinstance(call.error, EnclaveGoneError), call.error
        assert call.ended - killed_at < 5  # at once, not after the silence timeout
        assert host.call("info")["backend"] == "simulation"  # restarted (and attested) on demand
        assert int(config.pid_path.read_text()) != first
        args = _kmeans_args(lambda name, **a: host.dataset_call(big.manifest.to_bytes(), name, **a), big, 3)
        reply = host.partition_call(str(big.path), big.dataset_id, 0, "fit_stats", **{
            k: v for k, v in args.items() if k not in ("dataset_id", "index")})
        assert isinstance(reply["stats"], bytes) and reply["stats"]
    finally:
        host.reset()
        stop_enclave(config, timeout=3)
    assert not config.pid_path.exists()


def _short_calls(client: EnclaveClient, host: HostEnclave, dataset: EncryptedDataset, i: int) -> list:
    call = client.call if i % 2 else host.call
    out = [_load(call, dataset), call("partition_cached", dataset_id=dataset.dataset_id, index=i % 2)]
    with pytest.raises(ProtocolError, match=f"unknown ecall 'no_such_call_{i}'"):
        call(f"no_such_call_{i}")
    out.append(call("info")["cache"]["partitions"])
    return out


def test_concurrent_calls_share_one_client_without_waiting_on_each_other(start, kbs, big, stalled):
    process = start()
    host = HostEnclave(EnclaveConfig(process.address, "http://unused", kbs.identity.to_json(), silence_timeout_s=5.0))
    with _prepared(process, big, silence=5.0) as client, ThreadPoolExecutor(max_workers=16) as pool:
        long = _Background(lambda: _stalled_load(client.call, big, stalled))
        time.sleep(0.3)
        try:
            futures = [pool.submit(_short_calls, client, host, big, i) for i in range(16)]
            results = [f.result(timeout=20) for f in futures]
            assert long.ended == float("inf"), "the long call ended before the short ones"
        finally:
            stalled.release()
            host.reset()
        long.join(5)
    assert results == [[ROWS[0], {"cached": i % 2 == 0}, 1] for i in range(16)]
    assert client.connections_opened > 1
    assert isinstance(long.error, IntegrityError), long.error  # failed on what it read, not on a deadline


def test_connections_beyond_the_cap_are_refused_at_once(start):
    process = start(max_connections=4)
    held = [EnclaveClient(process.address) for _ in range(4)]
    try:
        for client in held:
            assert client.call("info")["backend"] == "simulation"
        began = time.monotonic()
        with EnclaveClient(process.address) as extra, pytest.raises(ServiceError, match="maximum of 4 connections"):
            extra.call("info")
        assert time.monotonic() - began < 5
        held.pop().close()
        assert _eventually_served(process.address, attempts=25, pause=0.2)
        assert all(client.call("info")["backend"] == "simulation" for client in held)
    finally:
        for client in held:
            client.close()


def _eventually_served(address: str, attempts: int, pause: float) -> bool:
    for _ in range(attempts):
        with contextlib.suppress(ServiceError), EnclaveClient(address) as client:
            return client.call("info")["backend"] == "simulation"
        time.sleep(pause)
    return False


def _frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


MALFORMED = [
    _frame(b"\xc1\xc1 not msgpack"),
    _frame(msgpack.packb([1, 2, 3])),
    _frame(msgpack.packb({"v": 99, "id": 1, "call": "info", "args": {}})),
    _frame(msgpack.packb({"v": 1, "id": 1, "call": "info", "args": {"extra": b"x" * 1000}})),
    struct.pack(">I", 0xFFFFFFFF) + b"x",
    struct.pack(">I", 1000) + b"truncated",  # then closed
    os.urandom(64),
]


def _flood(address: str, stop: threading.Event, min_rounds: int, max_rounds: int, limit_s: float = 30.0) -> int:
    """Send malformed frames on fresh connections until ``stop`` is set (but at least ``min_rounds``), at most
    ``max_rounds`` or ``limit_s`` seconds; returns the rounds done."""
    rounds, until = 0, time.monotonic() + limit_s
    while rounds < max_rounds and time.monotonic() < until and (rounds < min_rounds or not stop.is_set()):
        with socket.socket(socket.AF_UNIX) as raw:
            raw.settimeout(2)
            raw.connect(address)
            with contextlib.suppress(OSError):
                raw.sendall(MALFORMED[rounds % len(MALFORMED)])
                raw.recv(4096)
        rounds += 1
    return rounds


def test_a_flood_of_malformed_frames_does_not_starve_a_good_client(start, big):
    process = start()
    stalled = [socket.socket(socket.AF_UNIX) for _ in range(4)]
    try:
        for raw in stalled:  # half a frame, then nothing: each holds one connection, not the server
            raw.connect(process.address)
            raw.sendall(struct.pack(">I", 100) + b"partial")
        with _prepared(process, big, silence=5.0) as client, ThreadPoolExecutor(max_workers=3) as pool:
            stop = threading.Event()
            floods = [pool.submit(_flood, process.address, stop, 10, 400) for _ in range(3)]
            worst = 0.0
            for i in range(40):
                began = time.monotonic()
                assert _load(client.call, big, i % 2) == ROWS[i % 2]
                worst = max(worst, time.monotonic() - began)
            stop.set()
            rounds = sum(f.result(timeout=40) for f in floods)
        assert rounds >= 30, "the flood hardly ran"
        assert worst < 5.0, f"a good call took {worst:.1f} s during the flood"  # starved, not merely slow
        assert process.alive() and _eventually_served(process.address, attempts=1, pause=0)
    finally:
        for raw in stalled:
            raw.close()


def test_client_refuses_calls_after_close(start):
    client = EnclaveClient(start().address)
    client.close()
    with pytest.raises(ServiceError, match="closed"):
        client.call("info")


def test_unreachable_enclave_is_a_service_error(tmp_path: Path):
    with pytest.raises(ServiceError, match="no enclave is listening"):
        EnclaveClient(tmp_path / "nobody.sock")
