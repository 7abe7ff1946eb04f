"""One enclave per executor host, started on demand and shared by that host's tasks.

A task connects to the host's enclave socket; if nothing listens, it starts ``twofold enclave serve`` under a
file lock (so concurrent tasks start one), records its PID beside the socket, and waits for it. An enclave that
dies mid-job is restarted the same way and attests again; callers then re-open and re-load what they need.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from twofold.errors import ConfigError, ServiceError
from twofold.trust.enclave_client import EnclaveClient
from twofold.trust.services import ENCLAVE_ENV

START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class EnclaveConfig:
    """Where a host's enclave listens and which key broker it attests to."""

    socket: str
    kbs_url: str
    cache_mib: int = 4096
    idle_exit_s: int = 900

    @property
    def pid_path(self) -> Path:
        return Path(self.socket + ".pid")

    @property
    def log_path(self) -> Path:
        return Path(self.socket + ".log")


def _listening(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
            return True
        except OSError:
            return False


def ensure_enclave(config: EnclaveConfig) -> None:
    """Make sure this host's enclave is listening, starting it if needed."""
    if _listening(config.socket):
        return
    Path(config.socket).parent.mkdir(parents=True, exist_ok=True)
    with open(config.socket + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _listening(config.socket):
            return
        with open(config.log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "twofold", "enclave", "serve", "--socket", config.socket, "--kbs",
                 config.kbs_url, "--cache-mib", str(config.cache_mib), "--idle-exit", str(config.idle_exit_s)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**{k: v for k, v in os.environ.items() if k != "TWOFOLD_PASSPHRASE"}, **ENCLAVE_ENV},
            )
        config.pid_path.write_text(str(process.pid))
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _listening(config.socket):
            if process.poll() is not None or time.monotonic() > deadline:
                lines = config.log_path.read_text(errors="replace").strip().splitlines()
                raise ServiceError(f"the enclave did not start: {lines[-1] if lines else 'no output'}")
            time.sleep(0.05)


def _exited(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def stop_enclave(config: EnclaveConfig, timeout: float = 10.0) -> None:
    """Stop the host's enclave through the PID recorded when it was started."""
    try:
        pid = int(config.pid_path.read_text())
    except (FileNotFoundError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        config.pid_path.unlink(missing_ok=True)
        return
    deadline = time.monotonic() + timeout
    while not _exited(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.05)
    config.pid_path.unlink(missing_ok=True)


class HostEnclave:
    """A worker process's connection to its host's enclave, reconnecting (and restarting it) if it died."""

    _clients: ClassVar[dict[str, EnclaveClient]] = {}  # per worker process; holds no secrets

    def __init__(self, config: EnclaveConfig) -> None:
        self.config = config

    def client(self) -> EnclaveClient:
        client = self._clients.get(self.config.socket)
        if client is None:
            ensure_enclave(self.config)
            client = self._clients[self.config.socket] = EnclaveClient(self.config.socket)
        return client

    def reset(self) -> None:
        client = self._clients.pop(self.config.socket, None)
        if client is not None:
            client.close()

    def call(self, name: str, **args: Any) -> dict[str, Any]:
        try:
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
        return self.call("open_dataset", manifest=(Path(dataset_dir) / "manifest.json").read_bytes())

    def dataset_call(self, dataset_dir: str, name: str, **args: Any) -> dict:
        """An ecall that needs an open dataset; re-opens it once if the enclave was restarted meanwhile."""
        try:
            return self.call(name, **args)
        except ConfigError:
            self.open_dataset(dataset_dir)
            return self.call(name, **args)

    def partition_call(self, dataset_dir: str, dataset_id: str, index: int, name: str, **args: Any) -> dict:
        """An ecall on one partition, (re)loading it first; retried once if the enclave lost it meanwhile."""
        try:  # the common case: resident already, one round trip
            return self.call(name, dataset_id=dataset_id, index=index, **args)
        except ConfigError:  # not loaded here (first use, eviction, or a restarted enclave)
            self.ensure_partition(dataset_dir, dataset_id, index)
            return self.call(name, dataset_id=dataset_id, index=index, **args)
