"""The data owner's release policy: which code (measurement) on which attestation backends may open which
datasets, until when, and what may leave the enclave for each dataset.

Policy files are JSON, version 3 (versions 1 and 2, with fewer dataset-rule fields, are still read)::

    {
      "version": 3,
      "backends": ["simulation"],
      "allow_simulation": true,
      "simulation_platform_keys": ["<base64 Ed25519 public key>", ...],
      "nonce_ttl_seconds": 60,
      "token_ttl_seconds": 3600,
      "measurements": {
        "<sha256 hex>": {"name": "twofold 0.1.0", "datasets": ["ds-...", "*"], "expires": "2027-01-01T00:00:00Z"}
      },
      "datasets": {
        "ds-...": {"release": ["sealed"], "algorithms": ["logreg", "kmeans"], "columns": ["age", "bmi", "label"],
                   "params": {"maxIter": [1, 100], "k": [2, 8]}, "min_group_size": 20,
                   "budget": {"epsilon": 1.0, "delta": 1e-6}}
      }
    }

``backends`` lists the attestation backends whose evidence the broker accepts (simulation only with
``allow_simulation``). ``datasets`` says, per dataset id (or ``*``), which release modes are allowed
(``sealed``: results only the owner can open; ``statistics``: the trained model released to the caller), which
algorithms, columns and parameter ranges a job may use, the smallest group a released result may describe, and
an optional privacy budget (see :class:`DatasetRule`); a dataset without an entry (and no ``*`` entry) gets
sealed results only, with any algorithm and column. The broker sends the rule, signed, with the dataset's MAC key, and
the enclave enforces it. Unknown keys are refused, so a misspelt field never silently weakens a policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from twofold.errors import AttestationError, ConfigError, PolicyError

POLICY_VERSION = 3
READ_VERSIONS = (1, 2, 3)
DEFAULT_MIN_GROUP = 10
RELEASE_MODES = ("sealed", "statistics")
BACKENDS = ("simulation", "sev-snp", "tdx", "sgx")
_RULE_KEYS = {"release", "budget", "algorithms", "columns", "params", "min_group_size"}
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
    """What may leave the enclave for one dataset; the key broker sends it, signed, with the dataset's MAC key,
    and the enclave enforces it on every fit and predict ecall.

    ``algorithms`` and ``columns`` (features and label) of None allow any; ``params`` maps a parameter name to
    its allowed closed range ``[low, high]`` (unlisted parameters may take any value); ``min_group_size`` is the
    fewest rows any released aggregate may describe (``statistics`` release).
    """

    release: tuple[str, ...] = RELEASE_MODES
    budget: Budget | None = None
    algorithms: tuple[str, ...] | None = None
    columns: tuple[str, ...] | None = None
    params: dict[str, tuple[float, float]] = field(default_factory=dict)
    min_group_size: int = DEFAULT_MIN_GROUP

    def allows_release(self, mode: str) -> bool:
        return mode in self.release

    def check(self, release: str | None, algorithm: str, columns: list[str], params: dict[str, Any]) -> None:
        """Refuse (PolicyError) a job this rule does not allow (``release`` None: a use that releases nothing
        but results sealed for the owner, such as predictions); names are reported, values never."""
        if release is not None and release not in self.release:
            raise PolicyError(f"the owner's policy does not allow release={release!r} for this dataset "
                              f"(allowed: {', '.join(self.release)})")
        if self.algorithms is not None and algorithm not in self.algorithms:
            raise PolicyError(f"the owner's policy does not allow algorithm {algorithm!r} on this dataset")
        outside = sorted(c for c in columns if c and self.columns is not None and c not in self.columns)
        if outside:
            raise PolicyError(f"the owner's policy does not allow column(s) {', '.join(outside)} of this dataset")
        for name, (low, high) in self.params.items():
            value = params.get(name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if value is not None and not (number and low <= value <= high):  # exact for ints (no float rounding)
                raise PolicyError(f"parameter {name} is outside the range [{low:g}, {high:g}] the owner allows")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"release": list(self.release), "min_group_size": self.min_group_size}
        if self.budget:
            out["budget"] = {"epsilon": self.budget.epsilon, "delta": self.budget.delta}
        if self.algorithms is not None:
            out["algorithms"] = list(self.algorithms)
        if self.columns is not None:
            out["columns"] = list(self.columns)
        if self.params:
            out["params"] = {name: [low, high] for name, (low, high) in sorted(self.params.items())}
        return out

    @classmethod
    def from_dict(cls, rule: Any, name: str = "dataset") -> DatasetRule:
        """Parse one rule strictly (as the policy file and a signed release carry it)."""
        if not isinstance(rule, dict) or set(rule) - _RULE_KEYS:
            raise ConfigError(f"policy rule of {name!r} may hold only {', '.join(sorted(_RULE_KEYS))}")
        release = tuple(rule.get("release", RELEASE_MODES))
        if not release or any(m not in RELEASE_MODES for m in release):
            raise ConfigError(f"policy release modes of {name!r} must be among {', '.join(RELEASE_MODES)}")
        return cls(release, _budget(rule.get("budget"), name), _names(rule.get("algorithms"), name, "algorithms"),
                   _names(rule.get("columns"), name, "columns"), _ranges(rule.get("params", {}), name),
                   _group(rule.get("min_group_size", DEFAULT_MIN_GROUP), name))


SEALED_ONLY = DatasetRule(release=("sealed",))


def _budget(raw: Any, name: str) -> Budget | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"epsilon", "delta"} or float(raw.get("epsilon", 0)) <= 0 \
            or not 0 <= float(raw.get("delta", 0)) < 1:
        raise ConfigError(f"policy budget of {name!r} needs epsilon > 0 and 0 <= delta < 1")
    return Budget(float(raw["epsilon"]), float(raw.get("delta", 0.0)))


def _names(raw: Any, name: str, what: str) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(item, str) and item for item in raw):
        raise ConfigError(f"policy {what} of {name!r} must be a list of names")
    return tuple(raw)


def _ranges(raw: Any, name: str) -> dict[str, tuple[float, float]]:
    if not isinstance(raw, dict):
        raise ConfigError(f"policy params of {name!r} must map parameter names to [low, high]")
    out = {}
    for param, bounds in raw.items():
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, (int, float))
                                                                      and not isinstance(b, bool) for b in bounds)
                and bounds[0] <= bounds[1]):
            raise ConfigError(f"policy range of parameter {param!r} ({name!r}) must be [low, high] with low <= high")
        out[str(param)] = (float(bounds[0]), float(bounds[1]))
    return out


def _group(raw: Any, name: str) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 1:
        raise ConfigError(f"policy min_group_size of {name!r} must be a positive integer")
    return raw


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
        """What may leave the enclave for ``dataset_id``: its own entry, else ``*``'s, else sealed results only
        (a policy that says nothing about a dataset releases nothing in the clear)."""
        return self.datasets.get(dataset_id) or self.datasets.get("*") or SEALED_ONLY

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
            "datasets": {d: r.to_dict() for d, r in self.datasets.items()},
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
    return {str(dataset): DatasetRule.from_dict(rule, str(dataset)) for dataset, rule in raw.items()}


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
