"""The data owner's keystore: versioned 256-bit master keys sealed under a passphrase.

On disk it is one JSON document (mode 0600, in a 0700 directory). A key-encryption key is derived from the
passphrase with Argon2id; each master key and the owner's X25519 private key are sealed with AES-256-GCM under it,
and the whole document is authenticated with HMAC-SHA256 under a subkey, so a wrong passphrase or an edited file
is detected before anything is used. Only the active version wraps new keys; older versions still unwrap until
they are retired.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hmac
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from twofold.crypto import aead
from twofold.crypto.broker_identity import BrokerIdentity
from twofold.crypto.kdf import Argon2Params, derive_key, new_salt
from twofold.errors import ConfigError, IntegrityError, KeyAccessError
from twofold.fsutil import make_private_dir, write_private
from twofold.keys.wrapping import WrappedKey

KEYSTORE_FILE = "keystore.json"
FORMAT = "twofold-keystore"
FORMAT_VERSION = 1
PASSPHRASE_ENV = "TWOFOLD_PASSPHRASE"
MIN_PASSPHRASE_CHARS = 8


@dataclass(frozen=True)
class MasterKeyInfo:
    """Public facts about one master-key version."""

    version: int
    created: float
    state: str  # "active" | "previous" | "retired"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _subkey(kek: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=b"twofold keystore " + label).derive(kek)


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


class Keystore:
    """An unlocked keystore. Create with :meth:`create`, open with :meth:`open`."""

    def __init__(self, directory: Path, doc: dict[str, Any], kek: bytes) -> None:
        self._dir = Path(directory)
        self._doc = doc
        self._seal_key = _subkey(kek, b"seal")
        self._mac_key = _subkey(kek, b"mac")
        self._broker_seed = _subkey(kek, b"broker-signing")
        self._master: dict[int, bytes] = {}
        self._load_master_keys()

    def _load_master_keys(self) -> None:
        for entry in self._doc["master_keys"]:
            aad = self._aad("master", entry["version"])
            self._master[entry["version"]] = aead.open_sealed(self._seal_key, _unb64(entry["sealed"]), aad)

    # -- construction -------------------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path | str, passphrase: str, params: Argon2Params | None = None) -> Keystore:
        """Create a new keystore with master-key version 1 and an owner X25519 key pair."""
        directory = Path(directory)
        if (directory / KEYSTORE_FILE).exists():
            raise ConfigError(f"a keystore already exists in {directory}")
        if len(passphrase) < MIN_PASSPHRASE_CHARS:
            raise ConfigError(f"the passphrase must have at least {MIN_PASSPHRASE_CHARS} characters")
        params = params or Argon2Params()
        salt = new_salt()
        kek = derive_key(passphrase, salt, params)
        keystore_id = "ks-" + secrets.token_hex(8)
        doc: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "id": keystore_id,
            "created": time.time(),
            "kdf": {"name": "argon2id", "salt": _b64(salt), "params": params.to_dict()},
            "master_keys": [],
            "owner": {},
        }
        store = cls(directory, doc, kek)
        store._add_master_key()
        owner = X25519PrivateKey.generate()
        raw_private = owner.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        doc["owner"] = {
            "x25519_public": _b64(owner.public_key().public_bytes_raw()),
            "x25519_private_sealed": _b64(aead.seal(store._seal_key, raw_private, store._aad("owner", 0))),
        }
        make_private_dir(directory)
        store._save()
        return store

    @classmethod
    def open(cls, directory: Path | str, passphrase: str) -> Keystore:
        """Unlock an existing keystore; a wrong passphrase raises KeyAccessError and changes nothing."""
        directory = Path(directory)
        doc = read_public(directory)
        try:
            params = Argon2Params.from_dict(doc["kdf"]["params"])
            salt = _unb64(doc["kdf"]["salt"])
            mac = _unb64(doc["mac"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{directory / KEYSTORE_FILE} is not a valid twofold keystore") from None
        kek = derive_key(passphrase, salt, params)
        body = {k: v for k, v in doc.items() if k != "mac"}
        if not hmac.compare_digest(mac, hmac.digest(_subkey(kek, b"mac"), _canonical(body), sha256)):
            raise KeyAccessError(f"wrong passphrase for keystore {directory} (or the keystore file was modified)")
        try:
            return cls(directory, body, kek)
        except IntegrityError:
            raise KeyAccessError(f"keystore {directory} is corrupted") from None

    # -- public facts ---------------------------------------------------------------------------------------

    @property
    def keystore_id(self) -> str:
        return self._doc["id"]

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def active_version(self) -> int:
        return max(e["version"] for e in self._doc["master_keys"] if e["state"] == "active")

    def versions(self) -> list[MasterKeyInfo]:
        return [MasterKeyInfo(e["version"], e["created"], e["state"]) for e in self._doc["master_keys"]]

    @property
    def owner_public_key(self) -> X25519PublicKey:
        return X25519PublicKey.from_public_bytes(_unb64(self._doc["owner"]["x25519_public"]))

    def owner_private_key(self) -> X25519PrivateKey:
        """The owner's X25519 private key, used to open models and results sealed to the owner."""
        raw = aead.open_sealed(self._seal_key, _unb64(self._doc["owner"]["x25519_private_sealed"]),
                               self._aad("owner", 0))
        return X25519PrivateKey.from_private_bytes(raw)

    def broker_signing_key(self) -> Ed25519PrivateKey:
        """The key broker's Ed25519 signing key: derived from the passphrase, so stable across restarts."""
        return Ed25519PrivateKey.from_private_bytes(self._broker_seed)

    def broker_identity(self, tls_ca: str = "") -> BrokerIdentity:
        """The identity an enclave pins for this keystore's broker (``tls_ca``: PEM of an https broker's CA)."""
        return BrokerIdentity(self.keystore_id, self.broker_signing_key().public_key().public_bytes_raw(),
                              self.owner_public_key.public_bytes_raw(), tls_ca)

    # -- KeyWrapper -----------------------------------------------------------------------------------------

    def wrap(self, key: bytes, context: bytes) -> str:
        """Seal ``key`` under the active master key, bound to ``context``."""
        version = self.active_version
        header = WrappedKey(self.keystore_id, version, b"")
        sealed = aead.seal(self._master[version], key, header.aad(context))
        return WrappedKey(self.keystore_id, version, sealed).encode()

    def unwrap(self, wrapped: str, context: bytes) -> bytes:
        """Open a wrapped key; raises KeyAccessError for another keystore or a retired version."""
        parsed = WrappedKey.decode(wrapped)
        if parsed.keystore_id != self.keystore_id:
            raise KeyAccessError(
                f"this key was wrapped by keystore {parsed.keystore_id}, not by {self.keystore_id}"
            )
        state = self._state(parsed.version)
        if state is None:
            raise IntegrityError()
        if state == "retired":
            raise KeyAccessError(f"master key version {parsed.version} is retired; re-wrap the dataset first")
        return aead.open_sealed(self._master[parsed.version], parsed.sealed, parsed.aad(context))

    # -- lifecycle ------------------------------------------------------------------------------------------

    def rotate(self) -> MasterKeyInfo:
        """Add a new active master-key version; earlier versions keep unwrapping until retired."""
        with self._locked():
            for entry in self._doc["master_keys"]:
                if entry["state"] == "active":
                    entry["state"] = "previous"
            info = self._add_master_key()
            self._save()
        return info

    def retire(self, version: int) -> None:
        """Stop a previous version from unwrapping; the active version cannot be retired."""
        with self._locked():
            state = self._state(version)
            if state is None:
                raise ConfigError(f"keystore {self.keystore_id} has no master key version {version}")
            if state == "active":
                raise ConfigError("the active master key cannot be retired; rotate first")
            for entry in self._doc["master_keys"]:
                if entry["version"] == version:
                    entry["state"] = "retired"
            self._save()

    # -- internals ------------------------------------------------------------------------------------------

    def _aad(self, kind: str, version: int) -> bytes:
        return f"{FORMAT}|{self._doc['id']}|{kind}|{version}".encode()

    def _state(self, version: int) -> str | None:
        for entry in self._doc["master_keys"]:
            if entry["version"] == version:
                return entry["state"]
        return None

    def _add_master_key(self) -> MasterKeyInfo:
        version = 1 + max((e["version"] for e in self._doc["master_keys"]), default=0)
        key = aead.new_key()
        entry = {
            "version": version,
            "created": time.time(),
            "state": "active",
            "sealed": _b64(aead.seal(self._seal_key, key, self._aad("master", version))),
        }
        self._doc["master_keys"].append(entry)
        self._master[version] = key
        return MasterKeyInfo(version, entry["created"], "active")

    def _save(self) -> None:
        doc = dict(self._doc)
        doc["mac"] = _b64(hmac.digest(self._mac_key, _canonical(self._doc), sha256))
        write_private(self._dir / KEYSTORE_FILE, json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n")

    def _reload(self) -> None:
        """Re-read the document (another process may have changed it) and re-check its MAC."""
        doc = read_public(self._dir)
        body = {k: v for k, v in doc.items() if k != "mac"}
        expected = hmac.digest(self._mac_key, _canonical(body), sha256)
        if not hmac.compare_digest(_unb64(str(doc.get("mac", ""))), expected):
            raise KeyAccessError(f"keystore {self._dir} was modified by someone without the passphrase")
        self._doc = body
        self._load_master_keys()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self._dir / ".lock"
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._reload()
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def read_public(directory: Path | str) -> dict[str, Any]:
    """The keystore document without unlocking it (ids, versions, public key; no secrets in the clear)."""
    path = Path(directory) / KEYSTORE_FILE
    try:
        doc = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no keystore in {directory}: create one with `twofold keys init --keystore DIR`") \
            from None
    except (OSError, ValueError):
        raise ConfigError(f"{path} is not a valid twofold keystore") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a valid twofold keystore")
    if doc.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path} has keystore format version {doc.get('format_version')}; this twofold "
                          f"reads version {FORMAT_VERSION}")
    return doc
