"""Streaming readers for plaintext inputs (CSV and Parquet) with bounded memory and data-free errors."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from twofold.errors import InputError

CSV_BLOCK_BYTES = 16 << 20
PARQUET_BATCH_ROWS = 65_536


def open_table_source(path: Path | str) -> tuple[pa.RecordBatchReader, int]:
    """A streaming batch reader over a CSV or Parquet file, and the input's size in bytes."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"input {path} does not exist or is not a file")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"input {path} is empty")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return _parquet_reader(path), size
    if suffix in (".csv", ".txt", ".tsv"):
        return _csv_reader(path, delimiter="\t" if suffix == ".tsv" else ","), size
    raise InputError(f"unsupported input type {suffix or '(none)'}: use .csv, .tsv or .parquet")


def _parquet_reader(path: Path) -> pa.RecordBatchReader:
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException):
        raise InputError(f"{path} is not a readable Parquet file (an encrypted dataset? use `twofold "
                         "decrypt`)") from None
    schema = parquet.schema_arrow

    def batches():
        try:
            yield from parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS)
        except (OSError, pa.ArrowException):
            raise InputError(f"{path} is a corrupt Parquet file") from None

    return pa.RecordBatchReader.from_batches(schema, batches())


def _csv_reader(path: Path, delimiter: str) -> pa.RecordBatchReader:
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=False),
        )
    except pa.ArrowException as exc:
        raise csv_error(path, exc) from None
    schema = reader.schema
    if len(schema) == 0:
        raise InputError(f"{path} has no columns")

    def batches():
        try:
            yield from reader
        except pa.ArrowException as exc:
            raise csv_error(path, exc) from None

    return pa.RecordBatchReader.from_batches(schema, batches())


_RAGGED = re.compile(r"Expected (\d+) columns, got (\d+)")
_CONVERT = re.compile(r"In CSV column #(\d+): (?:Row #(\d+): )?CSV conversion error to (\w+)")
_ROW = re.compile(r"Row #(\d+)")


def csv_error(path: Path, exc: BaseException) -> InputError:
    """Turn a PyArrow CSV error into a one-line InputError that quotes no data from the file."""
    text = str(exc)
    if "Empty CSV file" in text:
        return InputError(f"input {path} is empty")
    row = _ROW.search(text)
    where = f" at row {row.group(1)}" if row else ""
    if ragged := _RAGGED.search(text):
        return InputError(f"ragged CSV {path}{where}: a row has {ragged.group(2)} fields but the header "
                          f"has {ragged.group(1)}")
    if convert := _CONVERT.search(text):
        return InputError(f"CSV {path}{where}: column #{convert.group(1)} holds a value that is not "
                          f"{convert.group(3)}, the type inferred from the first rows; clean the column or "
                          "convert the file to Parquet with explicit types")
    return InputError(f"malformed CSV {path}{where} (details withheld: they may quote data)")
