"""The manifest of an encrypted tabular dataset (format version 1), parsed once into frozen dataclasses.

A manifest is a :class:`~twofold.crypto.document.Document`: the public body (ids, schema, label, per-file rows,
sizes and SHA-256), the wrapped MAC key (re-wrapped on master-key rotation) and the MAC of the canonical body
(:mod:`twofold.crypto.mac`). Editing the body, or pairing it with files it does not list, is detected.

Parsing is strict: every object must have exactly its fields with their JSON types, so that :meth:`Manifest.body`
gives back exactly the body that was stored and the MAC covers what was read. The module is pure (no I/O): the
enclave authenticates manifests with it, and ``twofold.data.tabular`` reads and writes them with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any, ClassVar

from twofold.crypto.document import Document, DocumentFormat
from twofold.crypto.mac import compute_mac, verify_mac
from twofold.errors import IntegrityError

DATASET = DocumentFormat("twofold-dataset", 1, "dataset", part="manifest", key="mac_key", tag="mac")
TAIL_BYTES = 4096  # a file's last 4 KiB hold its encrypted footer's GCM tag and its unique AAD


@dataclass(frozen=True)
class FileEntry:
    """One partition as the manifest lists it."""

    name: str
    rows: int
    bytes: int
    sha256: str
    tail_sha256: str  # of the last TAIL_BYTES: pins this exact file version


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # the Arrow type as text, e.g. "int64"


@dataclass(frozen=True)
class Schema:
    columns: tuple[Column, ...]
    arrow: str  # the Arrow IPC schema, base64


@dataclass(frozen=True)
class Encryption:
    """How the files are encrypted (Parquet Modular Encryption); public facts, no keys."""

    scheme: str
    algorithm: str
    footer: str
    data_key_bits: int
    double_wrapping: bool
    key_material: str
    master_key_id: str


@dataclass(frozen=True)
class Manifest:
    """A manifest document as read: public and NOT authenticated until :meth:`authenticate`."""

    kind: ClassVar[str] = "table"

    dataset_id: str
    created: float
    label: str | None
    num_rows: int
    schema: Schema
    encryption: Encryption
    files: tuple[FileEntry, ...]
    kms_instance_id: str
    wrapped_mac_key: str  # a wrapped key (tfk1...), not a secret
    mac: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)  # the owner's JSON object, as written

    # -- the JSON form ----------------------------------------------------------------------------------------

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        """Parse a manifest *without* authenticating it; raises InputError if it is not one."""
        document = DATASET.parse(raw)
        try:
            return cls.from_document(document)
        except (KeyError, TypeError, ValueError):
            raise DATASET.malformed() from None

    @classmethod
    def from_document(cls, document: Document) -> Manifest:
        """The typed manifest of a parsed document; raises KeyError, TypeError or ValueError if malformed."""
        body = _exact(document.body, _BODY)
        if body["kind"] != cls.kind:
            raise ValueError("kind")
        schema = _exact(body["schema"], {"columns": list, "arrow": str})
        return cls(
            dataset_id=body["dataset_id"],
            created=body["created"],
            label=body["label"],
            num_rows=body["num_rows"],
            schema=Schema(tuple(Column(**_exact(c, _COLUMN)) for c in schema["columns"]), schema["arrow"]),
            encryption=Encryption(**_exact(body["encryption"], _ENCRYPTION)),
            files=tuple(FileEntry(**_exact(f, _FILE)) for f in body["files"]),
            kms_instance_id=document.kms_instance_id,
            wrapped_mac_key=document.wrapped_key,
            mac=document.tag,
            metadata=body["metadata"],
        )

    def body(self) -> dict[str, Any]:
        """The body exactly as stored: what the MAC covers."""
        return {
            "format": DATASET.name,
            "format_version": DATASET.version,
            "dataset_id": self.dataset_id,
            "created": self.created,
            "kind": self.kind,
            "label": self.label,
            "num_rows": self.num_rows,
            "schema": {"columns": [dataclasses.asdict(c) for c in self.schema.columns], "arrow": self.schema.arrow},
            "encryption": dataclasses.asdict(self.encryption),
            "files": [dataclasses.asdict(f) for f in self.files],
            "metadata": dict(self.metadata),
        }

    def document(self) -> Document:
        return Document(self.body(), self.kms_instance_id, self.wrapped_mac_key, self.mac)

    def to_bytes(self) -> bytes:
        """The manifest file's bytes."""
        return DATASET.render(self.document())

    # -- the MAC ----------------------------------------------------------------------------------------------

    def signed(self, mac_key: bytes) -> Manifest:
        """This manifest with the MAC of its body under ``mac_key``."""
        return dataclasses.replace(self, mac=compute_mac(mac_key, self.body()))

    def authenticate(self, mac_key: bytes) -> Manifest:
        """This manifest if its MAC holds under ``mac_key``, else the opaque IntegrityError."""
        verify_mac(mac_key, self.body(), self.mac)
        return self

    def with_mac_key(self, kms_instance_id: str, wrapped_mac_key: str) -> Manifest:
        """The same manifest (and MAC) with the MAC key re-wrapped: what master-key rotation writes."""
        return dataclasses.replace(self, kms_instance_id=kms_instance_id, wrapped_mac_key=wrapped_mac_key)

    @property
    def total_bytes(self) -> int:
        """The size of all files together."""
        return sum(f.bytes for f in self.files)


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


# -- strict field checks: exactly these keys, each of its JSON type (bool is not an int here) ---------------------

_OPTIONAL_STR = (str, type(None))
_NUMBER = (int, float)
_BODY: dict[str, Any] = {"format": str, "format_version": int, "dataset_id": str, "created": _NUMBER, "kind": str,
                         "label": _OPTIONAL_STR, "num_rows": int, "schema": dict, "encryption": dict, "files": list,
                         "metadata": dict}
_COLUMN = {"name": str, "type": str}
_FILE = {"name": str, "rows": int, "bytes": int, "sha256": str, "tail_sha256": str}
_ENCRYPTION = {"scheme": str, "algorithm": str, "footer": str, "data_key_bits": int, "double_wrapping": bool,
               "key_material": str, "master_key_id": str}


def _exact(value: Any, fields: Mapping[str, Any]) -> dict[str, Any]:
    """``value`` if it is a JSON object with exactly ``fields``, each of its type; else ValueError."""
    if not isinstance(value, dict) or value.keys() != fields.keys():
        raise ValueError("fields")
    for name, kind in fields.items():
        item = value[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(item, kinds) or (isinstance(item, bool) and bool not in kinds):
            raise ValueError(name)
    return value
