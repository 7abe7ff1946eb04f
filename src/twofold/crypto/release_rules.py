"""The owner's rule for one dataset: what may leave the enclave for it. Part of the key broker's release policy
(:mod:`twofold.kbs.policy`, which reads and writes it) and the one piece of it the enclave itself enforces, so it
lives here with the other pure schemas the owner's tools and the enclave share (like the manifest)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twofold.errors import ConfigError, PolicyError

RELEASE_MODES = ("sealed", "statistics")
DEFAULT_MIN_GROUP = 10
_RULE_KEYS = {"release", "budget", "algorithms", "columns", "params", "min_group_size"}


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
        return cls(release, _budget(rule.get("budget"), name), names(rule.get("algorithms"), name, "algorithms"),
                   names(rule.get("columns"), name, "columns"), _ranges(rule.get("params", {}), name),
                   _group(rule.get("min_group_size", DEFAULT_MIN_GROUP), name))


SEALED_ONLY = DatasetRule(release=("sealed",))


def _budget(raw: Any, name: str) -> Budget | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"epsilon", "delta"} or float(raw.get("epsilon", 0)) <= 0 \
            or not 0 <= float(raw.get("delta", 0)) < 1:
        raise ConfigError(f"policy budget of {name!r} needs epsilon > 0 and 0 <= delta < 1")
    return Budget(float(raw["epsilon"]), float(raw.get("delta", 0.0)))


def names(raw: Any, name: str, what: str) -> tuple[str, ...] | None:
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
