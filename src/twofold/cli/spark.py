"""``twofold train`` and ``twofold predict``: MLlib on encrypted datasets, embedded default or a running broker."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from twofold.cli.common import get_passphrase, info, progress_bar
from twofold.errors import ConfigError

ALGORITHMS = ["logreg", "linreg", "kmeans", "naive_bayes", "pca"]


def _params(**options: Any) -> dict[str, Any]:
    names = {"max_iter": "maxIter", "reg_param": "regParam", "elastic_net_param": "elasticNetParam", "tol": "tol",
             "k": "k", "seed": "seed", "model_type": "modelType", "smoothing": "smoothing"}
    return {names[k]: v for k, v in options.items() if v is not None}


def _supported(algorithm: str, params: dict[str, Any]) -> dict[str, Any]:
    allowed = {"logreg": {"maxIter", "regParam", "elasticNetParam", "tol"},
               "linreg": {"maxIter", "regParam", "elasticNetParam", "tol"},
               "kmeans": {"maxIter", "tol", "k", "seed"}, "naive_bayes": {"modelType", "smoothing"}, "pca": {"k"}}
    unknown = set(params) - allowed[algorithm]
    if unknown:
        raise ConfigError(f"{algorithm} does not take {sorted(unknown)}")
    return params


def _owner(keystore_dir: Path | None):
    from twofold.keys.keystore import Keystore

    if keystore_dir is None:
        return None, None
    passphrase = get_passphrase()
    return Keystore.open(keystore_dir, passphrase), passphrase


@click.command()
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Sealed model file.")
@click.option("--algorithm", required=True, type=click.Choice(ALGORITHMS))
@click.option("--mode", type=click.Choice(["whole", "partitioned"]), default="partitioned", show_default=True)
@click.option("--release", type=click.Choice(["statistics", "sealed"]), default="statistics", show_default=True,
              help="Partitioned mode: what leaves the enclave.")
@click.option("--keystore", "keystore_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Owner's keystore: embed a key broker on loopback (the default way to run).")
@click.option("--kbs", "kbs_url", default=None, help="Use a running key broker instead.")
@click.option("--master", default=None, help="Spark master (default local[*]).")
@click.option("--label", default=None, help="Label column (default: the dataset's).")
@click.option("--features", default=None, help="Comma-separated feature columns (default: all numeric).")
@click.option("--max-iter", type=int, default=None)
@click.option("--reg-param", type=float, default=None)
@click.option("--elastic-net-param", type=float, default=None)
@click.option("--tol", type=float, default=None)
@click.option("--k", type=int, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--model-type", type=click.Choice(["multinomial", "gaussian"]), default=None)
@click.option("--smoothing", type=float, default=None)
def train(dataset: Path, out: Path, algorithm: str, mode: str, release: str, keystore_dir: Path | None,
          kbs_url: str | None, master: str | None, label: str | None, features: str | None, **options: Any) -> None:
    """Train on an encrypted dataset; the model is written sealed (only the owner and attested code open it)."""
    from twofold.spark import jobs
    from twofold.spark.embedded import job_services
    from twofold.spark.session import get_spark

    if out.exists():
        raise ConfigError(f"{out} exists; choose a new model path")
    params = _supported(algorithm, _params(**options))
    if keystore_dir is None and kbs_url is None:
        raise ConfigError("pass --keystore (embedded key broker) or --kbs URL")
    _, passphrase = _owner(keystore_dir) if kbs_url is None else (None, None)
    started = time.perf_counter()
    with job_services([str(dataset)], keystore_dir=keystore_dir, passphrase=passphrase, kbs_url=kbs_url) as services:
        info(f"enclave: SIMULATION backend; key broker {services.kbs_url}")
        spark = get_spark(master)
        with progress_bar(f"{algorithm} ({mode}{'/' + release if mode == 'partitioned' else ''})", None,
                          "passes") as advance:
            result = jobs.train(spark, dataset, algorithm, mode, release, services.enclave, params, label,
                                features.split(",") if features else None, progress=advance)
    result.model.save(out)
    info(f"trained {algorithm} in {mode} mode ({result.passes} passes, {time.perf_counter() - started:.1f} s); "
         f"sealed model written to {out}")


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="New encrypted dataset directory.")
@click.option("--keystore", "keystore_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Owner's keystore: predictions are written encrypted under it.")
@click.option("--kbs", "kbs_url", default=None, help="Use a running key broker instead of an embedded one.")
@click.option("--master", default=None, help="Spark master (default local[*]).")
def predict(model_path: Path, dataset: Path, out: Path, keystore_dir: Path, kbs_url: str | None,
            master: str | None) -> None:
    """Predict on an encrypted dataset; predictions are written as an encrypted dataset of the owner."""
    from twofold.data.models import ModelFile
    from twofold.data.tabular import read_manifest
    from twofold.spark import jobs
    from twofold.spark.embedded import job_services
    from twofold.spark.session import get_spark

    model = ModelFile.load(model_path)
    owner, passphrase = _owner(keystore_dir)
    if out.exists():
        raise ConfigError(f"output {out} already exists; choose a new directory")
    needed = [str(dataset), model.dataset_id]
    with job_services(needed, keystore_dir=keystore_dir, passphrase=passphrase, kbs_url=kbs_url) as services:
        spark = get_spark(master)
        with progress_bar("predicting", None, "partitions"):
            table = jobs.predict(spark, model, dataset, services.enclave, owner)
    written = jobs.write_predictions(table, out, owner)
    info(f"{written.num_rows} predictions ({model.algorithm}, {model.mode} mode) written encrypted to {out} "
         f"(dataset {written.dataset_id}; label column kept: {read_manifest(dataset)['manifest']['label'] or '-'})")
