"""The public header both on-disk formats share: a JSON document with a body, one wrapped key and a tag.

::

    {<part>: body, "keys": {"kms_instance_id": keystore id, <key>: wrapped key}, <tag>: hex}

The body names its format, format version and dataset id. A dataset manifest is ``manifest`` / ``mac_key`` /
``mac`` (HMAC-SHA256, :mod:`twofold.crypto.mac`); a tensor header is ``header`` / ``data_key`` / ``tag``
(Poly1305, ``twofold.data.tensors``). Parsing checks this shape only: what the body holds, and whether the tag
holds, is each format's own business.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from twofold.crypto.contexts import is_dataset_id
from twofold.errors import InputError


@dataclass(frozen=True)
class Document:
    """A document as read: public and NOT authenticated."""

    body: dict[str, Any]
    kms_instance_id: str
    wrapped_key: str
    tag: str

    @property
    def dataset_id(self) -> str:
        return str(self.body["dataset_id"])


@dataclass(frozen=True)
class DocumentFormat:
    """The names one format gives the parts of a :class:`Document`."""

    name: str  # the body's "format"
    version: int  # the one "format_version" read and written
    noun: str  # what the format calls itself in messages: "dataset", "tensor dataset"
    part: str  # the body's key: "manifest", "header"
    key: str  # the wrapped key's name in "keys": "mac_key", "data_key"
    tag: str  # the tag's key: "mac", "tag"

    def parse(self, raw: bytes) -> Document:
        """Parse a document *without* authenticating it; raises InputError if it is not one of this format."""
        try:
            doc = json.loads(raw.decode("utf-8"))
            body = doc[self.part]
            if body["format"] != self.name:
                raise ValueError("format")
        except (UnicodeDecodeError, ValueError, KeyError, TypeError):
            raise self.malformed() from None
        if body.get("format_version") != self.version:
            raise InputError(f"{self.noun} format version {body.get('format_version')} is not supported "
                             f"(this twofold reads version {self.version})")
        keys = doc.get("keys")
        if (set(doc) != {self.part, "keys", self.tag} or not isinstance(keys, dict)
                or set(keys) != {"kms_instance_id", self.key}
                or not all(isinstance(v, str) for v in (*keys.values(), doc[self.tag], body.get("dataset_id")))
                or not is_dataset_id(body["dataset_id"])):
            raise self.malformed()
        return Document(body, keys["kms_instance_id"], keys[self.key], doc[self.tag])

    def render(self, document: Document) -> bytes:
        """The document as stored: pretty JSON, keys sorted, ASCII, one trailing newline."""
        doc = {self.part: document.body, "keys": {"kms_instance_id": document.kms_instance_id,
                                                  self.key: document.wrapped_key}, self.tag: document.tag}
        return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"

    def malformed(self) -> InputError:
        """The error for bytes that are not a document of this format."""
        return InputError(f"not a twofold {self.noun} {self.part}")
