"""The data owner's release policy: which code (measurement) may open which datasets, until when.

Policy files are JSON::

    {
      "version": 1,
      "allow_simulation": true,
      "simulation_platform_keys": ["<base64 Ed25519 public key>", ...],
      "nonce_ttl_seconds": 60,
      "token_ttl_seconds": 3600,
      "measurements": {
        "<sha256 hex>": {"name": "twofold 0.1.0", "datasets": ["ds-...", "*"], "expires": "2027-01-01T00:00:00Z"}
      }
    }
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from twofold.errors import AttestationError, ConfigError

POLICY_VERSION = 1


@dataclass(frozen=True)
class MeasurementRule:
    name: str
    datasets: tuple[str, ...]
    expires: float | None  # unix time

    def allows(self, dataset_id: str) -> bool:
        return "*" in self.datasets or dataset_id in self.datasets


@dataclass(frozen=True)
class Policy:
    allow_simulation: bool
    simulation_platform_keys: frozenset[str]
    measurements: dict[str, MeasurementRule] = field(default_factory=dict)
    nonce_ttl_seconds: float = 60.0
    token_ttl_seconds: float = 3600.0

    def rule_for(self, measurement: str, now: float) -> MeasurementRule:
        rule = self.measurements.get(measurement)
        if rule is None:
            raise AttestationError(f"measurement {measurement[:16]}... is not allowed by the policy")
        if rule.expires is not None and now > rule.expires:
            raise AttestationError(f"the policy entry for measurement {measurement[:16]}... has expired")
        return rule

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": POLICY_VERSION,
            "allow_simulation": self.allow_simulation,
            "simulation_platform_keys": sorted(self.simulation_platform_keys),
            "nonce_ttl_seconds": self.nonce_ttl_seconds,
            "token_ttl_seconds": self.token_ttl_seconds,
            "measurements": {
                m: {"name": r.name, "datasets": list(r.datasets),
                    "expires": None if r.expires is None else datetime.fromtimestamp(r.expires).astimezone()
                    .isoformat()}
                for m, r in self.measurements.items()
            },
        }

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _parse_time(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ConfigError(f"invalid expiry time {value!r} in policy (use ISO 8601)") from None


def parse_policy(data: Any) -> Policy:
    if not isinstance(data, dict) or data.get("version") != POLICY_VERSION:
        raise ConfigError(f"policy must be a JSON object with version {POLICY_VERSION}")
    try:
        measurements = {}
        for measurement, rule in dict(data.get("measurements", {})).items():
            if len(measurement) != 64 or any(c not in "0123456789abcdef" for c in measurement):
                raise ConfigError(f"policy measurement {measurement!r} is not a SHA-256 hex digest")
            datasets = rule.get("datasets", [])
            if not isinstance(datasets, list) or not all(isinstance(d, str) for d in datasets):
                raise ConfigError("policy 'datasets' must be a list of dataset ids (or '*')")
            measurements[measurement] = MeasurementRule(str(rule.get("name", "")), tuple(datasets),
                                                        _parse_time(rule.get("expires")))
        return Policy(
            allow_simulation=bool(data.get("allow_simulation", False)),
            simulation_platform_keys=frozenset(str(k) for k in data.get("simulation_platform_keys", [])),
            measurements=measurements,
            nonce_ttl_seconds=float(data.get("nonce_ttl_seconds", 60)),
            token_ttl_seconds=float(data.get("token_ttl_seconds", 3600)),
        )
    except (AttributeError, TypeError, ValueError):
        raise ConfigError("malformed policy file") from None


def load_policy(path: Path | str) -> Policy:
    try:
        return parse_policy(json.loads(Path(path).read_text("utf-8")))
    except FileNotFoundError:
        raise ConfigError(f"policy file {path} does not exist") from None
    except json.JSONDecodeError:
        raise ConfigError(f"policy file {path} is not valid JSON") from None
