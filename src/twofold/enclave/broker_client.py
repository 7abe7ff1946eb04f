"""The enclave's side of the key-broker protocol: attest, then have wrapped keys released to this enclave.

Protocol (JSON over HTTP(S), in the style of the Confidential Containers KBS):

1. ``POST /v1/auth``    {backend}                          -> {session, nonce, expires_in}
2. ``POST /v1/attest``  {session, evidence, public_key}    -> {token, expires_in, keystore_id, owner_public_key,
                                                                signature}
3. ``POST /v1/unwrap``  {token, request, items: [{context, wrapped}]} -> {items: [{sealed}], rules, signature}

The session trusts exactly one broker, the :class:`~twofold.crypto.broker_identity.BrokerIdentity` the owner
gave it; its digest goes into the evidence, so the real broker serves only enclaves that pin it. The grant is
signed over the challenge nonce and the enclave's public key; a release is signed over a fresh request nonce,
the token, every context asked for, the digest of every sealed key and the dataset rules, so nothing a relay or
the untrusted host substitutes is accepted. Each released key is also sealed to the enclave's ephemeral X25519
key with HPKE, bound to the token and context. Plain ``http://`` is accepted only on loopback.
A rejected token (the broker restarted, or the token expired) triggers one fresh attestation.
Every call (``attest``, ``unwrap_many``) has a deadline (``timeout_s``, 30 s by default) that covers its requests
and their retries; a 429 (or a 503 with ``Retry-After``) is waited out as the broker asks, a bounded number of
times, and anything else that does not finish in time is a ServiceError.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import math
import random
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from twofold.crypto.broker_identity import BrokerIdentity, digest_of
from twofold.crypto.contexts import dataset_of
from twofold.crypto.evidence import Evidence
from twofold.crypto.hpke_seal import open_sealed_to
from twofold.crypto.release_rules import DatasetRule
from twofold.errors import AttestationError, ConfigError, KeyAccessError, ProtocolError, ServiceError, TwofoldError

API = "/v1"
TIMEOUT_S = 30.0  # the deadline of one operation (attest, or unwrap_many with its re-attestation), retries included
MAX_TRIES = 8  # attempts at one request while the broker answers 429/503 with a wait
MAX_REPLY = 16 << 20


def release_info(token: str, context: bytes) -> bytes:
    """HPKE info that binds a released key to its token and context."""
    return b"twofold-kbs-release-v1\x00" + token.encode() + b"\x00" + context


def grant_statement(nonce: str, public_key_raw: bytes, token: str, keystore_id: str, owner_public_key: bytes,
                    measurement: str) -> dict[str, Any]:
    """What the broker signs when it grants a token (purpose ``grant``)."""
    return {"nonce": nonce, "enclave_key": base64.b64encode(public_key_raw).decode(), "token": token,
            "keystore_id": keystore_id, "owner_public_key": base64.b64encode(owner_public_key).decode(),
            "measurement": measurement}


def release_statement(request: str, token: str, contexts: list[bytes], sealed: list[bytes],
                      rules: dict[str, Any]) -> dict[str, Any]:
    """What the broker signs when it releases keys (purpose ``release``)."""
    return {"request": request, "token": token, "contexts": [base64.b64encode(c).decode() for c in contexts],
            "sealed": [digest_of(blob) for blob in sealed], "rules": rules}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class BrokerAddress:
    """Where a key broker is and who it is: its URL and the identity (JSON) its owner issued. Not secret."""

    url: str
    identity: str

    def pinned(self) -> BrokerIdentity:
        return BrokerIdentity.from_json(self.identity)


@dataclass(frozen=True)
class _Granted:
    token: str


@dataclass(frozen=True)
class Release:
    """Keys released in one round trip, with the owner's rules for every dataset they belong to."""

    keys: list[bytes]
    rules: dict[str, DatasetRule]


