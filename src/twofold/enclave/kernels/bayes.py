"""Naive Bayes, multinomial (default) and gaussian, with MLlib's smoothing and variance floor."""

from __future__ import annotations

import numpy as np

from twofold.enclave.kernels.arrays import Arrays
from twofold.enclave.kernels.base import Params, as_float, label_classes, moments, phase, register, with_phase
from twofold.errors import ConfigError

GAUSSIAN_VAR_EPSILON = 1e-9


class NaiveBayes:
    name = "naive_bayes"
    uses_label = True

    def init_state(self, params, num_features):
        model_type = params.get("modelType", "multinomial")
        if model_type not in ("multinomial", "gaussian"):
            raise ConfigError(f"modelType must be multinomial or gaussian, not {model_type!r}")
        return {"phase": np.array([0.0])}

    def stats(self, X, y, state, params, index):
        if phase(state) == 0:
            return moments(X, y)
        classes = int(state["classes"][0])
        onehot = np.zeros((len(y), classes))
        onehot[np.arange(len(y)), y.astype(int)] = 1.0
        return {"count": onehot.sum(axis=0), "sum": onehot.T @ X, "sumsq": onehot.T @ (X * X)}

    def update(self, state, total, params):
        if phase(state) == 0:
            if params.get("modelType", "multinomial") == "multinomial" and total["negative"][0] > 0:
                raise ConfigError("multinomial naive Bayes needs non-negative features; use modelType=gaussian")
            return with_phase(state, 1, classes=np.array([float(label_classes(total))])), False
        return with_phase(state, 2, **{f"total_{k}": v for k, v in total.items()}), True

    def model(self, state, params):
        count, sums, sumsq = state["total_count"], state["total_sum"], state["total_sumsq"]
        classes, d = sums.shape
        if params.get("modelType", "multinomial") == "multinomial":
            smoothing = as_float(params, "smoothing", 1.0)
            pi = np.log(count + smoothing) - np.log(count.sum() + classes * smoothing)
            theta = np.log(sums + smoothing) - np.log(sums.sum(axis=1, keepdims=True) + d * smoothing)
            return {"pi": pi, "theta": theta}
        present = np.maximum(count, 1.0)[:, None]
        mean = sums / present
        var = np.maximum(sumsq / present - mean**2, 0.0)
        var = var + GAUSSIAN_VAR_EPSILON * var.max(initial=0.0)
        pi = np.log(np.maximum(count, 1e-300)) - np.log(count.sum())
        return {"pi": pi, "theta": mean, "sigma": var}

    def predict(self, model, X, params):
        if "sigma" not in model:
            return np.argmax(model["pi"] + X @ model["theta"].T, axis=1).astype(np.float64)
        mean, var = model["theta"], model["sigma"]
        log_like = -0.5 * (np.log(2 * np.pi * var).sum(axis=1)[None, :]
                           + ((X[:, None, :] - mean[None, :, :]) ** 2 / var[None, :, :]).sum(axis=2))
        return np.argmax(model["pi"] + log_like, axis=1).astype(np.float64)


class PCA:
    """Principal components of the covariance matrix, as MLlib's RowMatrix computes them."""

    name = "pca"
    uses_label = False

    def init_state(self, params, num_features):
        if int(params.get("k", 0)) < 1:
            raise ConfigError("PCA needs k >= 1")
        return {"phase": np.array([0.0])}

    def stats(self, X, y, state, params, index):
        return {"n": np.array([float(len(X))]), "sum": X.sum(axis=0), "gram": X.T @ X}

    def update(self, state, total: Arrays, params: Params):
        n = total["n"][0]
        mean = total["sum"] / n
        cov = (total["gram"] - n * np.outer(mean, mean)) / max(n - 1, 1)
        values, vectors = np.linalg.eigh(cov)
        order = np.argsort(values)[::-1]
        values, vectors = np.maximum(values[order], 0.0), vectors[:, order]
        k = int(params.get("k", 1))
        if k > len(values):
            raise ConfigError(f"PCA k={k} exceeds the {len(values)} features")
        return with_phase(state, 1, pc=vectors[:, :k], explained=values[:k] / values.sum()), True

    def model(self, state, params):
        return {"pc": state["pc"], "explainedVariance": state["explained"]}

    def predict(self, model, X, params):
        return X @ model["pc"]


register(NaiveBayes())
register(PCA())
