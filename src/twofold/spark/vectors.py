"""Assemble feature columns into a ``pyspark.ml`` vector column inside the Arrow batches of a Python worker.

``VectorAssembler`` converts every row in the JVM. When the executor already holds the decrypted Arrow batch,
one NumPy stack per batch gives the same dense vectors, encoded as the struct that ``VectorUDT`` stores
(type 1 = dense, values).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from twofold.errors import ConfigError, InputError

_NUMERIC = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_decimal)


def check_features(schema: pa.Schema, features: list[str]) -> None:
    """Raise ``ConfigError`` unless every feature column exists and is numeric."""
    if not features:
        raise ConfigError("features: name at least one column")
    for name in features:
        if name not in schema.names:
            raise ConfigError(f"no column {name!r} in the dataset")
        if not any(test(schema.field(name).type) for test in _NUMERIC):
            raise ConfigError(f"column {name!r} is {schema.field(name).type}, not numeric: it cannot be a feature")


def assembled_schema(schema: pa.Schema, features: list[str], features_col: str, keep: list[str]) -> Any:
    """The Spark schema of assembled batches: the vector column, then the kept columns."""
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql.pandas.types import from_arrow_schema
    from pyspark.sql.types import StructField, StructType

    check_features(schema, features)
    kept = from_arrow_schema(pa.schema([schema.field(name) for name in keep]))
    return StructType([StructField(features_col, VectorUDT(), nullable=False), *kept.fields])


def dense_vectors(matrix: np.ndarray) -> pa.StructArray:
    """Rows of a 2-D float64 matrix as ``VectorUDT`` dense structs."""
    rows, width = matrix.shape
    values = pa.ListArray.from_arrays(pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32)),
                                      pa.array(np.ascontiguousarray(matrix, dtype=np.float64).ravel()))
    return pa.StructArray.from_arrays(
        [pa.array(np.ones(rows, dtype=np.int8)), pa.nulls(rows, pa.int32()), pa.nulls(rows, pa.list_(pa.int32())),
         values], names=["type", "size", "indices", "values"])


def assemble_batch(batch: pa.RecordBatch, features: list[str], features_col: str, keep: list[str]) -> pa.RecordBatch:
    """One batch with ``features`` stacked into a vector column; null features are refused, as VectorAssembler does."""
    columns = []
    for name in features:
        column = batch.column(name)
        if column.null_count:
            raise InputError(f"column {name!r} has null values: drop or impute them before training")
        columns.append(column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False))
    matrix = np.column_stack(columns) if columns else np.empty((batch.num_rows, 0))
    return pa.RecordBatch.from_arrays([dense_vectors(matrix), *(batch.column(name) for name in keep)],
                                      names=[features_col, *keep])
