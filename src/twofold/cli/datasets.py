"""``twofold encrypt | inspect | verify | decrypt``: encrypted tabular datasets."""

from __future__ import annotations

import json
from pathlib import Path

import click

from twofold.cli.common import info, keystore_option, progress_bar, unlock
from twofold.data import EncryptedDataset, inspect
from twofold.data.export import export_dataset
from twofold.data.sources import open_table_source
from twofold.data.tabular import DEFAULT_ROWS_PER_FILE


@click.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="New dataset directory.")
@keystore_option
@click.option("--label", default=None, help="Name of the label column.")
@click.option("--rows-per-file", type=click.IntRange(min=1), default=DEFAULT_ROWS_PER_FILE, show_default=True,
              help="Rows per encrypted file (one file = one distributed partition).")
def encrypt(input_path: Path, out: Path, keystore_dir: Path, label: str | None, rows_per_file: int) -> None:
    """Encrypt a CSV or Parquet file into an encrypted dataset, streaming in bounded memory."""
    store = unlock(keystore_dir)
    reader, _size = open_table_source(input_path)
    with progress_bar(f"encrypting {input_path.name}", None, "rows") as advance:
        dataset = EncryptedDataset.write(reader, out, store, label=label, rows_per_file=rows_per_file,
                                         progress=advance)
    info(f"encrypted {dataset.num_rows} rows into {len(dataset.files)} file(s) at {out} "
         f"(dataset {dataset.dataset_id})")


@click.command("inspect")
@click.argument("path", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect_cmd(path: Path, as_json: bool) -> None:
    """Show a dataset's public metadata (no key needed; not authenticated, use verify for that)."""
    meta = inspect(path)
    if as_json:
        click.echo(json.dumps(meta, indent=2))
        return
    click.echo(f"dataset      {meta['dataset_id']} ({meta['kind']})")
    click.echo(f"rows         {meta['num_rows']} in {meta['num_files']} file(s), {meta['bytes']} bytes")
    click.echo(f"label        {meta['label'] or '-'}")
    click.echo(f"encryption   {meta['encryption']['algorithm']}, encrypted footer, "
               f"{meta['encryption']['data_key_bits']}-bit data keys, double wrapping")
    click.echo(f"keys         keystore {meta['keystore_id']}, master key version {meta['master_key_version']}")
    click.echo("columns")
    for column in meta["columns"]:
        click.echo(f"  {column['name']}: {column['type']}")
    click.echo("(unauthenticated view: run `twofold verify` to check it)")


@click.command()
@click.argument("path", type=click.Path(file_okay=False, path_type=Path))
@keystore_option
def verify(path: Path, keystore_dir: Path) -> None:
    """Authenticate the manifest and every file of a dataset; exit 0 only if all hold."""
    dataset = EncryptedDataset.open(path, unlock(keystore_dir))
    with progress_bar("verifying", sum(f.bytes for f in dataset.files), "bytes") as advance:
        report = dataset.verify(progress=advance)
    click.echo(f"ok: dataset {report.dataset_id}: manifest and {report.files} file(s) authenticated, "
               f"{report.rows} rows")


@click.command()
@click.argument("path", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output file: .parquet or .csv (created with mode 0600).")
@keystore_option
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
def decrypt(path: Path, out: Path, keystore_dir: Path, force: bool) -> None:
    """Decrypt a dataset to a Parquet or CSV file."""
    dataset = EncryptedDataset.open(path, unlock(keystore_dir))
    with progress_bar("decrypting", dataset.num_rows, "rows") as advance:
        rows = export_dataset(dataset, out, overwrite=force, progress=advance)
    info(f"decrypted {rows} rows to {out}")
