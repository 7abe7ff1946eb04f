"""k-means: enclave-local seeding (aggregates only, never raw rows), weighted k-means++ on them, then Lloyd."""

from __future__ import annotations

import numpy as np

from twofold.enclave.kernels.base import as_float, phase, register, with_phase
from twofold.errors import ConfigError

MIN_GROUP = 10  # a local centre is released only if it averages at least this many rows
LOCAL_ROUNDS = 5


def _nearest(X: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d2 = (np.einsum("ij,ij->i", X, X)[:, None] - 2.0 * X @ centers.T + np.einsum("ij,ij->i", centers, centers))
    assign = np.argmin(d2, axis=1)
    return assign, np.maximum(d2[np.arange(len(X)), assign], 0.0)


def _plus_plus(points: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Weighted k-means++ seeding."""
    usable = weights > 0
    points, weights = points[usable], weights[usable]
    first = rng.choice(len(points), p=weights / weights.sum())
    centers = [points[first]]
    for _ in range(1, k):
        _, d2 = _nearest(points, np.array(centers))
        mass = d2 * weights
        total = mass.sum()
        pick = rng.choice(len(points), p=mass / total) if total > 0 else rng.integers(len(points))
        centers.append(points[pick])
    return np.array(centers)


def _lloyd(points: np.ndarray, weights: np.ndarray, centers: np.ndarray, rounds: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.zeros(len(centers))
    for _ in range(rounds):
        assign, _ = _nearest(points, centers)
        counts = np.bincount(assign, weights=weights, minlength=len(centers))
        sums = np.zeros_like(centers)
        np.add.at(sums, assign, points * weights[:, None])
        centers = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1e-300)[:, None], centers)
    return centers, counts


class KMeans:
    """Phases: 0 local seeding, 1 Lloyd iterations, 2 cost of the final centres."""

    name = "kmeans"
    uses_label = False

    def init_state(self, params, num_features):
        return {"phase": np.array([0.0]), "iterations": np.array([0.0])}

    def stats(self, X, y, state, params, index):
        k = int(params.get("k", 2))
        if phase(state) == 0:
            rng = np.random.default_rng([int(params.get("seed", 0)) & 0xFFFFFFFF, index])
            weights = np.ones(len(X))
            if len(X) < k:
                return {"cat_centers": np.zeros((k, X.shape[1])), "cat_weights": np.zeros(k)}
            centers, counts = _lloyd(X, weights, _plus_plus(X, weights, k, rng), LOCAL_ROUNDS)
            counts = np.where(counts >= MIN_GROUP, counts, 0.0)
            return {"cat_centers": centers * (counts > 0)[:, None], "cat_weights": counts}
        assign, d2 = _nearest(X, state["centers"])
        sums = np.zeros_like(state["centers"])
        np.add.at(sums, assign, X)
        return {"sums": sums, "counts": np.bincount(assign, minlength=k).astype(float), "cost": np.array([d2.sum()])}

    def update(self, state, total, params):
        k = int(params.get("k", 2))
        current = phase(state)
        if current == 0:
            rng = np.random.default_rng(int(params.get("seed", 0)) & 0xFFFFFFFF)
            points, weights = total["cat_centers"], total["cat_weights"]
            if (weights > 0).sum() < k:
                raise ConfigError(f"k-means: fewer than k={k} seed groups of >= {MIN_GROUP} rows; use fewer clusters")
            centers, _ = _lloyd(points, weights, _plus_plus(points, weights, k, rng), 20)
            return with_phase(state, 1, centers=centers), False
        if current == 2:
            return {**state, "cost": total["cost"]}, True
        counts = total["counts"]
        new = np.where(counts[:, None] > 0, total["sums"] / np.maximum(counts, 1)[:, None], state["centers"])
        moved = np.sqrt(((new - state["centers"]) ** 2).sum(axis=1)).max()
        iterations = state["iterations"][0] + 1
        done = moved <= as_float(params, "tol", 1e-4) or iterations >= int(params.get("maxIter", 20))
        return with_phase(state, 2 if done else 1, centers=new, iterations=np.array([iterations])), False

    def model(self, state, params):
        return {"centers": state["centers"], "cost": state.get("cost", np.array([np.nan])),
                "iterations": state["iterations"]}

    def predict(self, model, X, params):
        return _nearest(X, model["centers"])[0].astype(np.float64)


register(KMeans())
