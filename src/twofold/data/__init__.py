"""Encrypted datasets: tabular (Parquet Modular Encryption) and tensor shards."""

from twofold.crypto.manifest import FileEntry, Manifest
from twofold.data.tabular import EncryptedDataset, VerifyReport, inspect, read_manifest

__all__ = ["EncryptedDataset", "FileEntry", "Manifest", "VerifyReport", "inspect", "read_manifest"]
