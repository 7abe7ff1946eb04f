"""Every algorithm x mode x release policy matches vanilla MLlib on the same data and parameters."""

from __future__ import annotations

import numpy as np
import pytest

from twofold.spark import jobs

pytestmark = pytest.mark.spark

CASES = {
    "logreg": ("classification", {"maxIter": 100, "regParam": 0.01}),
    "linreg": ("regression", {}),
    "kmeans": ("blobs", {"k": 4, "seed": 7, "maxIter": 20}),
    "naive_bayes": ("counts", {}),
    "pca": ("regression", {"k": 2}),
}
VARIANTS = [("whole", "whole"), ("partitioned", "statistics"), ("partitioned", "sealed")]


def _vanilla(spark_env, algorithm, params):
    dataset, _ = CASES[algorithm]
    table = spark_env["tables"][dataset]
    label = "label" if "label" in table.column_names else ""
    columns = [c for c in table.column_names if c != label]
    frame = jobs.assemble(spark_env["spark"].createDataFrame(table.to_pandas()), columns).cache()
    return jobs.mllib_estimator(algorithm, params, label).fit(frame), frame


def _metric(algorithm, spark_env, predictions, vanilla_model=None, frame=None):
    """The quality measure the issue names: accuracy, R^2, k-means cost, explained variance."""
    dataset, _ = CASES[algorithm]
    table = spark_env["tables"][dataset]
    if algorithm in ("logreg", "naive_bayes"):
        return float(np.mean(predictions.column("prediction").to_numpy() == table.column("label").to_numpy()))
    if algorithm == "linreg":
        y, p = table.column("label").to_numpy(), predictions.column("prediction").to_numpy()
        return 1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2)
    if algorithm == "kmeans":
        X = np.column_stack([table.column(c).to_numpy() for c in table.column_names])
        assign = predictions.column("prediction").to_numpy().astype(int)
        centers = np.array([X[assign == k].mean(axis=0) for k in np.unique(assign)])
        remap = {k: i for i, k in enumerate(np.unique(assign))}
        return float(sum(np.sum((X[assign == k] - centers[remap[k]]) ** 2) for k in np.unique(assign)))
    raise AssertionError(algorithm)


def _vanilla_metric(algorithm, spark_env, model, frame):
    if algorithm == "pca":
        return np.array(model.explainedVariance.toArray())
    predictions = model.transform(frame).select("prediction").toArrow()
    return _metric(algorithm, spark_env, predictions)


@pytest.mark.parametrize("mode,release", VARIANTS, ids=["whole", "statistics", "sealed"])
@pytest.mark.parametrize("algorithm", list(CASES))
def test_matches_mllib(spark_env, owner, algorithm, mode, release):
    dataset_name, params = CASES[algorithm]
    dataset = spark_env["datasets"][dataset_name]
    services = spark_env["services"]
    result = jobs.train(spark_env["spark"], dataset.path, algorithm, mode,
                        release if mode == "partitioned" else "statistics", services.enclave, params)
    assert result.model.dataset_id == dataset.dataset_id
    vanilla, frame = _vanilla(spark_env, algorithm, params)
    expected = _vanilla_metric(algorithm, spark_env, vanilla, frame)
    if algorithm == "pca":
        explained = (result.model.open_arrays(owner)["explainedVariance"] if mode == "partitioned"
                     else np.array(_whole_pca(result, owner)))
        np.testing.assert_allclose(explained, expected, rtol=1e-6)
        return
    predictions = jobs.predict(spark_env["spark"], result.model, dataset.path, services.enclave, owner)
    assert predictions.num_rows == dataset.num_rows
    got = _metric(algorithm, spark_env, predictions)
    if algorithm in ("logreg", "naive_bayes") or algorithm == "linreg":
        assert abs(got - expected) <= 0.005, (got, expected)
    else:
        assert got <= expected * 1.01, (got, expected)


def _whole_pca(result, owner):
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(result.model.open(owner))) as archive:
        names = archive.getnames()
    assert any(name.startswith("model/metadata") for name in names)
    import shutil

    from pyspark.ml.feature import PCAModel

    from twofold.spark.jobs import _private_tmp

    tmp = _private_tmp()
    try:
        with tarfile.open(fileobj=io.BytesIO(result.model.open(owner))) as archive:
            archive.extractall(tmp, filter="data")
        return PCAModel.load(f"{tmp}/model").explainedVariance.toArray()
    finally:
        shutil.rmtree(tmp)


def test_statistics_release_exposes_weights_sealed_does_not(spark_env):
    from twofold.errors import ConfigError
    from twofold.spark import LogisticRegression, encrypted_files

    services = spark_env["services"]
    files = encrypted_files(spark_env["spark"], spark_env["datasets"]["classification"].path)
    stats = LogisticRegression(release="statistics", maxIter=5).setEnclave(services.enclave).fit(files)
    assert stats.coefficients.shape == (5,)
    sealed = LogisticRegression(release="sealed", maxIter=5).setEnclave(services.enclave).fit(files)
    with pytest.raises(ConfigError, match="sealed"):
        _ = sealed.coefficients
    assert sealed.model_file.params["maxIter"] == 5 and sealed.model_file.params["regParam"] == 0.0
    assert sealed.getOrDefault("release") == "sealed"


