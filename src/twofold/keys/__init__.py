"""Owner key custody: the passphrase-protected keystore and the Parquet KMS adapter."""

from twofold.keys.keystore import Keystore, MasterKeyInfo
from twofold.keys.wrapping import KeyWrapper

__all__ = ["KeyWrapper", "Keystore", "MasterKeyInfo"]
