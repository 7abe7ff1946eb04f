"""Start and stop twofold's services as real processes from the same CLI entry points used in production.

Each service prints one ready line on stdout (``ready <address>``); a service is stopped through the process
id that started it (SIGTERM, then SIGKILL), never by name.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twofold.errors import ServiceError

READY_PREFIX = "ready "


class ServiceProcess:
    """A running twofold service started with ``python -m twofold ARGS``."""

    def __init__(self, name: str, args: list[str], env: dict[str, str] | None = None,
                 timeout: float = 60.0, log_path: Path | None = None,
                 launch: tuple[list[str], dict[str, str]] | None = None) -> None:
        """``launch`` replaces ``python -m twofold ARGS`` in the caller's environment by a whole command line and
        environment (what :func:`enclave_command` builds)."""
        self.name = name
        self.args = args
        self._own_log = log_path is None
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="twofold-service-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = log_path
        with open(self.log_path, "ab") as log:
            command, environment = launch or ([sys.executable, "-m", "twofold", *args], {**os.environ, **(env or {})})
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                                            env=environment, text=True)
        self.address = self._wait_ready(timeout)

    def log_text(self) -> str:
        """What the service wrote to stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = self.log_text().strip().splitlines()
                raise ServiceError(f"{self.name} exited during start: {error[-1] if error else 'no output'}")
            ready, _, _ = select.select([self.process.stdout], [], [], 0.1)
            if ready:
                line = self.process.stdout.readline()
                if line.startswith(READY_PREFIX):
                    return line[len(READY_PREFIX):].strip()
        self.stop()
        raise ServiceError(f"{self.name} did not become ready within {timeout:.0f} s")

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        """Send a signal by PID (SIGSTOP freezes the service, SIGCONT thaws it; for fault tests and benchmarks)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signum)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate by PID (thawing a frozen service first); escalate to SIGKILL after ``timeout``."""
        if self.process.poll() is None:
            self.signal(signal.SIGCONT)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        if self._own_log:
            with contextlib.suppress(FileNotFoundError):
                self.log_path.unlink()

    def kill(self) -> None:
        """SIGKILL by PID (for fault tests): no cleanup runs."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# One BLAS thread per ecall: concurrent tasks already keep every core busy, and nested threads oversubscribe.
ENCLAVE_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# What an enclave inherits from its starter: where the simulated platform key lives; nothing else (no PYTHONPATH,
# proxies, SSL_CERT_FILE, passphrase).
_ENCLAVE_INHERITS = ("TWOFOLD_HOME", "HOME")
# The enclave's interpreter flags and entry point: isolated (-I), and bytecode neither written (-B) nor read (a
# cache directory that cannot exist, below /dev/null). The Gramine manifest (twofold.gramine) runs the same.
ENCLAVE_ENTRY = ("-I", "-B", "-X", "pycache_prefix=/dev/null/twofold-no-pycache", "-m", "twofold.enclave", "serve")


def enclave_command(socket_path: Path | str, kbs_url: str, broker_identity: Path | str, *, cache_mib: int = 1024,
                    backend: str = "simulation", extra: tuple[str, ...] = (),
                    env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that start an enclave: its minimal entry point, isolated (``-I``), with
    no bytecode cache, in a clean environment. ``backend``: its attestation backend (``auto`` on hardware).
    ``env`` adds variables (fault tests, platform-key location)."""
    inherited = {name: os.environ[name] for name in _ENCLAVE_INHERITS if name in os.environ}
    environment = {"PATH": os.defpath, "LANG": "C.UTF-8", **inherited, **ENCLAVE_ENV, **(env or {})}
    command = [sys.executable, *ENCLAVE_ENTRY, "--socket", str(socket_path), "--kbs", kbs_url,
               "--broker-identity", str(broker_identity), "--cache-mib", str(cache_mib), "--backend", backend, *extra]
    return command, environment


def start_kbs(keystore_dir: Path, policy_path: Path, audit_path: Path, port: int = 0,
              env: dict[str, str] | None = None, log_path: Path | None = None,
              extra: tuple[str, ...] = ()) -> ServiceProcess:
    """The owner's key broker on loopback; the passphrase travels in the environment, never in argv. ``extra``
    holds further `kbs serve` options (its limits)."""
    return ServiceProcess("key broker", ["kbs", "serve", "--keystore", str(keystore_dir), "--policy",
                                         str(policy_path), "--audit-log", str(audit_path), "--host", "127.0.0.1",
                                         "--port", str(port), *extra], env=env, log_path=log_path)


def start_enclave(socket_path: Path, kbs_url: str, broker_identity: Path, env: dict[str, str] | None = None,
                  cache_mib: int = 1024, log_path: Path | None = None, extra: tuple[str, ...] = ()) -> ServiceProcess:
    """An enclave on a Unix socket, started by :func:`enclave_command`; ``extra`` holds further options
    (heartbeat, limits) and ``env`` further environment variables."""
    launch = enclave_command(socket_path, kbs_url, broker_identity, cache_mib=cache_mib, extra=extra, env=env)
    return ServiceProcess("enclave", launch[0][launch[0].index("serve"):], log_path=log_path, launch=launch)


def start_he(system: Path, role: str, port: int = 0, extra: tuple[str, ...] = (), log_path: Path | None = None,
             timeout: float = 60.0) -> ServiceProcess:
    """MU or SU of a two-server system on loopback (``extra``: further `he serve` options, e.g. ``--su``)."""
    return ServiceProcess(f"{role.upper()}", ["he", "serve", "--role", role, "--system", str(system), "--port",
                                              str(port), *extra], timeout=timeout, log_path=log_path)
