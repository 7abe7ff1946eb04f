"""``twofold encrypt-tensors``: arrays (``.npy``, ``.npz``, Parquet array columns) into an encrypted tensor dataset."""

from __future__ import annotations

import zipfile
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from twofold.cli.common import info, keystore_option, progress_bar, unlock
from twofold.data.tensors import DEFAULT_SEGMENT_BYTES, write_tensors
from twofold.errors import InputError


def load_arrays(paths: tuple[Path, ...]) -> dict[str, np.ndarray]:
    """Arrays by name: a ``.npy`` file is named by its stem, ``.npz`` members and Parquet columns by theirs."""
    arrays: dict[str, np.ndarray] = {}
    for path in paths:
        if not path.is_file():
            raise InputError(f"input {path} does not exist or is not a file")
        suffix = path.suffix.lower()
        try:
            if suffix == ".npy":
                found = {path.stem: np.load(path, mmap_mode="r", allow_pickle=False)}
            elif suffix == ".npz":
                with np.load(path, allow_pickle=False) as npz:
                    found = {name: npz[name] for name in npz.files}
            elif suffix in (".parquet", ".pq"):
                table = pq.read_table(path)
                found = {name: column_to_numpy(name, table.column(name)) for name in table.column_names}
            else:
                raise InputError(f"unsupported input type {suffix or '(none)'}: use .npy, .npz or .parquet")
        except (OSError, ValueError, zipfile.BadZipFile, pa.ArrowException):
            raise InputError(f"{path} is not a readable {suffix} file (or holds object arrays)") from None
        for name, array in found.items():
            if name in arrays:
                raise InputError(f"two inputs define an array named {name!r}")
            arrays[name] = array
    return arrays


def column_to_numpy(name: str, column: pa.ChunkedArray) -> np.ndarray:
    """A numeric column, or a column of equal-length (nested) lists of numbers, as one dense array."""
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    shape = [len(array)]
    while pa.types.is_list(array.type) or pa.types.is_large_list(array.type) or \
            pa.types.is_fixed_size_list(array.type):
        if array.null_count:
            raise InputError(f"column {name!r} has missing values")
        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            raise InputError(f"column {name!r} has lists of different lengths: tensors need one row shape")
        shape.append(int(lengths[0]) if len(lengths) else 0)
        array = array.flatten()
    if array.null_count:
        raise InputError(f"column {name!r} has missing values")
    if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type) or pa.types.is_boolean(array.type)):
        raise InputError(f"column {name!r} has type {array.type}: only numeric and boolean arrays are tensors")
    return array.to_numpy(zero_copy_only=False).reshape(shape)


@click.command("encrypt-tensors")
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True,
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="New tensor dataset directory.")
@keystore_option
@click.option("--rows-per-shard", type=click.IntRange(min=1), default=None,
              help="Rows per shard file (default: about 64 MiB of rows).")
@click.option("--segment-bytes", type=click.IntRange(min=64), default=DEFAULT_SEGMENT_BYTES, show_default=True,
              help="Target size of one ChaCha20-Poly1305 segment.")
def encrypt_tensors(inputs: tuple[Path, ...], out: Path, keystore_dir: Path, rows_per_shard: int | None,
                    segment_bytes: int) -> None:
    """Encrypt arrays (.npy, .npz, Parquet array columns) into a tensor dataset for on-device decryption."""
    store = unlock(keystore_dir)
    arrays = load_arrays(inputs)
    rows = len(next(iter(arrays.values()))) if arrays else None
    with progress_bar("encrypting tensors", rows, "rows") as advance:
        written = write_tensors(arrays, out, store, rows_per_shard=rows_per_shard, segment_bytes=segment_bytes,
                                progress=advance)
    info(f"encrypted {written.num_rows} rows of {len(arrays)} array(s) ({', '.join(arrays)}) into "
         f"{written.num_shards} shard(s) at {out} (dataset {written.dataset_id})")
