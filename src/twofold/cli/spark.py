"""``twofold train`` and ``twofold predict``: MLlib on encrypted datasets, embedded default or a running broker."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from twofold.cli.common import debug_requested, get_passphrase, info, progress_bar
from twofold.errors import ConfigError
from twofold.spark import catalog


def hyperparameter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """One option per hyper-parameter of the catalog (``maxIter`` -> ``--max-iter``), unset unless given."""
    for name, takers in reversed(catalog.by_param().items()):
        param, option = takers[0][1], catalog.flag(name)
        doc = " or ".join(dict.fromkeys(p.doc for _, p in takers))
        uses = ", ".join(f"{algorithm.name} (default {p.default})" for algorithm, p in takers)
        if param.type is bool:
            decls, kind = [f"{option}/--no-{option[2:]}"], {}
        else:
            decls, kind = [option], {"type": click.Choice(param.choices) if param.choices else param.type}
        command = click.option(*decls, name, default=None, help=f"{doc[0].upper()}{doc[1:]}: {uses}.", **kind)(command)
    return command


def _params(algorithm: str, options: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters given on the command line; a ConfigError names those ``algorithm`` does not take."""
    return catalog.get(algorithm).check({k: v for k, v in options.items() if v is not None}, spell=catalog.flag)


def _owner(keystore_dir: Path | None):
    from twofold.keys.keystore import Keystore

    if keystore_dir is None:
        return None, None
    passphrase = get_passphrase()
    return Keystore.open(keystore_dir, passphrase), passphrase


@click.command()
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Sealed model file.")
@click.option("--algorithm", required=True, type=click.Choice(list(catalog.ALGORITHMS)))
@click.option("--mode", type=click.Choice(["whole", "partitioned"]), default="partitioned", show_default=True)
@click.option("--release", type=click.Choice(["statistics", "sealed"]), default="statistics", show_default=True,
              help="Partitioned mode: what leaves the enclave.")
@click.option("--keystore", "keystore_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Owner's keystore: embed a key broker on loopback (the default way to run).")
@click.option("--kbs", "kbs_url", default=None, help="Use a running key broker instead (with --broker-identity).")
@click.option("--broker-identity", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="The running key broker's identity, as its owner issued it (twofold kbs identity).")
@click.option("--master", default=None, help="Spark master (default local[*]).")
@click.option("--label", default=None, help="Label column (default: the dataset's).")
@click.option("--features", default=None, help="Comma-separated feature columns (default: all numeric).")
@hyperparameter_options
def train(dataset: Path, out: Path, algorithm: str, mode: str, release: str, keystore_dir: Path | None,
          kbs_url: str | None, broker_identity: Path | None, master: str | None, label: str | None,
          features: str | None, **options: Any) -> None:
    """Train on an encrypted dataset; the model is written sealed (only the owner and attested code open it)."""
    from twofold.spark import jobs
    from twofold.spark.embedded import job_services
    from twofold.spark.session import get_spark

    if out.exists():
        raise ConfigError(f"{out} exists; choose a new model path")
    params = _params(algorithm, options)
    if keystore_dir is None and kbs_url is None:
        raise ConfigError("pass --keystore (embedded key broker) or --kbs URL")
    owner, passphrase = _owner(keystore_dir) if kbs_url is None else (None, None)
    started = time.perf_counter()
    with job_services([str(dataset)], mode=mode, release=release if mode == "partitioned" else None,
                      keystore_dir=keystore_dir, passphrase=passphrase, keystore=owner, kbs_url=kbs_url,
                      broker_identity=broker_identity) as services:
        info(f"enclave: SIMULATION backend; key broker {services.kbs_url}")
        spark = get_spark(master, quiet=not debug_requested(), whole_mode=mode == "whole")
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
@click.option("--kbs", "kbs_url", default=None, help="Use a running key broker instead of an embedded one "
              "(with --broker-identity).")
@click.option("--broker-identity", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="The running key broker's identity, as its owner issued it (twofold kbs identity).")
@click.option("--master", default=None, help="Spark master (default local[*]).")
def predict(model_path: Path, dataset: Path, out: Path, keystore_dir: Path, kbs_url: str | None,
            broker_identity: Path | None, master: str | None) -> None:
    """Predict on an encrypted dataset; predictions are written as an encrypted dataset of the owner."""
    from twofold.data.models import ModelFile
    from twofold.spark import jobs
    from twofold.spark.embedded import job_services
    from twofold.spark.session import get_spark

    model = ModelFile.load(model_path)
    owner, passphrase = _owner(keystore_dir)
    if out.exists():
        raise ConfigError(f"output {out} already exists; choose a new directory")
    needed = [str(dataset), model.dataset_id]
    with job_services(needed, mode=model.mode, release="sealed", keystore_dir=keystore_dir, passphrase=passphrase,
                      keystore=owner, kbs_url=kbs_url, broker_identity=broker_identity) as services:
        spark = get_spark(master, quiet=not debug_requested(), whole_mode=model.mode == "whole")
        with progress_bar("predicting", None, "partitions"):
            table = jobs.predict(spark, model, dataset, services.enclave, owner)
    written = jobs.write_predictions(table, out, owner)
    info(f"{written.num_rows} predictions ({model.algorithm}, {model.mode} mode) written encrypted to {out} "
         f"(dataset {written.dataset_id}; label column kept: {written.label or '-'})")
