"""Streaming readers for plaintext inputs (CSV and Parquet) with bounded memory and data-free errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
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
    """Parse the CSV block by block (PyArrow's own streaming reader buffers a large part of the file).

    Blocks end at a newline outside quotes; the first block fixes the column types for the rest.
    """
    parse = pacsv.ParseOptions(delimiter=delimiter)
    handle = open(path, "rb")  # noqa: SIM115 - closed by the generator below
    header = handle.readline()
    if not header.strip():
        handle.close()
        raise InputError(f"input {path} is empty")
    first = _parse_block(path, header, _next_block(handle, b""), parse, None, 0)
    schema = first[0].schema

    def batches():
        rows_before = first[0].num_rows
        with handle:
            yield from first[0].to_batches()
            leftover = first[1]
            while True:
                block = _next_block(handle, leftover)
                if block[0] == b"":
                    return
                table, leftover = _parse_block(path, header, block, parse, schema, rows_before)
                rows_before += table.num_rows
                yield from table.to_batches()

    return pa.RecordBatchReader.from_batches(schema, batches())


def _next_block(handle, leftover: bytes) -> tuple[bytes, bytes]:
    """The next run of complete CSV records and the bytes after them (a partial record)."""
    data = leftover + handle.read(CSV_BLOCK_BYTES)
    while True:
        cut = _last_record_end(data)
        more = handle.read(CSV_BLOCK_BYTES) if cut == 0 and len(data) else b""
        if cut or not more:
            if cut == 0:  # end of file: whatever is left is the last record
                return data, b""
            return data[:cut], data[cut:]
        data += more


def _last_record_end(data: bytes) -> int:
    """Offset just past the last newline that is outside double quotes (0 if none)."""
    if not data:
        return 0
    raw = np.frombuffer(data, dtype=np.uint8)
    in_quotes = np.bitwise_xor.accumulate((raw == 34).astype(np.uint8))
    newlines = np.flatnonzero((raw == 10) & (in_quotes == 0))
    return int(newlines[-1]) + 1 if newlines.size else 0


def _parse_block(path: Path, header: bytes, block: tuple[bytes, bytes], parse: pacsv.ParseOptions,
                 schema: pa.Schema | None, rows_before: int) -> tuple[pa.Table, bytes]:
    body, leftover = block
    convert = pacsv.ConvertOptions(strings_can_be_null=False,
                                   column_types=None if schema is None else schema)
    try:
        table = pacsv.read_csv(pa.py_buffer(header + body), parse_options=parse, convert_options=convert)
    except pa.ArrowException as exc:
        raise csv_error(path, exc, rows_before) from None
    if len(table.schema) == 0:
        raise InputError(f"{path} has no columns")
    return table, leftover


_RAGGED = re.compile(r"Expected (\d+) columns, got (\d+)")
_CONVERT = re.compile(r"In CSV column #(\d+): (?:Row #(\d+): )?CSV conversion error to (\w+)")
_ROW = re.compile(r"Row #(\d+)")


def csv_error(path: Path, exc: BaseException, rows_before: int = 0) -> InputError:
    """Turn a PyArrow CSV error into a one-line InputError that quotes no data from the file."""
    text = str(exc)
    if "Empty CSV file" in text:
        return InputError(f"input {path} is empty")
    row = _ROW.search(text)
    where = f" at data row {rows_before + int(row.group(1))}" if row else ""
    if ragged := _RAGGED.search(text):
        return InputError(f"ragged CSV {path}{where}: a row has {ragged.group(2)} fields but the header "
                          f"has {ragged.group(1)}")
    if convert := _CONVERT.search(text):
        return InputError(f"CSV {path}{where}: column #{convert.group(1)} holds a value that is not "
                          f"{convert.group(3)}, the type inferred from the first rows; clean the column or "
                          "convert the file to Parquet with explicit types")
    return InputError(f"malformed CSV {path}{where} (details withheld: they may quote data)")
