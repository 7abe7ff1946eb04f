"""The enclave's side of the key-broker protocol: attest, then have wrapped keys released to this enclave.

Protocol (JSON over HTTP(S), in the style of the Confidential Containers KBS):

1. ``POST /v1/auth``    {backend}                          -> {session, nonce, expires_in}
2. ``POST /v1/attest``  {session, evidence, public_key}    -> {token, expires_in, keystore_id, owner_public_key}
3. ``POST /v1/unwrap``  {token, items: [{context, wrapped}]} -> {items: [{sealed}]}

Each released key is sealed to the enclave's ephemeral X25519 key with HPKE, bound to the token and context.
A rejected token (the broker restarted, or the token expired) triggers one fresh attestation.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from twofold.crypto.evidence import Evidence
from twofold.crypto.hpke_seal import open_sealed_to
from twofold.errors import AttestationError, ConfigError, KeyAccessError, ProtocolError, ServiceError, TwofoldError

API = "/v1"
TIMEOUT_S = 30.0


def release_info(token: str, context: bytes) -> bytes:
    """HPKE info that binds a released key to its token and context."""
    return b"twofold-kbs-release-v1\x00" + token.encode() + b"\x00" + context


class BrokerSession:
    """An attested session with a key broker; implements the unwrap half of KeyWrapper."""

    def __init__(self, url: str, measurement: str, evidence_for: Callable[[str, bytes], Evidence],
                 *, ca_file: str | None = None) -> None:
        self._url = url.rstrip("/")
        if not self._url.startswith(("http://", "https://")):
            raise ConfigError(f"key broker URL must be http:// or https://, not {url!r}")
        self._measurement = measurement
        self._evidence_for = evidence_for
        self._context = ssl.create_default_context(cafile=ca_file) if self._url.startswith("https") else None
        self._lock = threading.Lock()
        self._private = X25519PrivateKey.generate()
        self._token: str | None = None
        self.keystore_id = ""
        self.owner_public_key: X25519PublicKey | None = None
        self.attestations = 0

    @property
    def public_key_raw(self) -> bytes:
        return self._private.public_key().public_bytes_raw()

    def attest(self) -> None:
        """Run challenge -> evidence -> token. Raises AttestationError if the broker denies it."""
        with self._lock:
            self._attest_locked()

    def _attest_locked(self) -> None:
        challenge = self._post("auth", {"backend": "simulation"})
        evidence = self._evidence_for(str(challenge["nonce"]), self.public_key_raw)
        granted = self._post("attest", {
            "session": challenge["session"],
            "evidence": evidence.to_dict(),
            "public_key": base64.b64encode(self.public_key_raw).decode(),
        })
        self._token = str(granted["token"])
        self.keystore_id = str(granted["keystore_id"])
        self.owner_public_key = X25519PublicKey.from_public_bytes(base64.b64decode(granted["owner_public_key"]))
        self.attestations += 1

    def unwrap_many(self, items: list[tuple[str, bytes]]) -> list[bytes]:
        """Release several wrapped keys in one round trip."""
        for attempt in range(2):
            with self._lock:
                if self._token is None:
                    self._attest_locked()
                token = self._token
            try:
                reply = self._post("unwrap", {"token": token, "items": [
                    {"wrapped": wrapped, "context": base64.b64encode(context).decode()} for wrapped, context in items
                ]})
            except _TokenRejected:
                with self._lock:
                    if self._token == token:
                        self._token = None
                if attempt:
                    raise AttestationError("the key broker keeps rejecting fresh tokens") from None
                continue
            sealed = [base64.b64decode(item["sealed"]) for item in reply["items"]]
            return [open_sealed_to(self._private, s, release_info(token, c)) for s, (_, c) in zip(sealed, items,
                                                                                                   strict=True)]
        raise AttestationError("could not obtain a key-broker token")

    def unwrap(self, wrapped: str, context: bytes) -> bytes:
        return self.unwrap_many([(wrapped, context)])[0]

    def wrap(self, key: bytes, context: bytes) -> str:
        raise KeyAccessError("an enclave cannot wrap new keys under the owner's master key")

    def _post(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        # The scheme was checked to be http(s) in __init__.
        request = urllib.request.Request(f"{self._url}{API}/{endpoint}", data=json.dumps(body).encode(),  # noqa: S310
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=self._context) as response:  # noqa: S310
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise _broker_error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ServiceError(f"key broker at {self._url} is unreachable ({type(exc).__name__})") from None
        except ValueError:
            raise ProtocolError("key broker sent a malformed reply") from None


class _TokenRejected(TwofoldError):
    pass


def _broker_error(exc: urllib.error.HTTPError) -> TwofoldError:
    try:
        message = str(json.loads(exc.read()).get("error", ""))
    except (ValueError, OSError, AttributeError):
        message = ""
    if exc.code == 401:
        return _TokenRejected(message)
    if exc.code == 403:
        return AttestationError(f"key broker denied: {message}")
    if exc.code == 400:
        return ProtocolError(f"key broker rejected the request: {message}")
    return ServiceError(f"key broker error {exc.code}: {message}")
