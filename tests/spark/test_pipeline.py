"""Partitioned estimators are pyspark.ml stages: a Pipeline fits and transforms encrypted data end to end."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.ml import Pipeline

from twofold.errors import ConfigError, IntegrityError, KeyAccessError
from twofold.keys.keystore import Keystore
from twofold.spark import KMeans, LogisticRegression, PartitionedModel, encrypted_files, jobs, open_predictions

from ..conftest import FAST_KDF, PASSPHRASE

pytestmark = pytest.mark.spark


def test_pipeline_fits_and_transforms_encrypted_files(spark_env, owner, tmp_path):
    spark, services = spark_env["spark"], spark_env["services"]
    dataset = spark_env["datasets"]["classification"]
    config = services.enclave
    enclave = {"enclaveSocket": config.socket, "kbsUrl": config.kbs_url, "brokerIdentity": config.broker_identity}
    pipeline = Pipeline(stages=[LogisticRegression(release="sealed", maxIter=10, **enclave),
                                KMeans(k=4, predictionCol="cluster", **enclave)])
    files = encrypted_files(spark, dataset.path)
    fitted = pipeline.fit(files)
    logreg = fitted.stages[0]
    assert isinstance(logreg, PartitionedModel) and not logreg.hasWeights and logreg.model_file.params["maxIter"] == 10

    out = fitted.transform(files)
    assert out.count() == len(dataset.manifest.files)  # one row per encrypted file, each sealed for the owner
    assert dict(out.dtypes)["prediction"] == dict(out.dtypes)["cluster"] == "struct<job:string,sealed:binary>"
    predictions = open_predictions(out, owner)
    table = spark_env["tables"]["classification"]
    assert predictions.column_names == ["label", "prediction"] and predictions.num_rows == table.num_rows
    assert np.mean(predictions.column("prediction").to_numpy() == table.column("label").to_numpy()) > 0.8
    assert set(open_predictions(out, owner, "cluster").column("prediction").to_numpy()) == {0.0, 1.0, 2.0, 3.0}

    # The same path as `twofold predict`: a saved model, loaded and pointed at the enclave, predicts the same.
    logreg.save(tmp_path / "m.model")
    loaded = PartitionedModel.load(tmp_path / "m.model").setEnclave(services.enclave)
    assert open_predictions(loaded.transform(files), owner).equals(predictions)
    assert jobs.predict(spark, loaded.model_file, dataset.path, services.enclave, owner).equals(predictions)

    with pytest.raises(KeyAccessError):  # sealed for the owner only
        open_predictions(out, Keystore.create(tmp_path / "other", PASSPHRASE, FAST_KDF))
    rows = sorted(out.select("path", "dataset_id", "index", "prediction").collect(), key=lambda r: r["index"])
    swapped = [(*rows[0][:3], rows[1]["prediction"]), (*rows[1][:3], rows[0]["prediction"]), *rows[2:]]
    with pytest.raises(IntegrityError):  # the untrusted side swaps two files' sealed predictions
        open_predictions(spark.createDataFrame(swapped, out.select(*rows[0].__fields__).schema), owner)
    with pytest.raises(ConfigError, match="enclaveSocket"):
        PartitionedModel.load(tmp_path / "m.model").transform(files)
