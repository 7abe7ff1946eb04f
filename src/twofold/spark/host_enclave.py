"""One enclave per executor host, started on demand and shared by that host's tasks.

A task connects to the host's enclave socket; if nothing listens, it starts the enclave (isolated, in a clean
environment, through :func:`twofold.services.enclave_command`) under a file lock (so concurrent tasks start
one), records its PID beside the socket, and waits for it. An enclave that dies mid-job is restarted the same
way and attests again; callers then re-open and re-load what they need. An enclave that goes silent (frozen,
say by SIGSTOP) is not restarted: the call is retried once only if it answers a short probe, and otherwise fails
with a ServiceError naming its PID file and log.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from twofold.enclave.broker_client import BrokerAddress
from twofold.errors import ConfigError, ServiceError
from twofold.services import READY_PREFIX, enclave_command
from twofold.spark.enclave_client import SILENCE_TIMEOUT_S, EnclaveClient, EnclaveSilentError, responsive

START_TIMEOUT_S = 60.0  # attestation included; the start lock is held at most this long (plus a spawn)
PROBE_TIMEOUT_S = 4.0  # after a silence timeout, the enclave must show life this fast to be retried
_PROBE_CONNECT_S = 2.0


@dataclass(frozen=True)
class EnclaveConfig:
    """Where a host's enclave listens, which key broker it attests to (its URL and the identity the owner issued,
    as JSON), and the link's deadlines. None of it is secret; a wrong identity only gets the enclave no keys."""

    socket: str
    kbs_url: str
    broker_identity: str = ""
    cache_mib: int = 4096
    backend: str = "simulation"  # the enclave's attestation backend ("auto" on TEE hosts)
    idle_exit_s: int = 900
    heartbeat_s: float = 5.0
    silence_timeout_s: float = SILENCE_TIMEOUT_S

    @property
    def pid_path(self) -> Path:
        return Path(self.socket + ".pid")

    @property
    def log_path(self) -> Path:
        return Path(self.socket + ".log")

    @property
    def broker(self) -> BrokerAddress:
        return BrokerAddress(self.kbs_url, self.broker_identity)

    @property
    def identity_path(self) -> Path:
        return Path(self.socket + ".broker.json")


