"""Writing the owner's policy for her datasets: which measurements (this installation's, or given ones) may open
which datasets."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twofold.data.tabular import read_manifest
from twofold.enclave.attester import load_or_create_platform_key
from twofold.enclave.measure import current_measurement, whole_measurement
from twofold.kbs.policy import Policy, parse_policy


def dataset_id_of(value: str) -> str:
    """A dataset id given as an id, '*', or a dataset directory."""
    if value == "*" or value.startswith("ds-"):
        return value
    return read_manifest(Path(value)).dataset_id


def resolve_measurements(measurement: str) -> list[str]:
    """'current' (partitioned TCB), 'whole' (every twofold file), 'both', or explicit hex digests (comma-separated)."""
    named = {"current": [current_measurement()], "whole": [whole_measurement()],
             "both": [current_measurement(), whole_measurement()]}
    return named.get(measurement, [m.strip() for m in measurement.split(",") if m.strip()])


def write_policy(out: Path, datasets: Sequence[str], measurement: str = "current", allow_simulation: bool = True,
                 platform_key: Path | None = None, expires: str | None = None,
                 release: Sequence[str] = ("sealed",), backend: str = "simulation",
                 platform: dict[str, Any] | None = None) -> Policy:
    """A policy letting ``measurement`` (default: this installation's TCB) open ``datasets``, releasing results
    as ``release`` allows (default: sealed for the owner only). ``backend`` other than simulation takes its
    platform rule (launch measurements, collateral, ...: :class:`~twofold.kbs.policy.PlatformRule`)."""
    rule = {"name": "twofold enclave", "datasets": [dataset_id_of(d) for d in datasets], "expires": expires}
    doc: dict[str, Any] = {
        "version": 3,
        "backends": [backend],
        "allow_simulation": allow_simulation and backend == "simulation",
        "measurements": {m: rule for m in resolve_measurements(measurement)},
        "datasets": {"*": {"release": list(release)}},
    }
    if backend == "simulation":
        key = load_or_create_platform_key(platform_key).public_key().public_bytes_raw()
        doc["simulation_platform_keys"] = [base64.b64encode(key).decode()]
    else:
        doc["platforms"] = {backend: platform or {}}
    policy = parse_policy(doc)
    policy.save(out)
    return policy
