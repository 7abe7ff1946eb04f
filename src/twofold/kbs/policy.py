"""The data owner's release policy: which code (measurement) on which attestation backends may open which
datasets, until when, and what may leave the enclave for each dataset.

Policy files are JSON, version 2 (version 1 files, without ``backends`` and ``datasets``, are still read)::

    {
      "version": 2,
      "backends": ["simulation"],
      "allow_simulation": true,
      "simulation_platform_keys": ["<base64 Ed25519 public key>", ...],
      "nonce_ttl_seconds": 60,
      "token_ttl_seconds": 3600,
      "measurements": {
        "<sha256 hex>": {"name": "twofold 0.1.0", "datasets": ["ds-...", "*"], "expires": "2027-01-01T00:00:00Z"}
      },
      "datasets": {
        "ds-...": {"release": ["sealed"], "budget": {"epsilon": 1.0, "delta": 1e-6}}
      }
    }

``backends`` lists the attestation backends whose evidence the broker accepts (simulation only with
``allow_simulation``). ``datasets`` says, per dataset id (or ``*``), which release modes are allowed
(``sealed``: results only the owner can open; ``statistics``: aggregates released to the caller) and an optional
privacy budget; a dataset without an entry allows every mode and has no budget. Unknown keys are refused, so a
misspelt field never silently weakens a policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from twofold.errors import AttestationError, ConfigError

POLICY_VERSION = 2
READ_VERSIONS = (1, 2)
RELEASE_MODES = ("sealed", "statistics")
BACKENDS = ("simulation", "sev-snp", "tdx", "sgx")
_TOP_KEYS = {"version", "backends", "allow_simulation", "simulation_platform_keys", "nonce_ttl_seconds",
             "token_ttl_seconds", "measurements", "datasets"}


@dataclass(frozen=True)
class MeasurementRule:
    name: str
    datasets: tuple[str, ...]
    expires: float | None  # unix time

    def allows(self, dataset_id: str) -> bool:
        return "*" in self.datasets or dataset_id in self.datasets


@dataclass(frozen=True)
class Budget:
    """A differential-privacy budget for what is released from one dataset."""

    epsilon: float
    delta: float = 0.0


@dataclass(frozen=True)
class DatasetRule:
    release: tuple[str, ...] = RELEASE_MODES
    budget: Budget | None = None

    def allows_release(self, mode: str) -> bool:
        return mode in self.release


@dataclass(frozen=True)
class Policy:
    allow_simulation: bool
    simulation_platform_keys: frozenset[str]
    measurements: dict[str, MeasurementRule] = field(default_factory=dict)
    nonce_ttl_seconds: float = 60.0
    token_ttl_seconds: float = 3600.0
    backends: tuple[str, ...] = ("simulation",)
    datasets: dict[str, DatasetRule] = field(default_factory=dict)

    def accepts_backend(self, backend: str) -> bool:
        return backend in self.backends and (backend != "simulation" or self.allow_simulation)

    def dataset_rule(self, dataset_id: str) -> DatasetRule:
        """What may leave the enclave for ``dataset_id`` (its own entry, else ``*``'s, else everything)."""
        return self.datasets.get(dataset_id) or self.datasets.get("*") or DatasetRule()

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
            "backends": list(self.backends),
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
            "datasets": {
                d: {"release": list(r.release),
                    **({"budget": {"epsilon": r.budget.epsilon, "delta": r.budget.delta}} if r.budget else {})}
                for d, r in self.datasets.items()
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


def _parse_datasets(raw: Any) -> dict[str, DatasetRule]:
    if not isinstance(raw, dict):
        raise ConfigError("policy 'datasets' must map dataset ids (or '*') to rules")
    out = {}
    for dataset, rule in raw.items():
        if not isinstance(rule, dict) or set(rule) - {"release", "budget"}:
            raise ConfigError(f"policy rule of dataset {dataset!r} may hold only 'release' and 'budget'")
        release = tuple(rule.get("release", RELEASE_MODES))
        if not release or any(m not in RELEASE_MODES for m in release):
            raise ConfigError(f"policy release modes of {dataset!r} must be among {', '.join(RELEASE_MODES)}")
        budget = None
        if rule.get("budget") is not None:
            b = rule["budget"]
            if not isinstance(b, dict) or set(b) - {"epsilon", "delta"} or float(b.get("epsilon", 0)) <= 0 \
                    or not 0 <= float(b.get("delta", 0)) < 1:
                raise ConfigError(f"policy budget of {dataset!r} needs epsilon > 0 and 0 <= delta < 1")
            budget = Budget(float(b["epsilon"]), float(b.get("delta", 0.0)))
        out[str(dataset)] = DatasetRule(release, budget)
    return out


def _parse_backends(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw or any(b not in BACKENDS for b in raw):
        raise ConfigError(f"policy 'backends' must list some of {', '.join(BACKENDS)}")
    return tuple(raw)


def parse_policy(data: Any) -> Policy:
    if not isinstance(data, dict) or data.get("version") not in READ_VERSIONS:
        raise ConfigError(f"policy must be a JSON object with version {POLICY_VERSION} (or 1)")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"unknown policy field(s): {', '.join(sorted(unknown))}")
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
            backends=_parse_backends(data.get("backends", ["simulation"])),
            datasets=_parse_datasets(data.get("datasets", {})),
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
