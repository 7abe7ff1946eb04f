"""Encrypted datasets as Spark sees them in partitioned mode: one row (and one partition) per encrypted file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twofold.data.tabular import read_manifest


def encrypted_files(spark: Any, path: str | Path) -> Any:
    """A DataFrame of (path, dataset_id, index, rows, bytes) with one partition per encrypted file.

    Only public manifest facts are in it; tasks hand the files to their host's enclave.
    """
    path = str(Path(path).resolve())
    body = read_manifest(Path(path))["manifest"]
    rows = [(path, body["dataset_id"], i, int(f["rows"]), int(f["bytes"])) for i, f in enumerate(body["files"])]
    schema = "path string, dataset_id string, index int, rows long, bytes long"
    return spark.createDataFrame(spark.sparkContext.parallelize(rows, max(len(rows), 1)), schema)
