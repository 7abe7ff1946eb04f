"""Encrypted datasets: tabular (Parquet Modular Encryption) and tensor shards."""

from twofold.data.tabular import EncryptedDataset, FileEntry, VerifyReport, inspect

__all__ = ["EncryptedDataset", "FileEntry", "VerifyReport", "inspect"]
