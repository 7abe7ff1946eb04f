"""Encrypted tabular datasets: a directory of PME-encrypted Parquet files plus an authenticated manifest.

Layout::

    DIR/manifest.json                              authenticated: ids, schema, label, per-file rows/bytes/SHA-256
    DIR/part-00000.parquet                         one distributed partition, PME AES_GCM_V1, encrypted footer
    DIR/_KEY_MATERIAL_FOR_part-00000.parquet.json  wrapped data keys (re-wrapped on master-key rotation)

A dataset is written into a hidden sibling directory and renamed into place only when complete, so an interrupted
write never leaves a directory that looks like a dataset.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

import pyarrow as pa

from twofold.crypto.contexts import new_dataset_id
from twofold.crypto.mac import mac_context, new_mac_key
from twofold.crypto.manifest import TAIL_BYTES, Column, Encryption, FileEntry, Manifest, Schema, check_identity
from twofold.crypto.pme import ALGORITHM, DATA_KEY_BITS, PmeSession, key_material_name
from twofold.data.sources import open_table_source
from twofold.errors import ConfigError, InputError, IntegrityError
from twofold.fsutil import write_private
from twofold.keys.wrapping import KeyWrapper, WrappedKey

MANIFEST = "manifest.json"
DEFAULT_ROWS_PER_FILE = 100_000
WRITE_CHUNK_ROWS = 131_072
Progress = Callable[[int], None]


@dataclass(frozen=True)
class VerifyReport:
    dataset_id: str
    files: int
    rows: int
    bytes: int


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def schema_to_b64(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def schema_from_b64(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


class EncryptedDataset:
    """An opened, manifest-authenticated encrypted dataset; partitions are authenticated as they are read."""

    def __init__(self, path: Path, manifest: Manifest, pme: PmeSession, wrapper: KeyWrapper) -> None:
        self.path = path
        self.manifest = manifest  # authenticated (public metadata)
        self._pme = pme
        self._wrapper = wrapper

    # -- public metadata ------------------------------------------------------------------------------------

    @property
    def files(self) -> tuple[FileEntry, ...]:
        return self.manifest.files

    @property
    def dataset_id(self) -> str:
        return self.manifest.dataset_id

    @property
    def schema(self) -> pa.Schema:
        return schema_from_b64(self.manifest.schema.arrow)

    @property
    def label(self) -> str | None:
        return self.manifest.label

    @property
    def num_rows(self) -> int:
        return self.manifest.num_rows

    # -- writing --------------------------------------------------------------------------------------------

    @classmethod
    def write(cls, source: Path | str | pa.Table | pa.RecordBatchReader, out: Path | str,
              wrapper: KeyWrapper, *, label: str | None = None, rows_per_file: int = DEFAULT_ROWS_PER_FILE,
              progress: Progress | None = None, metadata: dict[str, Any] | None = None) -> EncryptedDataset:
        """Encrypt a CSV/Parquet file, table or batch stream into a new dataset directory ``out``."""
        out = Path(out)
        if rows_per_file < 1:
            raise ConfigError("rows per file must be at least 1")
        if out.exists():
            raise ConfigError(f"output {out} already exists; choose a new directory")
        if not out.parent.is_dir():
            raise ConfigError(f"parent directory {out.parent} does not exist")
        reader = _as_reader(source)
        if label is not None and label not in reader.schema.names:
            raise InputError(f"label column {label!r} is not in the input (columns: {len(reader.schema)})")
        staging = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
        staging.mkdir(mode=0o700)
        dataset_id = new_dataset_id()
        try:
            manifest = _write_parts(reader, staging, wrapper, dataset_id, label, rows_per_file, progress,
                                    metadata or {})
            os.replace(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return cls(out, manifest, PmeSession(wrapper, dataset_id), wrapper)

    # -- opening --------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path | str, wrapper: KeyWrapper) -> EncryptedDataset:
        """Open a dataset: authenticate the manifest and check that the directory holds exactly its files."""
        path = Path(path)
        manifest = read_manifest(path)
        mac_key = wrapper.unwrap(manifest.wrapped_mac_key, mac_context(manifest.dataset_id))
        dataset = cls(path, manifest.authenticate(mac_key), PmeSession(wrapper, manifest.dataset_id), wrapper)
        dataset._check_listing()
        return dataset

    def _check_listing(self) -> None:
        expected = {MANIFEST}
        for entry in self.files:
            expected |= {entry.name, key_material_name(entry.name)}
        present = {p.name for p in self.path.iterdir()}
        if present != expected:
            raise IntegrityError()
        for entry in self.files:
            if (self.path / entry.name).stat().st_size != entry.bytes:
                raise IntegrityError()

    # -- reading --------------------------------------------------------------------------------------------

    def file_bytes(self, index: int) -> tuple[bytes, bytes]:
        """A partition's ciphertext and key material, after checking the ciphertext against the manifest."""
        entry = self.files[index]
        try:
            data = (self.path / entry.name).read_bytes()
            key_material = (self.path / key_material_name(entry.name)).read_bytes()
        except FileNotFoundError:
            raise IntegrityError() from None
        if sha256(data).hexdigest() != entry.sha256:
            raise IntegrityError()
        return data, key_material

    def file_source(self, index: int) -> tuple[pa.NativeFile, bytes]:
        """A partition opened for reading after its size and tail hash match the manifest.

        The tail holds the encrypted footer's GCM tag and the file's unique AAD, so it identifies this exact
        file; PME's AES-GCM then authenticates every page as it is read (bound to that footer and to its
        position), so the whole file need not be hashed on the read path. :meth:`verify` hashes everything.
        """
        entry = self.files[index]
        try:
            source = pa.memory_map(str(self.path / entry.name))
            key_material = (self.path / key_material_name(entry.name)).read_bytes()
        except FileNotFoundError:
            raise IntegrityError() from None
        check_identity(source, entry.bytes, entry.tail_sha256)
        return source, key_material

    def read_file(self, index: int, columns: list[str] | None = None) -> pa.Table:
        """Decrypt one partition (authenticated, row count checked)."""
        source, key_material = self.file_source(index)
        table = self._pme.read_file(source, self.files[index].name, key_material, columns)
        if table.num_rows != self.files[index].rows:
            raise IntegrityError()
        return table

    def read_table(self, columns: list[str] | None = None) -> pa.Table:
        """Decrypt the whole dataset into one table."""
        tables = [self.read_file(i, columns) for i in range(len(self.files))]
        if not tables:
            return self.schema.empty_table() if columns is None else self.schema.empty_table().select(columns)
        return pa.concat_tables(tables)

    def iter_batches(self, batch_size: int = 65_536, columns: list[str] | None = None
                     ) -> Iterator[pa.RecordBatch]:
        """Stream decrypted batches, partition by partition, in manifest order."""
        for index, entry in enumerate(self.files):
            source, key_material = self.file_source(index)
            rows = 0
            for batch in self._pme.iter_file(source, entry.name, key_material, batch_size, columns):
                rows += batch.num_rows
                yield batch
            if rows != entry.rows:
                raise IntegrityError()

    def verify(self, progress: Progress | None = None) -> VerifyReport:
        """Authenticate every file completely (hash, every PME tag, row counts)."""
        total_bytes = 0
        for index, entry in enumerate(self.files):
            data, key_material = self.file_bytes(index)
            if self._pme.read_file(data, entry.name, key_material).num_rows != entry.rows:
                raise IntegrityError()
            total_bytes += entry.bytes
            if progress:
                progress(entry.bytes)
        return VerifyReport(self.dataset_id, len(self.files), self.num_rows, total_bytes)

    # -- key rotation ---------------------------------------------------------------------------------------

    def rewrap(self) -> int:
        """Re-wrap every key of this dataset under the wrapper's active master key; data files are untouched.

        Returns the master-key version now in use.
        """
        for entry in self.files:
            km_path = self.path / key_material_name(entry.name)
            write_private(km_path, self._pme.rewrap(entry.name, km_path.read_bytes()))
        context = mac_context(self.dataset_id)
        mac_key = self._wrapper.unwrap(self.manifest.wrapped_mac_key, context)
        self.manifest = self.manifest.with_mac_key(self._wrapper.keystore_id, self._wrapper.wrap(mac_key, context))
        write_private(self.path / MANIFEST, self.manifest.to_bytes())
        return WrappedKey.decode(self.manifest.wrapped_mac_key).version


