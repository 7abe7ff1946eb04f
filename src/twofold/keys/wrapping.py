"""The interface every key custodian offers: wrap and unwrap data-key material under a master key.

The owner's :class:`~twofold.keys.keystore.Keystore` implements it locally; a key broker session implements it
remotely for attested enclaves. Wrapped keys are self-describing strings::

    tfk1.<keystore id>.<master key version>.<base64url(nonce || ciphertext || tag)>
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Protocol

from twofold.errors import IntegrityError

WRAP_PREFIX = "tfk1"


class KeyWrapper(Protocol):
    """Wraps and unwraps key material; ``context`` is bound as associated data."""

    @property
    def keystore_id(self) -> str: ...

    def wrap(self, key: bytes, context: bytes) -> str: ...

    def unwrap(self, wrapped: str, context: bytes) -> bytes: ...


@dataclass(frozen=True)
class WrappedKey:
    """A parsed wrapped key: which keystore and master-key version sealed it, and the sealed bytes."""

    keystore_id: str
    version: int
    sealed: bytes

    def encode(self) -> str:
        body = base64.urlsafe_b64encode(self.sealed).decode("ascii").rstrip("=")
        return f"{WRAP_PREFIX}.{self.keystore_id}.{self.version}.{body}"

    @classmethod
    def decode(cls, text: str) -> WrappedKey:
        try:
            prefix, keystore_id, version, body = text.split(".")
            if prefix != WRAP_PREFIX:
                raise ValueError(prefix)
            sealed = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            return cls(keystore_id, int(version), sealed)
        except (ValueError, TypeError, AttributeError):
            raise IntegrityError() from None

    def aad(self, context: bytes) -> bytes:
        return b"|".join([WRAP_PREFIX.encode(), self.keystore_id.encode(), str(self.version).encode(), context])
