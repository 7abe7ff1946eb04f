"""The Spark algorithms, in one place: the CLI, the jobs, the estimators and the benchmark read them from here.

Per algorithm: its name (also the name of the partitioned-mode kernel in the enclave's registry, which stays on
its side of the trust boundary; a test checks that the two agree), what it learns (which decides whether it needs
a label and what it predicts), the ``pyspark.ml`` estimator of whole mode, the partitioned estimator class, and
the hyper-parameters both modes take, with MLlib's names, types and partitioned-mode defaults. Pure data:
importing it loads neither pyspark nor the kernels.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from twofold.errors import ConfigError

Task = Literal["classification", "regression", "clustering", "decomposition"]


def flag(name: str) -> str:
    """The CLI option of a parameter: ``maxIter`` -> ``--max-iter``."""
    return "--" + re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


@dataclass(frozen=True)
class HyperParam:
    """One hyper-parameter, named as in MLlib."""

    name: str
    type: type  # int, float, bool or str
    default: Any
    doc: str
    choices: tuple[str, ...] = ()

    def convert(self, value: Any) -> Any:
        """``value`` as this parameter's type (an int is a float too), or a ConfigError."""
        ok = isinstance(value, self.type) and not (self.type is int and isinstance(value, bool))
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok or (self.choices and value not in self.choices):
            expected = " or ".join(self.choices) if self.choices else self.type.__name__
            raise ConfigError(f"{self.name} must be {expected}, not {value!r}")
        return value


@dataclass(frozen=True)
class Algorithm:
    """One algorithm of both Spark modes."""

    name: str
    task: Task
    mllib: str  # the pyspark.ml estimator of whole mode; its model class is this name + "Model"
    partitioned: str  # the estimator class in twofold.spark.estimators
    params: tuple[HyperParam, ...]

    @property
    def kernel(self) -> str:
        """The partitioned-mode kernel (``twofold.enclave.kernels``) of the same name."""
        return self.name

    @property
    def uses_label(self) -> bool:
        return self.task in ("classification", "regression")

    @property
    def output(self) -> Literal["prediction", "components"]:
        """What a model gives per row: one ``prediction``, or a vector of ``components``."""
        return "components" if self.task == "decomposition" else "prediction"

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def check(self, params: Mapping[str, Any], spell: Callable[[str], str] = str) -> dict[str, Any]:
        """``params`` converted to their types; a ConfigError names any this algorithm does not take."""
        unknown = [name for name in params if name not in self.param_names]
        if unknown:
            raise ConfigError(f"{self.name} does not take {', '.join(map(spell, unknown))} "
                              f"(it takes {', '.join(map(spell, self.param_names))})")
        by_name = {p.name: p for p in self.params}
        return {name: by_name[name].convert(value) for name, value in params.items()}

    def mllib_class(self) -> type:
        module, _, name = self.mllib.rpartition(".")
        return getattr(importlib.import_module(module), name)

    def mllib_model_class(self) -> type:
        module, _, name = self.mllib.rpartition(".")
        return getattr(importlib.import_module(module), name + "Model")

    def partitioned_class(self) -> type:
        return getattr(importlib.import_module("twofold.spark.estimators"), self.partitioned)


def _max_iter(default: int) -> HyperParam:
    return HyperParam("maxIter", int, default, "maximum number of iterations (>= 0)")


def _tol(default: float) -> HyperParam:
    return HyperParam("tol", float, default, "convergence tolerance (>= 0)")


_GLM = (
    HyperParam("regParam", float, 0.0, "regularization strength (>= 0)"),
    HyperParam("elasticNetParam", float, 0.0, "elastic net mixing: 0 is L2, 1 is L1"),
    HyperParam("fitIntercept", bool, True, "whether to fit an intercept"),
    HyperParam("standardization", bool, True, "whether to standardize the features before fitting"),
)

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("logreg", "classification", "pyspark.ml.classification.LogisticRegression", "LogisticRegression",
              (_max_iter(100), _tol(1e-6), *_GLM)),
    Algorithm("linreg", "regression", "pyspark.ml.regression.LinearRegression", "LinearRegression", _GLM),
    Algorithm("kmeans", "clustering", "pyspark.ml.clustering.KMeans", "KMeans",
              (HyperParam("k", int, 2, "number of clusters"), _max_iter(20), _tol(1e-4),
               HyperParam("seed", int, 0, "random seed"))),
    Algorithm("naive_bayes", "classification", "pyspark.ml.classification.NaiveBayes", "NaiveBayes",
              (HyperParam("smoothing", float, 1.0, "additive smoothing (>= 0)"),
               HyperParam("modelType", str, "multinomial", "the model type", ("multinomial", "gaussian")))),
    Algorithm("pca", "decomposition", "pyspark.ml.feature.PCA", "PCA",
              (HyperParam("k", int, 2, "number of principal components"),)),
)}


def get(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ConfigError(f"unknown algorithm {name!r}: choose from {', '.join(ALGORITHMS)}") from None


def by_param() -> dict[str, list[tuple[Algorithm, HyperParam]]]:
    """Every hyper-parameter name, with the algorithms that take it (catalog order)."""
    out: dict[str, list[tuple[Algorithm, HyperParam]]] = {}
    for algorithm in ALGORITHMS.values():
        for param in algorithm.params:
            out.setdefault(param.name, []).append((algorithm, param))
    return out
