"""The authenticated manifest of an encrypted dataset.

A manifest is JSON with three parts: ``manifest`` (the public body: ids, schema, per-file rows, sizes and
SHA-256), ``keys`` (the wrapped MAC key, re-wrapped on master-key rotation) and ``mac`` (HMAC-SHA256 of the
canonical body under the MAC key). Editing the body, or pairing it with files it does not list, is detected.
"""

from __future__ import annotations

import hmac
import json
import os
from hashlib import sha256
from typing import Any

from twofold.crypto.contexts import key_context
from twofold.errors import InputError, IntegrityError

FORMAT = "twofold-dataset"
FORMAT_VERSION = 1
MAC_DOMAIN = b"twofold-manifest-v1\x00"
TAIL_BYTES = 4096  # a file's last 4 KiB hold its encrypted footer's GCM tag and its unique AAD


def mac_context(dataset_id: str) -> bytes:
    """Associated data binding a wrapped MAC key to its dataset."""
    return key_context("manifest-mac", dataset_id)


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def new_mac_key() -> bytes:
    return os.urandom(32)


def compute_mac(mac_key: bytes, body: dict[str, Any]) -> str:
    return hmac.digest(mac_key, MAC_DOMAIN + canonical(body), sha256).hex()


def render(body: dict[str, Any], keys: dict[str, Any], mac: str) -> bytes:
    """Serialize a manifest document (pretty JSON, stable key order)."""
    return json.dumps({"manifest": body, "keys": keys, "mac": mac}, indent=2, sort_keys=True).encode() + b"\n"


def parse_public(raw: bytes) -> dict[str, Any]:
    """Parse a manifest *without* authenticating it; raises InputError if it is not one."""
    try:
        doc = json.loads(raw.decode("utf-8"))
        body = doc["manifest"]
        if body["format"] != FORMAT:
            raise ValueError("format")
        keys, mac = doc["keys"], doc["mac"]
        if not isinstance(keys, dict) or not isinstance(mac, str) or not isinstance(body["files"], list):
            raise ValueError("shape")
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise InputError("not a twofold dataset manifest") from None
    if body.get("format_version") != FORMAT_VERSION:
        raise InputError(f"dataset format version {body.get('format_version')} is not supported "
                         f"(this twofold reads version {FORMAT_VERSION})")
    return doc


def authenticate(doc: dict[str, Any], mac_key: bytes) -> dict[str, Any]:
    """Return the body if the MAC holds, else raise IntegrityError."""
    expected = compute_mac(mac_key, doc["manifest"])
    if not hmac.compare_digest(expected, str(doc["mac"])):
        raise IntegrityError()
    return doc["manifest"]


def check_identity(source: Any, size: int, tail_sha256: str) -> None:
    """Check that a readable, seekable file is the one a manifest entry names (its size and tail hash).

    The tail pins this exact file version; PME's AES-GCM then authenticates every page as it is decrypted, so
    the whole file need not be hashed on the read path. Leaves the file positioned at its start.
    """
    if source.size() != size:
        raise IntegrityError()
    source.seek(max(0, size - TAIL_BYTES))
    if sha256(source.read()).hexdigest() != tail_sha256:
        raise IntegrityError()
    source.seek(0)
