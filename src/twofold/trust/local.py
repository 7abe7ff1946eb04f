"""Policies and service stacks for the embedded default: key broker and enclave on this machine's loopback."""

from __future__ import annotations

import base64
import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from twofold.data.tabular import read_manifest
from twofold.enclave.attester import load_or_create_platform_key
from twofold.enclave.measure import current_measurement, whole_measurement
from twofold.keys.keystore import PASSPHRASE_ENV
from twofold.trust.policy import Policy, parse_policy
from twofold.trust.services import ServiceProcess, start_enclave, start_kbs


def dataset_id_of(value: str) -> str:
    """A dataset id given as an id, '*', or a dataset directory."""
    if value == "*" or value.startswith("ds-"):
        return value
    return str(read_manifest(Path(value))["manifest"]["dataset_id"])


def resolve_measurements(measurement: str) -> list[str]:
    """'current' (partitioned TCB), 'whole' (every twofold file), 'both', or explicit hex digests (comma-separated)."""
    named = {"current": [current_measurement()], "whole": [whole_measurement()],
             "both": [current_measurement(), whole_measurement()]}
    return named.get(measurement, [m.strip() for m in measurement.split(",") if m.strip()])


def write_policy(out: Path, datasets: Sequence[str], measurement: str = "current", allow_simulation: bool = True,
                 platform_key: Path | None = None, expires: str | None = None) -> Policy:
    """A policy letting ``measurement`` (default: this installation's TCB) open ``datasets``."""
    platform = load_or_create_platform_key(platform_key).public_key().public_bytes_raw()
    rule = {"name": "twofold enclave", "datasets": [dataset_id_of(d) for d in datasets], "expires": expires}
    policy = parse_policy({
        "version": 1,
        "allow_simulation": allow_simulation,
        "simulation_platform_keys": [base64.b64encode(platform).decode()],
        "measurements": {m: rule for m in resolve_measurements(measurement)},
    })
    policy.save(out)
    return policy


@dataclass
class TrustStack:
    """A running key broker and enclave, and where to reach them."""

    kbs: ServiceProcess
    enclave: ServiceProcess
    workdir: Path

    @property
    def kbs_url(self) -> str:
        return self.kbs.address

    @property
    def socket_path(self) -> Path:
        return Path(self.enclave.address)

    @property
    def audit_path(self) -> Path:
        return self.workdir / "kbs-audit.jsonl"


@contextlib.contextmanager
def local_trust_stack(keystore_dir: Path, passphrase: str, datasets: Sequence[str],
                      workdir: Path | None = None) -> Iterator[TrustStack]:
    """Start a key broker (owner side) and an enclave on loopback; stop both by PID on exit."""
    own = workdir is None
    root = Path(tempfile.mkdtemp(prefix="twofold-trust-")) if own else Path(workdir)
    env = {PASSPHRASE_ENV: passphrase}
    kbs = enclave = None
    try:
        policy_path = root / "policy.json"
        write_policy(policy_path, datasets)
        kbs = start_kbs(keystore_dir, policy_path, root / "kbs-audit.jsonl", env=env, log_path=root / "kbs.log")
        # The enclave never gets the owner's passphrase: keys reach it only through the broker.
        enclave = start_enclave(root / "enclave.sock", kbs.address, env={PASSPHRASE_ENV: ""},
                                log_path=root / "enclave.log")
        yield TrustStack(kbs, enclave, root)
    finally:
        for service in (enclave, kbs):
            if service is not None:
                service.stop()
        if own:
            shutil.rmtree(root, ignore_errors=True)
