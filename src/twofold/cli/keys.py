"""``twofold keys``: create, list, rotate and retire the owner's master keys."""

from __future__ import annotations

import time
from pathlib import Path

import click

from twofold.cli.common import get_passphrase, info, keystore_option, unlock
from twofold.crypto.kdf import Argon2Params
from twofold.data import EncryptedDataset
from twofold.keys.keystore import Keystore, read_public


@click.group()
def keys() -> None:
    """Manage the owner's keystore."""


@keys.command("init")
@keystore_option
@click.option("--kdf-memory-mib", type=click.IntRange(8, 4096), default=64, show_default=True,
              help="Argon2id memory cost.")
def init(keystore_dir: Path, kdf_memory_mib: int) -> None:
    """Create a keystore with a first master key and an owner key pair."""
    store = Keystore.create(keystore_dir, get_passphrase(confirm=True), Argon2Params(memory_kib=kdf_memory_mib * 1024))
    info(f"created keystore {store.keystore_id} in {keystore_dir} (master key version {store.active_version})")


@keys.command("list")
@keystore_option
def list_keys(keystore_dir: Path) -> None:
    """List master-key versions (public facts only; no passphrase needed)."""
    doc = read_public(keystore_dir)
    click.echo(f"keystore {doc['id']}")
    for entry in doc["master_keys"]:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry["created"]))
        click.echo(f"  version {entry['version']:>3}  {entry['state']:<8}  created {created} UTC")


@keys.command("rotate")
@keystore_option
@click.option("--rewrap", "datasets", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Dataset to re-wrap under the new version (repeatable).")
def rotate(keystore_dir: Path, datasets: tuple[Path, ...]) -> None:
    """Add a new master-key version and optionally re-wrap datasets under it (no data is re-encrypted)."""
    store = unlock(keystore_dir)
    new = store.rotate()
    info(f"keystore {store.keystore_id}: master key version {new.version} is now active")
    _rewrap_all(store, datasets)


@keys.command("rewrap")
@keystore_option
@click.argument("datasets", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
def rewrap(keystore_dir: Path, datasets: tuple[Path, ...]) -> None:
    """Re-wrap datasets' key material under the active master key."""
    _rewrap_all(unlock(keystore_dir), datasets)


@keys.command("retire")
@keystore_option
@click.argument("version", type=int)
def retire(keystore_dir: Path, version: int) -> None:
    """Retire an old master-key version: datasets still wrapped under it no longer open."""
    store = unlock(keystore_dir)
    store.retire(version)
    info(f"keystore {store.keystore_id}: master key version {version} retired")


def _rewrap_all(store: Keystore, datasets: tuple[Path, ...]) -> None:
    for path in datasets:
        version = EncryptedDataset.open(path, store).rewrap()
        info(f"re-wrapped {path} under master key version {version}")
