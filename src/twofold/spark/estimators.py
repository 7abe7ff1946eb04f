"""``pyspark.ml`` estimators for partitioned mode, with MLlib's parameter names and the catalog's defaults.

Fit them on the DataFrame from :func:`twofold.spark.encrypted_files` (one row per encrypted file), alone or as
stages of a ``pyspark.ml.Pipeline``; the Spark side only ever handles ciphertext and, with
``release="statistics"`` where the owner's policy allows it, the trained weights (docs/threat-model.md). Features
are the dataset's numeric columns (``inputCols``; default: all but the label). Every estimator also takes
``inputCols``, ``predictionCol``, ``release``, ``enclaveSocket``, ``kbsUrl`` and ``brokerIdentity`` (or
``setEnclave(config)``), and fits a :class:`PartitionedModel`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from pyspark import keyword_only
from pyspark.ml import Estimator
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (
    HasElasticNetParam,
    HasFitIntercept,
    HasLabelCol,
    HasMaxIter,
    HasRegParam,
    HasSeed,
    HasStandardization,
    HasTol,
)

from twofold.data.models import ModelFile
from twofold.errors import InputError
from twofold.spark import catalog, partitioned
from twofold.spark.files import numeric_columns
from twofold.spark.model import EnclaveParams, PartitionedModel


class _PartitionedEstimator(Estimator, EnclaveParams):
    """Fits the catalog algorithm ``algorithm`` with its kernel in the host enclaves."""

    algorithm: ClassVar[str]

    def __init__(self, **params: Any) -> None:
        super().__init__()
        spec = catalog.get(self.algorithm)
        self._setDefault(**spec.defaults(), **({"labelCol": "label"} if spec.uses_label else {}))
        self._set(**params)
        self._progress: Callable[[int], None] | None = None

    def setParams(self, **params: Any) -> Any:
        """Set parameters by keyword, as in MLlib."""
        return self._set(**params)

    def setProgress(self, callback: Callable[[int], None]) -> Any:
        """Call ``callback(1)`` after every pass over the data."""
        self._progress = callback
        return self

    def _fit(self, dataset: Any) -> PartitionedModel:
        spec, files = catalog.get(self.algorithm), self._file_set(dataset)
        label = self.getOrDefault("labelCol") if spec.uses_label else ""
        chosen = self.getOrDefault("inputCols") if self.isSet("inputCols") else None
        columns = list(chosen) if chosen else numeric_columns(files.manifest, label)
        if not columns:
            raise InputError("the dataset has no numeric feature columns")
        params = {name: self.getOrDefault(name) for name in spec.param_names}
        task = partitioned.Task(self.enclave(), files.path, files.dataset_id, spec.kernel, tuple(columns), label,
                                params, self.getRelease(), partitioned.new_job())
        result = partitioned.fit(files.index_rdd(dataset.sparkSession), files, task, progress=self._progress)
        model_file = ModelFile(spec.name, "partitioned", task.release, files.dataset_id, result.model_id,
                               files.manifest.wrapped_mac_key, columns, label, params, result.sealed_model,
                               job=result.job, passes=result.passes)
        return self._copyValues(PartitionedModel(model_file, result.model, result.passes, result.timings))


class LogisticRegression(_PartitionedEstimator, HasMaxIter, HasTol, HasRegParam, HasElasticNetParam, HasFitIntercept,
                         HasStandardization, HasLabelCol):
    """Binary logistic regression: MLlib's objective, Newton's method on the enclaves' statistics."""

    algorithm = "logreg"

    @keyword_only
    def __init__(self, *, maxIter: int = 100, tol: float = 1e-6, regParam: float = 0.0, elasticNetParam: float = 0.0,
                 fitIntercept: bool = True, standardization: bool = True, labelCol: str = "label",
                 inputCols: list[str] | None = None, predictionCol: str = "prediction", release: str = "statistics",
                 enclaveSocket: str | None = None, kbsUrl: str | None = None,
                 brokerIdentity: str | None = None) -> None:
        super().__init__(**self._input_kwargs)


class LinearRegression(_PartitionedEstimator, HasRegParam, HasElasticNetParam, HasFitIntercept, HasStandardization,
                       HasLabelCol):
    """Least squares (elastic net optional): MLlib's normal equations on the enclaves' Gram matrix."""

    algorithm = "linreg"

    @keyword_only
    def __init__(self, *, regParam: float = 0.0, elasticNetParam: float = 0.0, fitIntercept: bool = True,
                 standardization: bool = True, labelCol: str = "label", inputCols: list[str] | None = None,
                 predictionCol: str = "prediction", release: str = "statistics", enclaveSocket: str | None = None,
                 kbsUrl: str | None = None,
                 brokerIdentity: str | None = None) -> None:
        super().__init__(**self._input_kwargs)


class _HasK(Params):
    k = Param(Params._dummy(), "k", "number of clusters or components", typeConverter=TypeConverters.toInt)

    def getK(self) -> int:
        return self.getOrDefault("k")


class KMeans(_PartitionedEstimator, _HasK, HasMaxIter, HasTol, HasSeed):
    """k-means: seeds from enclave-local aggregates (never single rows), then Lloyd's iterations."""

    algorithm = "kmeans"

    @keyword_only
    def __init__(self, *, k: int = 2, maxIter: int = 20, tol: float = 1e-4, seed: int = 0,
                 inputCols: list[str] | None = None, predictionCol: str = "prediction", release: str = "statistics",
                 enclaveSocket: str | None = None, kbsUrl: str | None = None,
                 brokerIdentity: str | None = None) -> None:
        super().__init__(**self._input_kwargs)


class NaiveBayes(_PartitionedEstimator, HasLabelCol):
    """Naive Bayes, multinomial or gaussian, from one counting pass."""

    algorithm = "naive_bayes"
    smoothing = Param(Params._dummy(), "smoothing", "additive smoothing", typeConverter=TypeConverters.toFloat)
    modelType = Param(Params._dummy(), "modelType", "multinomial or gaussian", typeConverter=TypeConverters.toString)

    @keyword_only
    def __init__(self, *, smoothing: float = 1.0, modelType: str = "multinomial", labelCol: str = "label",
                 inputCols: list[str] | None = None, predictionCol: str = "prediction", release: str = "statistics",
                 enclaveSocket: str | None = None, kbsUrl: str | None = None,
                 brokerIdentity: str | None = None) -> None:
        super().__init__(**self._input_kwargs)

    def getSmoothing(self) -> float:
        return self.getOrDefault("smoothing")

    def getModelType(self) -> str:
        return self.getOrDefault("modelType")


class PCA(_PartitionedEstimator, _HasK):
    """Principal components of the covariance matrix, from one pass."""

    algorithm = "pca"

    @keyword_only
    def __init__(self, *, k: int = 2, inputCols: list[str] | None = None, predictionCol: str = "prediction",
                 release: str = "statistics", enclaveSocket: str | None = None, kbsUrl: str | None = None,
                 brokerIdentity: str | None = None) -> None:
        super().__init__(**self._input_kwargs)
