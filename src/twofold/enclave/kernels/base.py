"""The shape every partitioned algorithm has: an initial state, additive per-partition statistics, and an update
that turns their sum into the next state. Enclaves run all three (``kernels/ecalls.py``), in both release
policies, so both compute identical models.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from twofold.enclave.kernels.arrays import Arrays
from twofold.errors import ConfigError

Params = dict[str, Any]


class Algorithm(Protocol):
    name: str
    uses_label: bool

    def init_state(self, params: Params, num_features: int) -> Arrays: ...

    def stats(self, X: np.ndarray, y: np.ndarray | None, state: Arrays, params: Params, index: int) -> Arrays: ...

    def update(self, state: Arrays, total: Arrays, params: Params) -> tuple[Arrays, bool]: ...

    def model(self, state: Arrays, params: Params) -> Arrays: ...

    def predict(self, model: Arrays, X: np.ndarray, params: Params) -> np.ndarray: ...


ALGORITHMS: dict[str, Algorithm] = {}


def register(algorithm: Algorithm) -> Algorithm:
    ALGORITHMS[algorithm.name] = algorithm
    return algorithm


def find_algorithm(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ConfigError(f"unknown algorithm {name!r} (known: {sorted(ALGORITHMS)})") from None


def phase(state: Arrays) -> int:
    return int(state["phase"][0])


def with_phase(state: Arrays, value: int, **arrays: np.ndarray) -> Arrays:
    return {**state, **arrays, "phase": np.array([float(value)])}


def moments(X: np.ndarray, y: np.ndarray | None) -> Arrays:
    """Count, sums and sums of squares of features, and label range facts, for scaling and class counts."""
    out = {"n": np.array([float(X.shape[0])]), "sum": X.sum(axis=0), "sumsq": np.einsum("ij,ij->j", X, X),
           "negative": np.array([float(X.size > 0 and X.min() < 0)])}  # a flag, never a data value
    if y is not None:
        integral = float(np.all(np.equal(np.mod(y, 1), 0)) and (y.min(initial=0) >= 0))
        out["label_bad"] = np.array([0.0 if integral else 1.0])
        out["max_label"] = np.array([y.max(initial=0.0)])
    return out


def scale_of(total: Arrays) -> tuple[np.ndarray, np.ndarray]:
    """Feature means and (unbiased) standard deviations from combined moments; constant features get std 0."""
    n = total["n"][0]
    mean = total["sum"] / n
    var = np.maximum(total["sumsq"] - n * mean**2, 0.0) / max(n - 1.0, 1.0)
    return mean, np.sqrt(var)


def label_classes(total: Arrays) -> int:
    """Classes 0..K-1 for a classifier, or a clear error if labels are not small non-negative integers."""
    if total["label_bad"][0] > 0 or total["max_label"][0] > 1000:
        raise ConfigError("classification labels must be integers 0..K-1 (K <= 1001)")
    return int(total["max_label"][0]) + 1


def sum_over_max(total: Arrays, name: str) -> Any:
    return total[name]


def as_float(params: Params, name: str, default: float) -> float:
    return float(params.get(name, default))


def soft_threshold(value: float, threshold: float) -> float:
    return float(np.sign(value) * max(abs(value) - threshold, 0.0))


def quadratic_l1(H: np.ndarray, g: np.ndarray, l1: np.ndarray, start: np.ndarray, sweeps: int = 200) -> np.ndarray:
    """Minimise 0.5 x'Hx + g'x + sum(l1 * |x|) by coordinate descent (glmnet's inner loop)."""
    x = start.copy()
    for _ in range(sweeps):
        largest = 0.0
        for j in range(len(x)):
            if H[j, j] <= 0:
                continue
            residual = g[j] + H[j] @ x - H[j, j] * x[j]
            new = soft_threshold(-residual, l1[j]) / H[j, j]
            largest = max(largest, abs(new - x[j]))
            x[j] = new
        if largest < 1e-12:
            break
    return x
