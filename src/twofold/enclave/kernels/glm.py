"""Logistic regression (Newton with backtracking, MLlib's objective) and linear regression (normal equations)."""

from __future__ import annotations

import numpy as np

from twofold.enclave.kernels.arrays import Arrays
from twofold.enclave.kernels.base import (
    Params,
    as_float,
    label_classes,
    moments,
    phase,
    quadratic_l1,
    register,
    scale_of,
    with_phase,
)
from twofold.errors import ConfigError


def _scales(std: np.ndarray, standardize: bool) -> np.ndarray:
    """Divisors that put features in MLlib's standardized space (std 0 features are dropped later)."""
    return np.where(std > 0, std, 1.0) if standardize else np.ones_like(std)


class LogisticRegression:
    """Binary logistic regression; objective: mean log-loss + regParam * ((1-a)/2 |w_s|^2 + a |w_s|_1)."""

    name = "logreg"
    uses_label = True

    def init_state(self, params: Params, num_features: int) -> Arrays:
        return {"phase": np.array([0.0])}

    def stats(self, X, y, state, params, index):
        if phase(state) == 0:
            return moments(X, y)
        scale = state["scale"]
        w = state["w"][:-1] / scale  # work in standardized space without materialising X / scale
        b = state["w"][-1] if params.get("fitIntercept", True) else 0.0
        z = X @ w + b
        p = 1.0 / (1.0 + np.exp(-z))
        loss = np.logaddexp(0.0, z) - y * z
        residual = p - y
        q = p * (1.0 - p)
        Xq = X * q[:, None]
        d = X.shape[1]
        hess = np.empty((d + 1, d + 1))
        hess[:d, :d] = (X.T @ Xq) / np.outer(scale, scale)
        hess[:d, d] = hess[d, :d] = Xq.sum(axis=0) / scale
        hess[d, d] = q.sum()
        grad = np.append((X.T @ residual) / scale, residual.sum())
        return {"loss": np.array([loss.sum()]), "grad": grad, "hess": hess, "n": np.array([float(X.shape[0])])}

    def update(self, state, total, params):
        if phase(state) == 0:
            if label_classes(total) > 2:
                raise ConfigError("partitioned logreg is binary; for more classes use --mode whole")
            mean, std = scale_of(total)
            scale = _scales(std, params.get("standardization", True))
            d = len(mean)
            w = np.zeros(d + 1)
            return with_phase(state, 1, scale=scale, active=(std > 0).astype(float), w=w, prev_w=w.copy(),
                              prev_f=np.array([np.inf]), step=np.array([1.0]), direction=np.zeros(d + 1),
                              iterations=np.array([0.0])), False
        n = total["n"][0]
        reg, alpha = as_float(params, "regParam", 0.0), as_float(params, "elasticNetParam", 0.0)
        w, active = state["w"], np.append(state["active"], 1.0)
        penalty = reg * ((1 - alpha) / 2 * np.sum(w[:-1] ** 2) + alpha * np.sum(np.abs(w[:-1])))
        f = total["loss"][0] / n + penalty
        iterations = state["iterations"][0] + 1
        tol, max_iter = as_float(params, "tol", 1e-6), int(params.get("maxIter", 100))
        if f > state["prev_f"][0] + 1e-12 and state["step"][0] > 1e-6:  # backtrack along the last direction
            if iterations >= max_iter:
                return {**state, "w": state["prev_w"], "iterations": np.array([iterations])}, True
            step = state["step"][0] / 2
            w_new = state["prev_w"] + step * state["direction"]
            return {**state, "w": w_new, "step": np.array([step]), "iterations": np.array([iterations])}, False
        converged = np.isfinite(state["prev_f"][0]) and abs(state["prev_f"][0] - f) <= tol * max(abs(f), 1e-12)
        if converged or iterations >= max_iter:
            return {**state, "iterations": np.array([iterations])}, True
        H = total["hess"] / n
        g = total["grad"] / n
        l2 = np.append(np.full(len(w) - 1, reg * (1 - alpha)), 0.0)
        if not params.get("fitIntercept", True):
            active = active.copy()
            active[-1] = 0.0
        H = H + np.diag(l2) + np.diag(1e-10 + (1 - active))  # keep inactive coordinates pinned at zero
        g = (g + l2 * w) * active
        if alpha > 0 and reg > 0:
            l1 = np.append(np.full(len(w) - 1, reg * alpha), 0.0)
            target = quadratic_l1(H, g - H @ w, l1, w) * active  # proximal Newton: minimise the local model
            direction = target - w
        else:
            direction = -np.linalg.solve(H, g) * active
        return {**state, "prev_w": w, "prev_f": np.array([f]), "direction": direction, "step": np.array([1.0]),
                "w": w + direction, "iterations": np.array([iterations])}, False

    def model(self, state, params):
        w = state["w"]
        coefficients = np.where(state["active"] > 0, w[:-1] / state["scale"], 0.0)
        intercept = w[-1] if params.get("fitIntercept", True) else 0.0
        return {"coefficients": coefficients, "intercept": np.array([intercept]),
                "iterations": state["iterations"]}

    def predict(self, model, X, params):
        z = X @ model["coefficients"] + model["intercept"][0]
        return (z > 0).astype(np.float64)


class LinearRegression:
    """Least squares with optional elastic net on standardized features (MLlib's normal-equation solver)."""

    name = "linreg"
    uses_label = True

    def init_state(self, params, num_features):
        return {"phase": np.array([0.0])}

    def stats(self, X, y, state, params, index):
        A = np.hstack([X, y[:, None], np.ones((X.shape[0], 1))])
        return {"gram": A.T @ A}

    def update(self, state, total, params):
        G = total["gram"]
        d = G.shape[0] - 2
        n = G[-1, -1]
        sums = G[-1, :-1]
        mean = sums / n
        fit_intercept = params.get("fitIntercept", True)
        cov = G[:-1, :-1] / n - (np.outer(mean, mean) if fit_intercept else 0.0)
        xx, xy, yy = cov[:d, :d], cov[:d, d], cov[d, d]
        std = np.sqrt(np.maximum(np.diag(G[:d, :d]) / n - mean[:d] ** 2, 0.0) * n / max(n - 1, 1))
        scale = _scales(std, params.get("standardization", True))
        y_std = np.sqrt(max(yy * n / max(n - 1, 1), 0.0)) or 1.0
        reg, alpha = as_float(params, "regParam", 0.0), as_float(params, "elasticNetParam", 0.0)
        active = std > 0
        H = (xx / np.outer(scale, scale))[np.ix_(active, active)]
        b = (xy / scale / y_std)[active]
        w_active = np.zeros(int(active.sum()))
        if reg > 0 and alpha > 0:
            w_active = quadratic_l1(H + reg * (1 - alpha) * np.eye(len(b)), -b,
                                    np.full(len(b), reg * alpha), w_active, sweeps=1000)
        elif len(b):
            w_active = np.linalg.lstsq(H + reg * np.eye(len(b)), b, rcond=None)[0]
        coefficients = np.zeros(d)
        coefficients[active] = w_active * y_std / scale[active]
        intercept = (mean[d] - mean[:d] @ coefficients) if fit_intercept else 0.0
        return with_phase(state, 1, coefficients=coefficients, intercept=np.array([intercept])), True

    def model(self, state, params):
        return {"coefficients": state["coefficients"], "intercept": state["intercept"]}

    def predict(self, model, X, params):
        return X @ model["coefficients"] + model["intercept"][0]


register(LogisticRegression())
register(LinearRegression())
