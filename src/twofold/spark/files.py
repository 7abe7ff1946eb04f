"""Encrypted datasets as Spark sees them in partitioned mode: one row (and one partition) per encrypted file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twofold.crypto.manifest import Manifest
from twofold.data.tabular import read_manifest
from twofold.errors import ConfigError

_NUMERIC = ("int", "uint", "float", "double", "bool", "decimal")


def encrypted_files(spark: Any, path: str | Path, manifest: Manifest | None = None) -> Any:
    """A DataFrame of (path, dataset_id, index, rows, bytes) with one partition per encrypted file.

    Only public manifest facts are in it; tasks hand the files to their host's enclave. ``manifest``: the
    dataset's manifest if the caller has read it already.
    """
    path = str(Path(path).resolve())
    manifest = manifest if manifest is not None else read_manifest(Path(path))
    rows = [(path, manifest.dataset_id, i, f.rows, f.bytes) for i, f in enumerate(manifest.files)]
    schema = "path string, dataset_id string, index int, rows long, bytes long"
    return spark.createDataFrame(spark.sparkContext.parallelize(rows, max(len(rows), 1)), schema)


def numeric_columns(manifest: Manifest, label: str) -> list[str]:
    """The numeric columns of a dataset other than ``label``: the default features."""
    return [c.name for c in manifest.schema.columns if c.name != label and c.type.startswith(_NUMERIC)]


@dataclass(frozen=True)
class FileSet:
    """The files of one encrypted dataset that a DataFrame from :func:`encrypted_files` lists."""

    path: str
    dataset_id: str
    indices: list[int]
    manifest: Manifest  # as stored (public facts, wrapped keys), read once; enclaves authenticate it

    def index_rdd(self, spark: Any) -> Any:
        """The file indices, one per Spark partition (so that one task handles one file)."""
        return spark.sparkContext.parallelize(self.indices, len(self.indices))


def file_set(frame: Any, manifest: Manifest | None = None) -> FileSet:
    """The dataset a files DataFrame lists; a ConfigError unless it lists files of exactly one dataset.

    The manifest is read from the dataset directory unless the caller gives it (:func:`manifest_of`).
    """
    rows = sorted(frame.select("path", "dataset_id", "index").distinct().collect(), key=lambda r: r["index"])
    if not rows or len({(r["path"], r["dataset_id"]) for r in rows}) != 1:
        raise ConfigError("use the files of one dataset: twofold.spark.encrypted_files(spark, DIR)")
    path, dataset_id = rows[0]["path"], rows[0]["dataset_id"]
    return FileSet(path, dataset_id, [r["index"] for r in rows], manifest_of(path, dataset_id, manifest))


def manifest_of(path: str, dataset_id: str, manifest: Manifest | None = None) -> Manifest:
    """The manifest of dataset ``dataset_id`` in ``path``: ``manifest`` if the caller has it, else read; a
    ConfigError if it is another dataset's."""
    manifest = manifest if manifest is not None else read_manifest(Path(path))
    if manifest.dataset_id != dataset_id:
        raise ConfigError(f"the manifest is that of {manifest.dataset_id}, not of the files' {dataset_id}")
    return manifest
