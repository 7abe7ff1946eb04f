"""Encrypted datasets as Spark sees them in partitioned mode: one row (and one partition) per encrypted file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twofold.data.tabular import read_manifest
from twofold.errors import ConfigError

_NUMERIC = ("int", "uint", "float", "double", "bool", "decimal")


def encrypted_files(spark: Any, path: str | Path) -> Any:
    """A DataFrame of (path, dataset_id, index, rows, bytes) with one partition per encrypted file.

    Only public manifest facts are in it; tasks hand the files to their host's enclave.
    """
    path = str(Path(path).resolve())
    body = read_manifest(Path(path))["manifest"]
    rows = [(path, body["dataset_id"], i, int(f["rows"]), int(f["bytes"])) for i, f in enumerate(body["files"])]
    schema = "path string, dataset_id string, index int, rows long, bytes long"
    return spark.createDataFrame(spark.sparkContext.parallelize(rows, max(len(rows), 1)), schema)


def numeric_columns(body: dict[str, Any], label: str) -> list[str]:
    """The numeric columns of a dataset's manifest body other than ``label``: the default features."""
    return [c["name"] for c in body["schema"]["columns"]
            if c["name"] != label and str(c["type"]).startswith(_NUMERIC)]


@dataclass(frozen=True)
class FileSet:
    """The files of one encrypted dataset that a DataFrame from :func:`encrypted_files` lists."""

    path: str
    dataset_id: str
    indices: list[int]
    manifest: dict[str, Any]  # the manifest document as stored (public facts, wrapped keys); enclaves authenticate it

    @property
    def body(self) -> dict[str, Any]:
        return self.manifest["manifest"]

    def index_rdd(self, spark: Any) -> Any:
        """The file indices, one per Spark partition (so that one task handles one file)."""
        return spark.sparkContext.parallelize(self.indices, len(self.indices))


def file_set(frame: Any) -> FileSet:
    """The dataset a files DataFrame lists; a ConfigError unless it lists files of exactly one dataset."""
    rows = sorted(frame.select("path", "dataset_id", "index").distinct().collect(), key=lambda r: r["index"])
    if not rows or len({(r["path"], r["dataset_id"]) for r in rows}) != 1:
        raise ConfigError("use the files of one dataset: twofold.spark.encrypted_files(spark, DIR)")
    path = rows[0]["path"]
    return FileSet(path, rows[0]["dataset_id"], [r["index"] for r in rows], read_manifest(Path(path)))
