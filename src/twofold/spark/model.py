"""The parameters every partitioned stage shares, and the model a partitioned estimator fits.

A model predicts through the host enclaves, the way ``twofold predict`` does: ``transform`` takes the files of an
encrypted dataset (:func:`twofold.spark.encrypted_files`) and adds, per file, the predictions sealed for the
dataset's owner, who opens them with :func:`twofold.spark.open_predictions`. So a partitioned estimator can be a
stage of a ``pyspark.ml.Pipeline`` whose input and output stay encrypted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyspark.ml import Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCols, HasPredictionCol

from twofold.crypto.manifest import Manifest
from twofold.data.models import ModelFile
from twofold.errors import ConfigError
from twofold.spark import partitioned
from twofold.spark.files import FileSet, file_set
from twofold.spark.host_enclave import EnclaveConfig


class EnclaveParams(HasPredictionCol, HasInputCols):
    """Where the host enclaves are, which key broker they attest to, and what may leave them."""

    release = Param(Params._dummy(), "release", "what leaves the enclave: 'statistics' or 'sealed'",
                    typeConverter=TypeConverters.toString)
    enclaveSocket = Param(Params._dummy(), "enclaveSocket", "Unix socket of the host's enclave",
                          typeConverter=TypeConverters.toString)
    kbsUrl = Param(Params._dummy(), "kbsUrl", "URL of the owner's key broker", typeConverter=TypeConverters.toString)
    brokerIdentity = Param(Params._dummy(), "brokerIdentity", "the key broker's identity (JSON) as its owner issued "
                           "it: twofold kbs identity", typeConverter=TypeConverters.toString)

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(release="statistics", predictionCol="prediction")
        self._manifest: Manifest | None = None

    def setManifest(self, manifest: Manifest) -> Any:
        """Use ``manifest``, already read by the caller, for the dataset this stage then fits on or transforms
        (instead of reading it again); a ConfigError if the files are of another dataset."""
        self._manifest = manifest
        return self

    def _file_set(self, frame: Any) -> FileSet:
        return file_set(frame, self._manifest)

    def getRelease(self) -> str:
        return self.getOrDefault("release")

    def setEnclave(self, config: EnclaveConfig) -> Any:
        """Use the enclave and key broker of ``config``."""
        return self._set(enclaveSocket=config.socket, kbsUrl=config.kbs_url, brokerIdentity=config.broker_identity)

    def enclave(self) -> EnclaveConfig:
        socket, kbs_url, identity = (self.getOrDefault(name) if self.isDefined(name) else None
                                     for name in ("enclaveSocket", "kbsUrl", "brokerIdentity"))
        if not (socket and kbs_url and identity):
            raise ConfigError("set enclaveSocket, kbsUrl and brokerIdentity, or call setEnclave (the CLI's embedded "
                              "default does this for you)")
        return EnclaveConfig(socket, kbs_url, identity)


class PartitionedModel(Model, EnclaveParams):
    """A model trained in partitioned mode; its weights are visible only with ``release="statistics"``."""

    def __init__(self, model_file: ModelFile | None = None, weights: dict[str, Any] | None = None,
                 passes: int = 0, timings: dict[str, float] | None = None) -> None:
        super().__init__()
        self.model_file = model_file
        self._weights = weights
        self.passes = passes
        self.timings = timings or {}
        if model_file is not None:
            if model_file.mode != "partitioned":
                raise ConfigError(f"a {model_file.mode}-mode model predicts through twofold.spark.jobs.predict")
            self._set(release=model_file.release)

    @classmethod
    def load(cls, path: str | Path) -> PartitionedModel:
        """A sealed model file, as ``save`` wrote it (set the enclave with ``setEnclave`` to predict)."""
        return cls(ModelFile.load(path))

    def save(self, path: str | Path) -> None:
        """Write the sealed model file (MLlib's save, for sealed models)."""
        self._file().save(path)

    @property
    def hasWeights(self) -> bool:
        """Whether the weights left the enclave (``release="statistics"``)."""
        return self._weights is not None

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

    def _file(self) -> ModelFile:
        if self.model_file is None:
            raise ConfigError("this model has no sealed model: fit an estimator or load a model file")
        return self.model_file

    def _transform(self, dataset: Any) -> Any:
        """``dataset`` (the files of an encrypted dataset) with, in ``predictionCol``, each file's predictions
        sealed by its host enclave for the dataset's owner: a struct of the ``job`` and the ``sealed`` bytes."""
        model, files = self._file(), self._file_set(dataset)
        task = partitioned.Task(self.enclave(), files.path, files.dataset_id, model.algorithm, tuple(model.columns),
                                model.label, model.params, "sealed", partitioned.new_job())
        with_label = bool(model.label) and model.label == files.manifest.label
        sealed = partitioned.predict(files.index_rdd(dataset.sparkSession), files, task,
                                     {**model.description(), "model_id": model.model_id, "mac_key": model.mac_key,
                                      "sealed": model.sealed}, with_label)
        schema = f"index int, `{self.getOrDefault('predictionCol')}` struct<job string, sealed binary>"
        predictions = dataset.sparkSession.createDataFrame([(i, (task.job, blob)) for i, blob in sealed], schema)
        return dataset.join(predictions, on="index", how="inner")
