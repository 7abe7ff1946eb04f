"""Whole mode (the executors are the trusted boundary): decrypt inside executors, then any ``pyspark.ml`` works.

Each executor's Python worker attests to the owner's key broker with the *whole* measurement (every twofold
file) and opens the dataset with the keys released to it; the decrypted DataFrame never exists outside
executors and the driver.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from twofold.data.tabular import EncryptedDataset, read_manifest, schema_from_b64
from twofold.enclave.attester import SimulationAttester, load_or_create_platform_key
from twofold.enclave.broker_client import BrokerSession
from twofold.enclave.measure import whole_measurement

_sessions: dict[str, BrokerSession] = {}
_lock = threading.Lock()


def attested_session(kbs_url: str) -> BrokerSession:
    """This process's attested key-broker session (whole measurement), created once per process."""
    with _lock:
        session = _sessions.get(kbs_url)
        if session is None:
            measurement = whole_measurement()
            attester = SimulationAttester(load_or_create_platform_key())
            session = BrokerSession(kbs_url, measurement,
                                    lambda nonce, pub: attester.evidence(measurement, nonce, pub))
            session.attest()
            _sessions[kbs_url] = session
        return session


def _decrypt_partitions(path: str, kbs_url: str, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    dataset = EncryptedDataset.open(path, attested_session(kbs_url))
    for batch in batches:
        for index in batch.column("index").to_pylist():
            yield from dataset.read_file(int(index)).to_batches()


def read_encrypted(spark: Any, path: str | Path, kbs_url: str, columns: list[str] | None = None) -> Any:
    """A DataFrame of the dataset's plaintext, decrypted inside the executors (one partition per file)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    path = str(Path(path).resolve())
    body = read_manifest(Path(path))["manifest"]
    schema = schema_from_b64(body["schema"]["arrow"])
    count = len(body["files"])
    indices = spark.createDataFrame(spark.sparkContext.parallelize([(i,) for i in range(count)], max(count, 1)),
                                    "index int")  # partition i holds file i, so row order is the dataset's
    frame = indices.mapInArrow(lambda batches: _decrypt_partitions(path, kbs_url, batches),
                               from_arrow_schema(schema))
    return frame.select(*columns) if columns else frame
