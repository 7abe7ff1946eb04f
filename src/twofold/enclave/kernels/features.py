"""Turn a decrypted partition into a float64 feature matrix and label vector (inside the enclave)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from twofold.errors import InputError


def matrix(table: pa.Table, columns: list[str], label: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Features as a (rows, len(columns)) float64 matrix; nulls are refused (no value is quoted)."""
    missing = [c for c in [*columns, *([label] if label else [])] if c not in table.column_names]
    if missing:
        raise InputError(f"columns not in the dataset: {missing}")
    X = np.empty((table.num_rows, len(columns)), dtype=np.float64, order="F")  # column writes stay contiguous
    for j, name in enumerate(columns):
        X[:, j] = _column(table, name)
    y = _column(table, label) if label else None
    return X, y


def _column(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name)
    if column.null_count:
        raise InputError(f"column {name!r} has null values; impute or drop them before training")
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
            or pa.types.is_boolean(column.type) or pa.types.is_decimal(column.type)):
        raise InputError(f"column {name!r} is not numeric ({column.type})")
    if column.type != pa.float64():
        column = pc.cast(column, pa.float64())
    return column.to_numpy()
