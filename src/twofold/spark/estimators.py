"""``pyspark.ml`` estimators for partitioned mode, with MLlib's parameter names and defaults.

Fit them on the DataFrame from :func:`twofold.spark.encrypted_files` (one row per encrypted file); the Spark side
only ever handles ciphertext and, with ``release="statistics"``, the aggregated statistics named in
docs/threat-model.md. Features are the dataset's numeric columns (``inputCols``; default: all but the label).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (
    HasElasticNetParam,
    HasFeaturesCol,
    HasFitIntercept,
    HasInputCols,
    HasLabelCol,
    HasMaxIter,
    HasPredictionCol,
    HasRegParam,
    HasSeed,
    HasStandardization,
    HasTol,
)

from twofold.data.models import ModelFile
from twofold.data.tabular import read_manifest
from twofold.errors import ConfigError, InputError
from twofold.spark import partitioned
from twofold.spark.host_enclave import EnclaveConfig


class _TwofoldParams(HasFeaturesCol, HasPredictionCol, HasInputCols):
    release = Param(Params._dummy(), "release", "what leaves the enclave: 'statistics' or 'sealed'",
                    typeConverter=TypeConverters.toString)
    enclaveSocket = Param(Params._dummy(), "enclaveSocket", "Unix socket of the host's enclave",
                          typeConverter=TypeConverters.toString)
    kbsUrl = Param(Params._dummy(), "kbsUrl", "URL of the owner's key broker", typeConverter=TypeConverters.toString)

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(release="statistics", featuresCol="features", predictionCol="prediction")


class _PartitionedEstimator(Estimator, _TwofoldParams):
    algorithm = ""
    hyper: tuple[str, ...] = ()

    def _fit(self, dataset: Any) -> PartitionedModel:
        rows = sorted(dataset.select("path", "dataset_id", "index").distinct().collect(), key=lambda r: r["index"])
        if not rows or len({(r["path"], r["dataset_id"]) for r in rows}) != 1:
            raise ConfigError("fit a partitioned estimator on twofold.spark.encrypted_files(spark, DIR)")
        path, dataset_id = rows[0]["path"], rows[0]["dataset_id"]
        body = read_manifest(Path(path))["manifest"]
        label = self.getOrDefault("labelCol") if self.hasParam("labelCol") and self._uses_label() else ""
        columns = self._columns(body, label)
        params = {name: self.getOrDefault(name) for name in self.hyper}
        task = partitioned.Task(self._config(), path, dataset_id, self.algorithm, tuple(columns), label, params,
                                self.getOrDefault("release"), partitioned.new_job())
        indices = [r["index"] for r in rows]  # one Spark partition per encrypted file, reused by every pass
        index_rdd = dataset.sparkSession.sparkContext.parallelize(indices, len(indices))
        result = partitioned.fit(index_rdd, len(body["files"]), task, progress=getattr(self, "_progress", None))
        model_file = ModelFile(self.algorithm, "partitioned", task.release, dataset_id, result.model_id,
                               read_manifest(Path(path))["keys"]["mac_key"], columns, label, params,
                               result.sealed_model)
        model = PartitionedModel(model_file, result.model, result.passes, result.timings)
        return self._copyValues(model)

    def _uses_label(self) -> bool:
        from twofold.enclave.kernels.base import algorithm

        return algorithm(self.algorithm).uses_label

    def _columns(self, body: dict[str, Any], label: str) -> list[str]:
        if self.isDefined("inputCols") and self.isSet("inputCols"):
            return list(self.getOrDefault("inputCols"))
        numeric = ("int", "uint", "float", "double", "bool", "decimal")
        columns = [c["name"] for c in body["schema"]["columns"]
                   if c["name"] != label and str(c["type"]).startswith(numeric)]
        if not columns:
            raise InputError("the dataset has no numeric feature columns")
        return columns

    def _config(self) -> EnclaveConfig:
        if not (self.isSet("enclaveSocket") and self.isSet("kbsUrl")):
            raise ConfigError("set enclaveSocket and kbsUrl (the CLI's embedded default does this for you)")
        return EnclaveConfig(self.getOrDefault("enclaveSocket"), self.getOrDefault("kbsUrl"))

    def setProgress(self, callback: Any) -> _PartitionedEstimator:
        """Call ``callback(1)`` after every pass over the data."""
        self._progress = callback
        return self


class PartitionedModel(Model, _TwofoldParams):
    """A model trained in partitioned mode; its weights are visible only with ``release="statistics"``."""

    def __init__(self, model_file: ModelFile | None = None, weights: dict[str, Any] | None = None,
                 passes: int = 0, timings: dict[str, float] | None = None) -> None:
        super().__init__()
        self.model_file = model_file
        self._weights = weights
        self.passes = passes
        self.timings = timings or {}

    @property
    def weights(self) -> dict[str, Any]:
        if self._weights is None:
            raise ConfigError("this model was trained with release='sealed': its weights leave the enclave only "
                              "sealed; open the saved model with the owner's keystore")
        return self._weights

    @property
    def coefficients(self) -> Any:
        return self.weights["coefficients"]

    @property
    def intercept(self) -> float:
        return float(self.weights["intercept"][0])

    @property
    def clusterCenters(self) -> Any:
        return self.weights["centers"]

    @property
    def explainedVariance(self) -> Any:
        return self.weights["explainedVariance"]

    def save(self, path: str) -> None:
        """Write the sealed model file (MLlib's save, for sealed models)."""
        self.model_file.save(path)

    def _transform(self, dataset: Any) -> Any:
        raise ConfigError("partitioned predictions are sealed for the owner: use twofold.spark.predict_encrypted")


def _estimator(name: str, algorithm: str, bases: tuple[type, ...], defaults: dict[str, Any],
               hyper: tuple[str, ...], extra_params: dict[str, Param] | None = None) -> type:
    """Build an estimator class whose ``__init__`` takes MLlib's keyword parameters and defaults."""

    @keyword_only
    def __init__(self, **kwargs: Any) -> None:
        super(cls, self).__init__()
        self._setDefault(**defaults)
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs: Any) -> Any:
        return self._set(**self._input_kwargs)

    namespace = {"__init__": __init__, "setParams": setParams, "algorithm": algorithm, "hyper": hyper,
                 "__doc__": f"Partitioned-mode {name} (MLlib-compatible parameters: {', '.join(hyper)})."}
    namespace.update(extra_params or {})
    cls = type(name, (_PartitionedEstimator, *bases), namespace)
    return cls


