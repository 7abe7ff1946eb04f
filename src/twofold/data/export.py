"""Write a decrypted dataset to a local Parquet or CSV file, atomically and with mode 0600."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from twofold.data.tabular import EncryptedDataset, Progress
from twofold.errors import ConfigError


def export_dataset(dataset: EncryptedDataset, out: Path, *, overwrite: bool = False,
                   progress: Progress | None = None) -> int:
    """Decrypt ``dataset`` into ``out`` (.parquet or .csv); returns the number of rows written."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise ConfigError(f"output must end in .parquet or .csv, not {suffix or '(none)'}")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; pass --force to overwrite")
    if not out.parent.is_dir():
        raise ConfigError(f"directory {out.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.fchmod(fd, 0o600)
    rows = 0
    try:
        with os.fdopen(fd, "wb") as sink:
            writer = (pq.ParquetWriter(sink, dataset.schema) if suffix == ".parquet"
                      else pacsv.CSVWriter(sink, dataset.schema))
            with writer:
                for batch in dataset.iter_batches():
                    writer.write_batch(batch)
                    rows += batch.num_rows
                    if progress:
                        progress(batch.num_rows)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return rows