def test_whole_mode_runs_any_pyspark_ml_estimator(spark_env):
    """GBT, ALS and LDA (no partitioned kernels yet) run unchanged on the decrypted DataFrame."""
    from pyspark.ml.classification import GBTClassifier
    from pyspark.ml.clustering import LDA
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

    from twofold.spark import read_encrypted

    services = spark_env["services"]
    frame = read_encrypted(spark_env["spark"], spark_env["datasets"]["classification"].path, services.broker)
    assert frame.count() == 3000
    features = jobs.assemble(frame, [f"f{i}" for i in range(5)]).cache()
    gbt = GBTClassifier(maxIter=5, maxDepth=3).fit(features)
    accuracy = gbt.transform(features).select(F.avg((F.col("prediction") == F.col("label")).cast("double"))).first()[0]
    assert accuracy > 0.8
    counts = jobs.assemble(read_encrypted(spark_env["spark"], spark_env["datasets"]["counts"].path, services.broker),
                           [f"f{i}" for i in range(5)])
    lda = LDA(k=2, maxIter=5, seed=1).fit(counts)
    assert lda.vocabSize() == 5
    ratings = frame.select((F.abs(F.col("f0") * 10).cast("int") % 20).alias("user"),
                           (F.abs(F.col("f1") * 10).cast("int") % 15).alias("item"), F.col("label").cast("float")
                           .alias("rating"))
    als = ALS(rank=2, maxIter=3, userCol="user", itemCol="item", ratingCol="rating", seed=1).fit(ratings)
    assert als.userFactors.count() > 0


def test_read_encrypted_assembles_features_like_vector_assembler(spark_env):
    """``features=`` gives the vectors VectorAssembler gives, in dataset order, beside the kept columns."""
    from twofold.errors import ConfigError
    from twofold.spark import read_encrypted

    spark, url = spark_env["spark"], spark_env["services"].broker
    path = spark_env["datasets"]["classification"].path
    names = [f"f{i}" for i in (3, 0, 4)]  # any subset, any order
    assert read_encrypted(spark, path, url, features=names).columns == ["features", "f1", "f2", "label"]
    assembled = read_encrypted(spark, path, url, columns=["label"], features=names)
    expected = jobs.assemble(read_encrypted(spark, path, url), names).select("features", "label")
    got, want = assembled.collect(), expected.collect()
    assert [(r.features.toArray().tolist(), r.label) for r in got] == \
        [(r.features.toArray().tolist(), r.label) for r in want]
    table = spark_env["tables"]["classification"]
    assert got[7].features.toArray().tolist() == [table.column(n)[7].as_py() for n in names]
    only = read_encrypted(spark, path, url, columns=[], features=["f1"], features_col="x")
    assert only.columns == ["x"] and only.count() == 3000
    with pytest.raises(ConfigError, match="no column 'nope'"):
        read_encrypted(spark, path, url, features=["nope"])
    with pytest.raises(ConfigError, match="no column 'nope'"):
        read_encrypted(spark, path, url, columns=["nope"])


def test_assemble_batch_refuses_nulls_and_text():
    import pyarrow as pa

    from twofold.errors import ConfigError, InputError
    from twofold.spark.vectors import assemble_batch, check_features

    batch = pa.record_batch({"a": pa.array([1, None], pa.int64()), "b": [0.5, 1.5], "t": ["x", "y"]})
    with pytest.raises(InputError, match="'a' has null values"):
        assemble_batch(batch, ["a", "b"], "features", [])
    with pytest.raises(ConfigError, match="'t' is string, not numeric"):
        check_features(batch.schema, ["b", "t"])
    out = assemble_batch(batch.slice(0, 1), ["b", "a"], "v", ["t"])
    assert out.column("v").to_pylist() == [{"type": 1, "size": None, "indices": None, "values": [0.5, 1.0]}]
    assert out.column("t").to_pylist() == ["x"]


def test_cli_train_predict_decrypt(spark_env, tmp_path):
    """The commands a user runs, with a running key broker (--kbs) and the owner's keystore for predictions."""
    import pyarrow.csv as pacsv

    from ..conftest import run_cli

    dataset = spark_env["datasets"]["classification"]
    keystore = str(spark_env["store"].directory)
    identity = tmp_path / "broker-identity.json"  # what the owner gives with her broker's URL
    identity.write_text(spark_env["services"].enclave.broker_identity)
    broker = ("--kbs", spark_env["services"].kbs_url, "--broker-identity", str(identity))
    result = run_cli("train", str(dataset.path), "--out", str(tmp_path / "m.model"), "--algorithm", "logreg",
                     "--release", "sealed", *broker, "--master", "local[1]", "--max-iter", "10")
    assert result.returncode == 0, result.stderr
    assert "sealed model written" in result.stderr and "SIMULATION" in result.stderr
    result = run_cli("predict", str(tmp_path / "m.model"), str(dataset.path), "--out", str(tmp_path / "preds"),
                     "--keystore", keystore, *broker, "--master", "local[1]")
    assert result.returncode == 0, result.stderr
    assert run_cli("decrypt", str(tmp_path / "preds"), "--out", str(tmp_path / "p.csv"), "--keystore",
                   keystore).returncode == 0
    table = pacsv.read_csv(tmp_path / "p.csv")
    assert table.column_names == ["label", "prediction"] and table.num_rows == 3000
    accuracy = (table.column("label").to_numpy() == table.column("prediction").to_numpy()).mean()
    assert accuracy > 0.8
    bad = run_cli("train", str(dataset.path), "--out", str(tmp_path / "x.model"), "--algorithm", "logreg")
    assert bad.returncode != 0 and "--keystore" in bad.stderr
