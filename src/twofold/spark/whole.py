"""Whole mode (the executors are the trusted boundary): decrypt inside executors, then any ``pyspark.ml`` works.

Each executor's Python worker attests to the owner's key broker with the *whole* measurement (every twofold
file) and opens the dataset with the keys released to it; the decrypted DataFrame never exists outside
executors and the driver.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from twofold.crypto.manifest import Manifest
from twofold.data.tabular import EncryptedDataset, read_manifest, schema_from_b64
from twofold.enclave.attester import SimulationAttester, load_or_create_platform_key
from twofold.enclave.broker_client import BrokerAddress, BrokerSession
from twofold.enclave.measure import whole_measurement
from twofold.errors import ConfigError
from twofold.spark.vectors import assemble_batch, assembled_schema

_sessions: dict[BrokerAddress, BrokerSession] = {}
_lock = threading.Lock()


def attested_session(broker: BrokerAddress) -> BrokerSession:
    """This process's attested key-broker session (whole measurement), created once per process.

    The lock only guards the table: measuring and attesting run without it, and should two threads race, the
    first session stored wins and the other is dropped (one extra attestation, no hang behind a slow broker).
    """
    with _lock:
        session = _sessions.get(broker)
    if session is not None:
        return session
    measurement = whole_measurement()
    attester = SimulationAttester(load_or_create_platform_key())
    session = BrokerSession(broker.url, measurement,
                            lambda nonce, pub, config: attester.evidence(measurement, nonce, pub, config),
                            broker.pinned())
    session.attest()
    with _lock:
        return _sessions.setdefault(broker, session)


@dataclass(frozen=True)
class _Assembly:
    features: list[str]
    features_col: str
    keep: list[str]


def _decrypt_partitions(path: str, broker: BrokerAddress, columns: list[str] | None, assembly: _Assembly | None,
                        batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    dataset = EncryptedDataset.open(path, attested_session(broker))
    for batch in batches:
        for index in batch.column("index").to_pylist():
            for plain in dataset.read_file(int(index), columns).to_batches():
                if assembly is None:
                    yield plain
                else:
                    yield assemble_batch(plain, assembly.features, assembly.features_col, assembly.keep)


def read_encrypted(spark: Any, path: str | Path, broker: BrokerAddress, columns: list[str] | None = None,
                   features: list[str] | None = None, features_col: str = "features",
                   manifest: Manifest | None = None) -> Any:
    """A DataFrame of the dataset's plaintext, decrypted inside the executors (one partition per file).

    ``broker`` is the owner's key broker, which the executors attest to. ``columns`` selects columns (all by
    default). With ``features``, those columns arrive assembled into one dense ``pyspark.ml`` vector column
    ``features_col`` (what ``VectorAssembler`` gives, built per Arrow batch in the executor), followed by
    ``columns`` (by default every column that is not a feature). ``manifest``:
    the dataset's manifest if the caller has read it already.
    """
    from pyspark.sql.pandas.types import from_arrow_schema

    path = str(Path(path).resolve())
    manifest = manifest if manifest is not None else read_manifest(Path(path))
    schema = schema_from_b64(manifest.schema.arrow)
    for name in columns or []:
        if name not in schema.names:
            raise ConfigError(f"no column {name!r} in the dataset")
    assembly = None
    if features is not None:
        keep = columns if columns is not None else [c for c in schema.names if c not in features]
        spark_schema = assembled_schema(schema, features, features_col, keep)
        assembly = _Assembly(list(features), features_col, list(keep))
        columns = list(dict.fromkeys([*features, *keep]))
    else:
        spark_schema = from_arrow_schema(pa.schema([schema.field(c) for c in columns]) if columns else schema)
    count = len(manifest.files)
    indices = spark.createDataFrame(spark.sparkContext.parallelize([(i,) for i in range(count)], max(count, 1)),
                                    "index int")  # partition i holds file i, so row order is the dataset's
    return indices.mapInArrow(lambda batches: _decrypt_partitions(path, broker, columns, assembly, batches),
                              spark_schema)
