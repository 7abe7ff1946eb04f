"""Passphrase-based key derivation with Argon2id (memory-hard) from ``cryptography``."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

SALT_BYTES = 16


@dataclass(frozen=True)
class Argon2Params:
    """Argon2id cost parameters, stored beside the salt so a keystore can be reopened."""

    memory_kib: int = 64 * 1024
    iterations: int = 3
    lanes: int = 4

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> Argon2Params:
        params = cls(int(data["memory_kib"]), int(data["iterations"]), int(data["lanes"]))
        if params.memory_kib < 8 * params.lanes or params.iterations < 1 or params.lanes < 1:
            raise ValueError("invalid Argon2id parameters")
        return params


def new_salt() -> bytes:
    return os.urandom(SALT_BYTES)


def derive_key(passphrase: str, salt: bytes, params: Argon2Params, length: int = 32) -> bytes:
    """Derive a key-encryption key from a passphrase."""
    kdf = Argon2id(
        salt=salt,
        length=length,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_kib,
    )
    return kdf.derive(passphrase.encode("utf-8"))
