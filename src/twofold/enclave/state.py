"""What an enclave instance holds: its identity, its key-broker session, opened datasets and the plaintext cache."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

import pyarrow as pa

from twofold.crypto.mac import mac_context
from twofold.crypto.manifest import FileEntry, Manifest, check_identity
from twofold.crypto.pme import PmeSession, key_material_name
from twofold.crypto.release_rules import DatasetRule
from twofold.enclave.broker_client import BrokerSession
from twofold.enclave.cache import PartitionCache
from twofold.errors import ConfigError, IntegrityError


@dataclass
class OpenedDataset:
    """A dataset whose manifest this enclave authenticated itself, and what its owner lets leave for it."""

    manifest: Manifest
    pme: PmeSession
    mac_key: bytes
    rule: DatasetRule

    @property
    def dataset_id(self) -> str:
        return self.manifest.dataset_id


@dataclass
class EnclaveState:
    backend: str
    measurement: str
    broker: BrokerSession
    cache: PartitionCache
    datasets: dict[str, OpenedDataset] = field(default_factory=dict)
    derived: PartitionCache | None = None  # kernel working sets (feature matrices), same budget as the cache
    lock: threading.Lock = field(default_factory=threading.Lock)
    measured: frozenset[Path] = frozenset()  # the files of the measurement: the only twofold code allowed to load
    combined: dict[str, tuple[int, str, dict[str, Any]]] = field(default_factory=dict)  # see fit_combine

    def open_dataset(self, manifest_bytes: bytes) -> OpenedDataset:
        manifest = Manifest.from_bytes(manifest_bytes)
        release = self.broker.release([(manifest.wrapped_mac_key, mac_context(manifest.dataset_id))])
        mac_key, rule = release.keys[0], release.rules[manifest.dataset_id]
        opened = OpenedDataset(manifest.authenticate(mac_key), PmeSession(self.broker, manifest.dataset_id), mac_key,
                               rule)
        with self.lock:
            previous = self.datasets.get(manifest.dataset_id)
            self.datasets[manifest.dataset_id] = opened
        if previous is not None and previous.manifest.mac != manifest.mac:  # another version: drop the old one
            self.cache.drop(manifest.dataset_id)
            if self.derived is not None:
                self.derived.drop(manifest.dataset_id)
        return opened

    def refresh_rule(self, dataset_id: str) -> OpenedDataset:
        """Ask the key broker again for the dataset's rule (and MAC key): a fit or a prediction starts under the
        owner's policy as the broker holds it now, not as it was when the dataset was opened."""
        opened = self.dataset(dataset_id)
        release = self.broker.release([(opened.manifest.wrapped_mac_key, mac_context(dataset_id))])
        if release.keys[0] != opened.mac_key:
            raise IntegrityError()
        opened.rule = release.rules[dataset_id]
        return opened

    def dataset(self, dataset_id: str) -> OpenedDataset:
        opened = self.datasets.get(dataset_id)
        if opened is None:
            raise ConfigError(f"dataset {dataset_id} is not open in this enclave")
        return opened

    def load_partition(self, dataset_id: str, index: int, data: bytes, key_material: bytes) -> pa.Table:
        """Authenticate and decrypt one partition, sent as bytes, into the cache (or return the cached one)."""
        cached = self.cache.get((dataset_id, index))
        if cached is not None:
            return cached
        entry = self._entry(dataset_id, index)
        if len(data) != entry.bytes or sha256(data).hexdigest() != entry.sha256:
            raise IntegrityError()
        return self._decrypt(dataset_id, index, entry, data, key_material)

    def load_partition_from(self, dataset_id: str, index: int, directory: str) -> pa.Table:
        """Read a partition's ciphertext from storage itself (the untrusted side names only the directory).

        The file name comes from the authenticated manifest. The file is read once into this process's private
        memory (never memory-mapped, so storage cannot change it under the decryption); then the size and the
        tail hash (the footer's GCM tag and the file's unique AAD) pin this exact file, and PME's AES-GCM
        authenticates every page as it decrypts.
        """
        cached = self.cache.get((dataset_id, index))
        if cached is not None:
            return cached
        entry = self._entry(dataset_id, index)
        path = Path(directory) / entry.name
        try:
            source = pa.BufferReader(_read_private(path, entry.bytes))
            key_material = Path(directory, key_material_name(entry.name)).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise IntegrityError() from None
        check_identity(source, entry.bytes, entry.tail_sha256)
        return self._decrypt(dataset_id, index, entry, source, key_material)

    def _entry(self, dataset_id: str, index: int) -> FileEntry:
        files = self.dataset(dataset_id).manifest.files
        if not 0 <= index < len(files):
            raise ConfigError(f"dataset {dataset_id} has no partition {index}")
        return files[index]

    def _decrypt(self, dataset_id: str, index: int, entry: FileEntry, data: Any, key_material: bytes) -> pa.Table:
        table = self.dataset(dataset_id).pme.read_file(data, entry.name, key_material)
        if table.num_rows != entry.rows:
            raise IntegrityError()
        self.cache.put((dataset_id, index), table, table.nbytes)
        return table

    def partition(self, dataset_id: str, index: int) -> pa.Table:
        """A partition already in the cache; the caller must (re)load it otherwise."""
        table = self.cache.get((dataset_id, index))
        if table is None:
            raise ConfigError(f"partition {index} of {dataset_id} is not loaded")
        return table


def _read_private(path: Path, expected: int) -> bytes:
    """A file's bytes, read into private memory; a file longer than the manifest says is refused unread."""
    with open(path, "rb") as handle:
        data = handle.read(expected + 1)
    if len(data) != expected:
        raise IntegrityError()
    return data
