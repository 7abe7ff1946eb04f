"""``twofold bench encrypt``: plain Parquet vs encrypted dataset, written and read in one run."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from twofold.bench.common import best_of, machine, timed
from twofold.crypto.kdf import Argon2Params
from twofold.data.tabular import EncryptedDataset, part_name
from twofold.keys.keystore import Keystore


def synthetic_table(rows: int, cols: int, seed: int = 7) -> pa.Table:
    """Dense float features and an integer label, like a HiBench classification table."""
    rng = np.random.default_rng(seed)
    columns = {f"f{i}": rng.standard_normal(rows) for i in range(cols)}
    columns["label"] = rng.integers(0, 2, rows)
    return pa.table(columns)


def _write_plain(table: pa.Table, directory: Path, rows_per_file: int) -> list[Path]:
    directory.mkdir()
    paths = []
    for index, start in enumerate(range(0, table.num_rows, rows_per_file)):
        path = directory / part_name(index)
        pq.write_table(table.slice(start, rows_per_file), path)
        paths.append(path)
    return paths


def _read_plain(paths: list[Path]) -> pa.Table:
    """The baseline read path: the same memory-mapped ParquetFile reads the encrypted path uses."""
    return pa.concat_tables([pq.ParquetFile(pa.memory_map(str(p))).read() for p in paths])


def run(rows: int, cols: int, rows_per_file: int | None = None, repeats: int = 3) -> dict[str, Any]:
    """Measure write and read throughput (MB of in-memory table per second) for both formats."""
    table = synthetic_table(rows, cols)
    rows_per_file = rows_per_file or max(1, rows // 4)
    megabytes = table.nbytes / 1e6
    with tempfile.TemporaryDirectory(prefix="twofold-bench-") as tmp:
        root = Path(tmp)
        store = Keystore.create(root / "ks", "benchmark-passphrase", Argon2Params(memory_kib=8192, iterations=1))
        plain_write, paths = timed(lambda: _write_plain(table, root / "plain", rows_per_file))
        enc_write, _ = timed(lambda: EncryptedDataset.write(table, root / "enc", store, label="label",
                                                             rows_per_file=rows_per_file))
        dataset = EncryptedDataset.open(root / "enc", store)
        plain_read = enc_read = float("inf")
        for _ in range(repeats):  # interleaved, best of each
            plain_read = min(plain_read, best_of(1, lambda: _read_plain(paths)))
            enc_read = min(enc_read, best_of(1, dataset.read_table))
        if not dataset.read_table().equals(table):
            raise AssertionError("encrypted round trip differs from the input")
    results = [
        {"mode": "plain", "write_mb_per_s": megabytes / plain_write, "read_mb_per_s": megabytes / plain_read},
        {"mode": "encrypted", "write_mb_per_s": megabytes / enc_write, "read_mb_per_s": megabytes / enc_read},
    ]
    return {
        "benchmark": "encrypt",
        "rows": rows,
        "cols": cols,
        "rows_per_file": rows_per_file,
        "megabytes": megabytes,
        "results": results,
        "read_ratio": results[1]["read_mb_per_s"] / results[0]["read_mb_per_s"],
        "write_ratio": results[1]["write_mb_per_s"] / results[0]["write_mb_per_s"],
        "machine": machine(),
    }