class BrokerSession:
    """An attested session with a key broker; implements the unwrap half of KeyWrapper.

    No HTTP runs under the session's lock: an attestation runs unlocked and only publishing its token is locked.
    Callers that find no token share one attestation in flight (a Future waited on without the lock).
    """

    def __init__(self, url: str, measurement: str, evidence_for: Callable[[str, bytes, str], Evidence],
                 identity: BrokerIdentity, *, backend: str = "simulation", timeout_s: float = TIMEOUT_S,
                 max_tries: int = MAX_TRIES) -> None:
        self._url = url.rstrip("/")
        parsed = urllib.parse.urlsplit(self._url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(f"key broker URL must be https:// (or http:// on loopback), not {url!r}")
        if parsed.scheme == "http" and not is_loopback(parsed.hostname):
            raise ConfigError(f"key broker {parsed.hostname} is not on loopback: use https://")
        if not timeout_s > 0 or max_tries < 1:
            raise ConfigError("a key-broker session needs a positive deadline and at least one try")
        self._parsed = parsed
        self._measurement, self._backend = measurement, backend
        self._evidence_for = evidence_for
        self.identity = identity
        self._context = None
        if parsed.scheme == "https":  # the pinned CA only: the environment (SSL_CERT_FILE, ...) has no say
            if not identity.tls_ca:
                raise ConfigError("an https key broker's identity must name its TLS CA (twofold kbs identity "
                                  "--tls-ca)")
            self._context = ssl.create_default_context(cadata=identity.tls_ca)
        self._timeout_s, self._max_tries = timeout_s, max_tries
        self._lock = threading.Lock()
        self._private = X25519PrivateKey.generate()
        self._token: str | None = None
        self._flight: Future[str] | None = None
        self.keystore_id = identity.keystore_id
        self.owner_public_key = X25519PublicKey.from_public_bytes(identity.owner_public_key)
        self.attestations = 0

    @property
    def public_key_raw(self) -> bytes:
        return self._private.public_key().public_bytes_raw()

    def attest(self) -> None:
        """Run challenge -> evidence -> token. Raises AttestationError if the broker denies it."""
        self._attest(self._deadline())

    def _attest(self, deadline: float, flight: Future[str] | None = None) -> str:
        """One attestation over HTTP, unlocked; then publish its token (and end ``flight``) under the lock."""
        try:
            granted = self._handshake(deadline)
        except BaseException:
            self._end_flight(flight)
            raise
        with self._lock:
            self._token = granted.token
            self.attestations += 1
            if flight is not None and self._flight is flight:
                self._flight = None
        return granted.token

    def _end_flight(self, flight: Future[str] | None) -> None:
        with self._lock:
            if flight is not None and self._flight is flight:
                self._flight = None

    def _handshake(self, deadline: float) -> _Granted:
        challenge = self._post("auth", {"backend": self._backend}, deadline)
        nonce = str(challenge.get("nonce", ""))
        evidence = self._evidence_for(nonce, self.public_key_raw, self.identity.digest())
        granted = self._post("attest", {
            "session": challenge.get("session"),
            "evidence": evidence.to_dict(),
            "public_key": base64.b64encode(self.public_key_raw).decode(),
        }, deadline)
        token = str(granted.get("token", ""))
        signed = grant_statement(nonce, self.public_key_raw, token, self.identity.keystore_id,
                                 self.identity.owner_public_key, self._measurement)
        self.identity.verify("grant", signed, granted.get("signature"))  # the pinned broker, for this nonce and key
        return _Granted(token)

    def _current_token(self, deadline: float) -> str:
        """The session's token; without one, attest once for every caller waiting (single flight)."""
        with self._lock:
            if self._token is not None:
                return self._token
            lead = self._flight is None
            if lead:
                self._flight = Future()
            flight = self._flight
        if not lead:
            try:
                return flight.result(timeout=_remaining(deadline))  # waits without the lock
            except TimeoutError:
                raise ServiceError("timed out waiting for the key-broker attestation in flight") from None
        try:
            token = self._attest(deadline, flight)
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        flight.set_result(token)
        return token

    def unwrap_many(self, items: list[tuple[str, bytes]]) -> list[bytes]:
        """Release several wrapped keys in one round trip."""
        return self.release(items).keys

    def release(self, items: list[tuple[str, bytes]]) -> Release:
        """Release several wrapped keys in one round trip, with the owner's rules for their datasets."""
        deadline = self._deadline()
        contexts = [context for _, context in items]
        body_items = [{"wrapped": wrapped, "context": base64.b64encode(context).decode()} for wrapped, context in items]
        for attempt in range(2):
            token = self._current_token(deadline)
            request = secrets.token_hex(16)
            try:
                reply = self._post("unwrap", {"token": token, "request": request, "items": body_items}, deadline)
            except _TokenRejected:
                with self._lock:
                    if self._token == token:
                        self._token = None
                if attempt:
                    raise AttestationError("the key broker keeps rejecting fresh tokens") from None
                continue
            try:
                sealed = [base64.b64decode(item["sealed"], validate=True) for item in reply["items"]]
                raw_rules = reply["rules"]
                if not isinstance(raw_rules, dict):
                    raise TypeError("rules")
            except (KeyError, TypeError, ValueError):
                raise ProtocolError("key broker sent a malformed reply") from None
            if len(sealed) != len(items):
                raise ProtocolError("key broker released a different number of keys than asked for")
            self.identity.verify("release", release_statement(request, token, contexts, sealed, raw_rules),
                                 reply.get("signature"))
            datasets = {dataset_of(c) for c in contexts} - {None}
            if set(raw_rules) != datasets:
                raise ProtocolError("key broker sent rules for other datasets than asked for")
            keys = [open_sealed_to(self._private, blob, release_info(token, c)) for blob, c in zip(sealed, contexts,
                                                                                                    strict=True)]
            return Release(keys, {d: DatasetRule.from_dict(r, d) for d, r in raw_rules.items()})
        raise AttestationError("could not obtain a key-broker token")

    def unwrap(self, wrapped: str, context: bytes) -> bytes:
        return self.unwrap_many([(wrapped, context)])[0]

    def wrap(self, key: bytes, context: bytes) -> str:
        raise KeyAccessError("an enclave cannot wrap new keys under the owner's master key")

    # -- transport ------------------------------------------------------------------------------------------

    def _deadline(self) -> float:
        return time.monotonic() + self._timeout_s

    def _post(self, endpoint: str, body: dict[str, Any], deadline: float | None = None) -> dict[str, Any]:
        """POST JSON and return the reply's JSON; waits out 429/503 as the broker asks, within the deadline."""
        deadline = self._deadline() if deadline is None else deadline
        payload = json.dumps(body).encode()
        for _ in range(self._max_tries):
            status, retry_after, data = self._exchange(f"{self._parsed.path}{API}/{endpoint}", payload, deadline)
            if not (status == 429 or (status == 503 and retry_after is not None)):
                return _reply(status, data)
            wait = _wait_for(retry_after, data) * random.uniform(1.0, 1.25)  # jitter: spread the herd
            if wait >= _remaining(deadline):
                raise ServiceError(f"key broker is overloaded ({status}) and asks to wait {wait:.1f} s, "
                                   "past this request's deadline")
            time.sleep(wait)
        raise ServiceError(f"key broker still overloaded (429/503) after {self._max_tries} tries")

    def _exchange(self, path: str, payload: bytes, deadline: float) -> tuple[int, str | None, bytes]:
        """One HTTP exchange, every socket operation bounded by what is left of the deadline."""
        host, port = self._parsed.hostname or "", self._parsed.port
        if self._context is None:
            connection: http.client.HTTPConnection = http.client.HTTPConnection(host, port,
                                                                                timeout=_remaining(deadline))
        else:
            connection = http.client.HTTPSConnection(host, port, timeout=_remaining(deadline), context=self._context)
        try:
            connection.request("POST", path, body=payload, headers={"Content-Type": "application/json"})
            _bound(connection, deadline)
            # http.client reads the status line and headers itself, so there each read (not their sum) is bounded
            # by the time left; the body is read in chunks against the deadline.
            response = connection.getresponse()
            return response.status, response.getheader("Retry-After"), _read_body(connection, response, deadline)
        except TimeoutError:
            raise ServiceError(f"key broker at {self._url} did not answer within the deadline") from None
        except (OSError, http.client.HTTPException) as exc:
            raise ServiceError(f"key broker at {self._url} is unreachable ({type(exc).__name__})") from None
        finally:
            connection.close()


class _TokenRejected(TwofoldError):
    pass


def _remaining(deadline: float) -> float:
    """Seconds left before ``deadline``; a ServiceError once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise ServiceError("key broker request ran past its deadline")
    return left


def _bound(connection: http.client.HTTPConnection, deadline: float) -> None:
    """Make the connection's next socket operation wait at most until the deadline."""
    if connection.sock is not None:
        connection.sock.settimeout(_remaining(deadline))


def _read_body(connection: http.client.HTTPConnection, response: http.client.HTTPResponse,
               deadline: float) -> bytes:
    """The reply body, read chunk by chunk so a broker that trickles bytes still meets the deadline."""
    data = bytearray()
    while True:
        _bound(connection, deadline)
        chunk = response.read1(65536)
        if not chunk:
            return bytes(data)
        data += chunk
        if len(data) > MAX_REPLY:
            raise ProtocolError("key broker sent an oversized reply")


def _wait_for(retry_after: str | None, data: bytes) -> float:
    """The broker's requested wait: the reply's fractional ``retry_after``, else the header's seconds, else 1 s."""
    try:
        wait = float(json.loads(data)["retry_after"])
    except (ValueError, KeyError, TypeError):
        try:
            wait = float(retry_after or "1")
        except ValueError:  # an HTTP date, which the broker never sends
            wait = 1.0
    return min(max(wait, 0.01), 60.0) if math.isfinite(wait) else 1.0


def _reply(status: int, data: bytes) -> dict[str, Any]:
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if 200 <= status < 300:
        if not isinstance(body, dict):
            raise ProtocolError("key broker sent a malformed reply")
        return body
    raise _broker_error(status, str(body.get("error", "")) if isinstance(body, dict) else "")


def _broker_error(status: int, message: str) -> TwofoldError:
    if status == 401:
        return _TokenRejected(message)
    if status == 403:
        return AttestationError(f"key broker denied: {message}")
    if status == 400:
        return ProtocolError(f"key broker rejected the request: {message}")
    return ServiceError(f"key broker error {status}: {message}")