def read_manifest(path: Path) -> Manifest:
    """The manifest of a dataset directory, parsed but not authenticated."""
    if not path.is_dir():
        raise InputError(f"{path} is not a dataset directory")
    try:
        raw = (path / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path} has no {MANIFEST}: not a twofold dataset, or an incomplete one") from None
    return Manifest.from_bytes(raw)


def inspect(path: Path | str) -> dict[str, Any]:
    """Public metadata of a dataset, read without any key and NOT authenticated (use verify for that)."""
    manifest = read_manifest(Path(path))
    wrapped = WrappedKey.decode(manifest.wrapped_mac_key)
    return {
        "dataset_id": manifest.dataset_id,
        "created": manifest.created,
        "kind": manifest.kind,
        "num_rows": manifest.num_rows,
        "num_files": len(manifest.files),
        "bytes": manifest.total_bytes,
        "label": manifest.label,
        "columns": [dataclasses.asdict(c) for c in manifest.schema.columns],
        "encryption": dataclasses.asdict(manifest.encryption),
        "keystore_id": wrapped.keystore_id,
        "master_key_version": wrapped.version,
        "metadata": dict(manifest.metadata),
        "authenticated": False,
    }


# -- writing internals ----------------------------------------------------------------------------------------


def _as_reader(source: Path | str | pa.Table | pa.RecordBatchReader) -> pa.RecordBatchReader:
    if isinstance(source, pa.RecordBatchReader):
        return source
    if isinstance(source, pa.Table):
        return pa.RecordBatchReader.from_batches(source.schema, source.to_batches())
    reader, _ = open_table_source(source)
    return reader


