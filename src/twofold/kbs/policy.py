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

from twofold.crypto.release_rules import SEALED_ONLY, DatasetRule, names
from twofold.errors import AttestationError, ConfigError

POLICY_VERSION = 3
READ_VERSIONS = (1, 2, 3)
BACKENDS = ("simulation", "sev-snp", "tdx", "sgx")
_TOP_KEYS = {"version", "backends", "allow_simulation", "simulation_platform_keys", "nonce_ttl_seconds",
             "token_ttl_seconds", "measurements", "datasets", "platforms"}
_PLATFORM_KEYS = {"collateral", "measurements", "signers", "min_tcb", "min_svn", "product_id", "tcb_statuses",
                  "rtmrs", "vmpl"}


@dataclass(frozen=True)
class MeasurementRule:
    name: str
    datasets: tuple[str, ...]
    expires: float | None  # unix time

    def allows(self, dataset_id: str) -> bool:
        return "*" in self.datasets or dataset_id in self.datasets




@dataclass(frozen=True)
class PlatformRule:
    """What a hardware backend's evidence must show, beyond twofold's own measurement (``measurements`` above).

    ``measurements``: allowed launch measurements (SEV-SNP MEASUREMENT, TDX MRTD, SGX MRENCLAVE), hex; ``signers``:
    SGX MRSIGNERs; ``min_tcb``: SEV-SNP minimum reported TCB per component (bootloader, tee, snp, microcode);
    ``min_svn``: minimum guest SVN (SNP) or ISVSVN (SGX); ``product_id``: SGX ISVPRODID; ``tcb_statuses``: accepted
    DCAP TCB statuses; ``rtmrs``: expected TDX RTMRs by index; ``vmpl``: the SNP VMPL the report must come from;
    ``collateral``: the owner's local collateral (SNP: a directory of ARK, ASK, VCEK/VLEK and CRL; DCAP: a
    QuoteCollateralV3 JSON file).
    """

    collateral: str
    measurements: tuple[str, ...]
    signers: tuple[str, ...] = ()
    min_tcb: dict[str, int] = field(default_factory=dict)
    min_svn: int = 0
    product_id: int | None = None
    tcb_statuses: tuple[str, ...] = ("UpToDate",)
    rtmrs: dict[int, str] = field(default_factory=dict)
    vmpl: int | None = 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"collateral": self.collateral, "measurements": list(self.measurements),
                               "min_svn": self.min_svn, "tcb_statuses": list(self.tcb_statuses), "vmpl": self.vmpl}
        if self.signers:
            out["signers"] = list(self.signers)
        if self.min_tcb:
            out["min_tcb"] = dict(self.min_tcb)
        if self.product_id is not None:
            out["product_id"] = self.product_id
        if self.rtmrs:
            out["rtmrs"] = {str(i): v for i, v in sorted(self.rtmrs.items())}
        return out

    @classmethod
    def from_dict(cls, raw: Any, backend: str) -> PlatformRule:
        if not isinstance(raw, dict) or set(raw) - _PLATFORM_KEYS or not raw.get("collateral"):
            raise ConfigError(f"policy platform {backend!r} needs 'collateral' and may hold only "
                              f"{', '.join(sorted(_PLATFORM_KEYS))}")
        measurements = names(raw.get("measurements"), backend, "measurements") or ()
        if not measurements or any(not _is_hex(m) for m in measurements):
            raise ConfigError(f"policy platform {backend!r} must list its allowed launch measurements (hex)")
        try:
            return cls(str(raw["collateral"]), tuple(m.lower() for m in measurements),
                       tuple(s.lower() for s in (names(raw.get("signers"), backend, "signers") or ())),
                       {str(k): int(v) for k, v in dict(raw.get("min_tcb", {})).items()}, int(raw.get("min_svn", 0)),
                       None if raw.get("product_id") is None else int(raw["product_id"]),
                       tuple(names(raw.get("tcb_statuses"), backend, "tcb_statuses") or ("UpToDate",)),
                       {int(k): str(v).lower() for k, v in dict(raw.get("rtmrs", {})).items()},
                       None if raw.get("vmpl", 0) is None else int(raw.get("vmpl", 0)))
        except (TypeError, ValueError):
            raise ConfigError(f"malformed policy platform {backend!r}") from None


def _is_hex(value: str) -> bool:
    return bool(value) and all(c in "0123456789abcdefABCDEF" for c in value)


@dataclass(frozen=True)
class Policy:
    allow_simulation: bool
    simulation_platform_keys: frozenset[str]
    measurements: dict[str, MeasurementRule] = field(default_factory=dict)
    nonce_ttl_seconds: float = 60.0
    token_ttl_seconds: float = 3600.0
    backends: tuple[str, ...] = ("simulation",)
    datasets: dict[str, DatasetRule] = field(default_factory=dict)
    platforms: dict[str, PlatformRule] = field(default_factory=dict)

    def platform(self, backend: str) -> PlatformRule:
        """The rule for a hardware backend's evidence; AttestationError if the policy has none."""
        rule = self.platforms.get(backend)
        if rule is None:
            raise AttestationError(f"the policy has no platform rule for {backend} evidence")
        return rule

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
            "platforms": {b: r.to_dict() for b, r in self.platforms.items()},
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


def _parse_platforms(raw: Any) -> dict[str, PlatformRule]:
    if not isinstance(raw, dict) or any(b not in BACKENDS or b == "simulation" for b in raw):
        raise ConfigError(f"policy 'platforms' must map hardware backends ({', '.join(BACKENDS[1:])}) to rules")
    return {b: PlatformRule.from_dict(rule, b) for b, rule in raw.items()}


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
            platforms=_parse_platforms(data.get("platforms", {})),
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
