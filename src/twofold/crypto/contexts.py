"""Key-wrapping contexts: ``<purpose>|<dataset id>``, bound as associated data to every wrapped key.

The dataset id inside the context is what a key broker's policy checks; because the context is authenticated
by the wrapping, a key of one dataset cannot be presented as a key of another.
"""

from __future__ import annotations

import re
import secrets

PURPOSES = ("parquet-kek", "manifest-mac", "tensor-key")
_DATASET_ID = re.compile(r"ds-[0-9a-f]{16}")


def key_context(purpose: str, dataset_id: str) -> bytes:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown key purpose {purpose!r}")
    return f"{purpose}|{dataset_id}".encode()


def new_dataset_id() -> str:
    """A fresh random dataset id (tabular and tensor datasets alike): ``ds-`` and 16 lowercase hex digits."""
    return "ds-" + secrets.token_hex(8)


def is_dataset_id(value: str) -> bool:
    """Whether ``value`` has the form of a dataset id (``ds-`` and 16 lowercase hex digits)."""
    return bool(_DATASET_ID.fullmatch(value))


def dataset_of(context: bytes) -> str | None:
    """The dataset id a context names, or None if it is not a well-formed twofold context."""
    try:
        purpose, dataset_id = context.decode("ascii").split("|")
    except (UnicodeDecodeError, ValueError):
        return None
    if purpose not in PURPOSES or not is_dataset_id(dataset_id):
        return None
    return dataset_id