class _PartWriter:
    """Writes consecutive encrypted partitions of at most ``rows_per_file`` rows."""

    def __init__(self, staging: Path, pme: PmeSession, schema: pa.Schema, rows_per_file: int) -> None:
        self.staging, self.pme, self.schema, self.rows_per_file = staging, pme, schema, rows_per_file
        self.entries: list[FileEntry] = []
        self._writer = None
        self._key_material: dict[str, bytes] = {}
        self._rows = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0

    def add(self, batch: pa.RecordBatch) -> None:
        while batch.num_rows:
            room = self.rows_per_file - self._rows - self._pending_rows
            head, batch = batch.slice(0, room), batch.slice(room)
            self._pending.append(head)
            self._pending_rows += head.num_rows
            if self._pending_rows >= WRITE_CHUNK_ROWS or self._rows + self._pending_rows == self.rows_per_file:
                self._flush()
            if self._rows == self.rows_per_file:
                self._close_part()

    def finish(self) -> list[FileEntry]:
        self._flush()
        if self._writer is not None:
            self._close_part()
        return self.entries

    def _flush(self) -> None:
        if not self._pending_rows:
            return
        if self._writer is None:
            name = part_name(len(self.entries))
            sink = open(self.staging / name, "xb")  # noqa: SIM115 - closed in _close_part
            self._writer, self._key_material = self.pme.writer(sink, name, self.schema)
            self._sink = sink
        self._writer.write_table(pa.Table.from_batches(self._pending, self.schema))
        self._rows += self._pending_rows
        self._pending, self._pending_rows = [], 0

    def _close_part(self) -> None:
        name = part_name(len(self.entries))
        self._writer.close()
        self._sink.close()
        path = self.staging / name
        os.chmod(path, 0o600)
        write_private(self.staging / key_material_name(name), self._key_material[key_material_name(name)])
        digest = sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
            size = handle.tell()
            handle.seek(max(0, size - TAIL_BYTES))
            tail = sha256(handle.read()).hexdigest()
        self.entries.append(FileEntry(name, self._rows, size, digest.hexdigest(), tail))
        self._writer, self._rows = None, 0


def _write_parts(reader: pa.RecordBatchReader, staging: Path, wrapper: KeyWrapper, dataset_id: str,
                 label: str | None, rows_per_file: int, progress: Progress | None,
                 metadata: dict[str, Any]) -> Manifest:
    schema = reader.schema
    parts = _PartWriter(staging, PmeSession(wrapper, dataset_id), schema, rows_per_file)
    for batch in reader:
        parts.add(batch)
        if progress:
            progress(batch.num_rows)
    entries = parts.finish()
    num_rows = sum(e.rows for e in entries)
    if num_rows == 0:
        raise InputError("the input has no data rows")
    mac_key = new_mac_key()
    manifest = Manifest(
        dataset_id=dataset_id,
        created=time.time(),
        label=label,
        num_rows=num_rows,
        schema=Schema(tuple(Column(f.name, str(f.type)) for f in schema), schema_to_b64(schema)),
        encryption=Encryption(scheme="parquet-modular-encryption", algorithm=ALGORITHM, footer="encrypted",
                              data_key_bits=DATA_KEY_BITS, double_wrapping=True, key_material="external",
                              master_key_id=dataset_id),
        files=tuple(entries),
        kms_instance_id=wrapper.keystore_id,
        wrapped_mac_key=wrapper.wrap(mac_key, mac_context(dataset_id)),
        metadata=dict(metadata),
    ).signed(mac_key)
    write_private(staging / MANIFEST, manifest.to_bytes())
    return manifest