_k = Param(Params._dummy(), "k", "number of clusters or components", typeConverter=TypeConverters.toInt)
_smoothing = Param(Params._dummy(), "smoothing", "additive smoothing", typeConverter=TypeConverters.toFloat)
_model_type = Param(Params._dummy(), "modelType", "multinomial or gaussian", typeConverter=TypeConverters.toString)

LogisticRegression = _estimator(
    "LogisticRegression", "logreg",
    (HasMaxIter, HasRegParam, HasElasticNetParam, HasTol, HasFitIntercept, HasStandardization, HasLabelCol),
    {"maxIter": 100, "regParam": 0.0, "elasticNetParam": 0.0, "tol": 1e-6, "fitIntercept": True,
     "standardization": True, "labelCol": "label"},
    ("maxIter", "regParam", "elasticNetParam", "tol", "fitIntercept", "standardization"))
LinearRegression = _estimator(
    "LinearRegression", "linreg",
    (HasMaxIter, HasRegParam, HasElasticNetParam, HasTol, HasFitIntercept, HasStandardization, HasLabelCol),
    {"maxIter": 100, "regParam": 0.0, "elasticNetParam": 0.0, "tol": 1e-6, "fitIntercept": True,
     "standardization": True, "labelCol": "label"},
    ("regParam", "elasticNetParam", "fitIntercept", "standardization"))
KMeans = _estimator(
    "KMeans", "kmeans", (HasMaxIter, HasTol, HasSeed),
    {"maxIter": 20, "tol": 1e-4, "k": 2, "seed": 0}, ("maxIter", "tol", "k", "seed"), {"k": _k})
NaiveBayes = _estimator(
    "NaiveBayes", "naive_bayes", (HasLabelCol,),
    {"smoothing": 1.0, "modelType": "multinomial", "labelCol": "label"}, ("smoothing", "modelType"),
    {"smoothing": _smoothing, "modelType": _model_type})
PCA = _estimator("PCA", "pca", (), {"k": 2}, ("k",), {"k": _k})