def _listening(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        probe.settimeout(_PROBE_CONNECT_S)
        try:
            probe.connect(path)
            return True
        except OSError:
            return False


def _last_log_line(config: EnclaveConfig) -> str:
    try:
        lines = config.log_path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no output"
    return lines[-1] if lines else "no output"


def _lock_within(lock: Any, deadline: float, config: EnclaveConfig) -> None:
    """Take the start lock, waiting at most until ``deadline`` for a task that is starting the enclave."""
    while True:  # bounded by the deadline
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise ServiceError(f"another task has been starting the enclave at {config.socket} for too long; "
                                   f"see {config.log_path}") from None
            time.sleep(0.05)


def _spawn(config: EnclaveConfig) -> subprocess.Popen:
    if not config.broker_identity:
        raise ConfigError("the enclave needs the key broker's identity (twofold kbs identity; --broker-identity)")
    config.identity_path.write_text(config.broker_identity)
    command, env = enclave_command(config.socket, config.kbs_url, config.identity_path, cache_mib=config.cache_mib,
                                   backend=config.backend, extra=("--idle-exit", str(config.idle_exit_s), "--heartbeat",
                                          str(config.heartbeat_s)))
    with open(config.log_path, "ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                                env=env)


def _ready(config: EnclaveConfig, log_offset: int) -> bool:
    """Whether the enclave started after ``log_offset`` of its log said ``ready`` (the one ready protocol of
    :mod:`twofold.services`; its stdout is the log here, since it outlives the task that started it)."""
    try:
        with open(config.log_path, "rb") as log:
            log.seek(log_offset)
            said = log.read().decode(errors="replace").splitlines()
    except OSError:
        return False
    return any(line.startswith(READY_PREFIX) for line in said) and _listening(config.socket)


def _await_listening(config: EnclaveConfig, process: subprocess.Popen, deadline: float, log_offset: int) -> None:
    """Wait for the started enclave's ready line; on failure or timeout it is killed (by PID) and the log named."""
    while not _ready(config, log_offset):  # bounded by the deadline
        code = process.poll()
        if code is not None or time.monotonic() > deadline:
            if code is None:
                process.kill()
                process.wait(10)
            config.pid_path.unlink(missing_ok=True)
            why = f"exited with status {code}" if code is not None else f"was not ready within {START_TIMEOUT_S:.0f} s"
            raise ServiceError(f"the enclave at {config.socket} did not start: it {why} ({_last_log_line(config)}); "
                               f"see {config.log_path}")
        time.sleep(0.05)


def ensure_enclave(config: EnclaveConfig) -> None:
    """Make sure this host's enclave is listening, starting it if needed (one per host, under a file lock)."""
    if _listening(config.socket):
        return
    Path(config.socket).parent.mkdir(parents=True, exist_ok=True)
    with open(config.socket + ".lock", "w") as lock:
        # The lock must be held while starting so that concurrent tasks start one enclave; a holder is itself
        # bounded by START_TIMEOUT_S, so waiting for it has a deadline too.
        _lock_within(lock, time.monotonic() + START_TIMEOUT_S + 10, config)
        if _listening(config.socket):
            return
        log_offset = config.log_path.stat().st_size if config.log_path.exists() else 0
        process = _spawn(config)
        config.pid_path.write_text(str(process.pid))
        _await_listening(config, process, time.monotonic() + START_TIMEOUT_S, log_offset)


def _exited(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _exited(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop_enclave(config: EnclaveConfig, timeout: float = 10.0) -> None:
    """Stop the host's enclave through the PID recorded when it was started (SIGTERM, then SIGKILL)."""
    try:
        pid = int(config.pid_path.read_text())
    except (FileNotFoundError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        config.pid_path.unlink(missing_ok=True)
        return
    if not _wait_exit(pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_exit(pid, timeout)
    config.pid_path.unlink(missing_ok=True)


class HostEnclave:
    """A worker process's connection to its host's enclave, reconnecting (and restarting it) if it died."""

    _clients: ClassVar[dict[str, EnclaveClient]] = {}  # per worker process; holds no secrets
    _clients_lock: ClassVar[threading.Lock] = threading.Lock()  # guards the dict only, never held across I/O

    def __init__(self, config: EnclaveConfig) -> None:
        self.config = config

    def client(self) -> EnclaveClient:
        with self._clients_lock:
            client = self._clients.get(self.config.socket)
        if client is not None:
            return client
        ensure_enclave(self.config)
        fresh = EnclaveClient(self.config.socket, silence_timeout=self.config.silence_timeout_s)
        with self._clients_lock:
            client = self._clients.setdefault(self.config.socket, fresh)
        if client is not fresh:  # another thread won the race
            fresh.close()
        return client

    def reset(self) -> None:
        with self._clients_lock:
            client = self._clients.pop(self.config.socket, None)
        if client is not None:
            client.close()

    def call(self, name: str, **args: Any) -> dict[str, Any]:
        """An ecall, retried once: after a broken link on a restarted enclave, after silence only if it is alive."""
        try:
            return self.client().call(name, **args)
        except EnclaveSilentError as exc:
            self.reset()
            if not responsive(self.config.socket, PROBE_TIMEOUT_S):
                raise EnclaveSilentError(f"{exc}; it did not answer a probe within {PROBE_TIMEOUT_S:g} s either "
                                         f"(pid file {self.config.pid_path}, log {self.config.log_path})") from None
            return self.client().call(name, **args)
        except ServiceError:
            self.reset()
            return self.client().call(name, **args)

    def ensure_partition(self, dataset_dir: str, dataset_id: str, index: int) -> None:
        """Make a partition resident in the enclave, which reads and authenticates its ciphertext itself."""
        args = {"dataset_id": dataset_id, "index": index, "directory": str(Path(dataset_dir).resolve())}
        try:
            self.call("load_partition_from", **args)
        except ConfigError:  # a fresh enclave: authenticate the manifest first
            self.open_dataset(dataset_dir)
            self.call("load_partition_from", **args)

    def open_dataset(self, dataset_dir: str) -> dict[str, Any]:
        """Have the enclave authenticate and open the dataset whose manifest is in ``dataset_dir``."""
        return self.open_manifest((Path(dataset_dir) / "manifest.json").read_bytes())

    def open_manifest(self, manifest: bytes) -> dict[str, Any]:
        """Have the enclave authenticate and open the dataset of a manifest file's bytes."""
        return self.call("open_dataset", manifest=manifest)

    def dataset_call(self, manifest: bytes, name: str, **args: Any) -> dict:
        """An ecall that needs an open dataset; re-opens it from ``manifest`` once if the enclave was restarted."""
        try:
            return self.call(name, **args)
        except ConfigError:
            self.open_manifest(manifest)
            return self.call(name, **args)

    def partition_call(self, dataset_dir: str, dataset_id: str, index: int, name: str, **args: Any) -> dict:
        """An ecall on one partition, (re)loading it first; retried once if the enclave lost it meanwhile."""
        try:  # the common case: resident already, one round trip
            return self.call(name, dataset_id=dataset_id, index=index, **args)
        except ConfigError:  # not loaded here (first use, eviction, or a restarted enclave)
            self.ensure_partition(dataset_dir, dataset_id, index)
            return self.call(name, dataset_id=dataset_id, index=index, **args)
