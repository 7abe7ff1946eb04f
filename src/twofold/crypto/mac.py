"""The manifest MAC: HMAC-SHA256 over a document's canonical JSON, under a random per-dataset key.

The key is wrapped by the owner's master key under ``mac_context(dataset_id)``; the same key also derives the
keys of model files and sealed job results (``twofold.crypto.sealing``). Every mismatch is the opaque
IntegrityError.
"""

from __future__ import annotations

import hmac
import json
import os
from hashlib import sha256
from typing import Any

from twofold.crypto.contexts import key_context
from twofold.errors import IntegrityError

MAC_DOMAIN = b"twofold-manifest-v1\x00"
MAC_KEY_BYTES = 32


def canonical(obj: Any) -> bytes:
    """The canonical JSON of ``obj`` (sorted keys, no spaces, ASCII): what a tag covers."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def mac_context(dataset_id: str) -> bytes:
    """Associated data binding a wrapped MAC key to its dataset."""
    return key_context("manifest-mac", dataset_id)


def new_mac_key() -> bytes:
    return os.urandom(MAC_KEY_BYTES)


def compute_mac(mac_key: bytes, body: Any) -> str:
    """The hex MAC of a JSON value."""
    return hmac.digest(mac_key, MAC_DOMAIN + canonical(body), sha256).hex()


def verify_mac(mac_key: bytes, body: Any, mac: str) -> None:
    """Raise IntegrityError unless ``mac`` is the MAC of ``body`` under ``mac_key``."""
    check_tag(compute_mac(mac_key, body), mac)


def check_tag(expected: str, given: str) -> None:
    """Raise IntegrityError unless a stored tag equals the expected one (constant time, any string accepted)."""
    if not hmac.compare_digest(expected.encode("ascii"), given.encode("utf-8", "surrogatepass")):
        raise IntegrityError()
