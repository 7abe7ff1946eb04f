"""The key broker's HTTP service (aiohttp): challenge, attest, unwrap. See ``enclave/broker_client.py``."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import secrets
import ssl
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from twofold.crypto.contexts import dataset_of
from twofold.crypto.evidence import Evidence
from twofold.crypto.hpke_seal import seal_to
from twofold.enclave.broker_client import API, release_info
from twofold.errors import AttestationError, IntegrityError, TwofoldError
from twofold.keys.broker.audit import AuditLog
from twofold.keys.keystore import Keystore
from twofold.trust.policy import Policy
from twofold.trust.verifier import verifier_for

log = logging.getLogger("twofold.kbs")
MAX_BODY = 1 << 20
MAX_ITEMS = 4096
MAX_PENDING_SESSIONS = 10_000


@dataclass
class _Challenge:
    nonce: str
    backend: str
    expires: float


@dataclass
class _Grant:
    measurement: str
    public_key: X25519PublicKey
    expires: float


class _Denied(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class KeyBroker:
    """Owner-side key release: state (challenges, grants) lives in memory; a restart forces re-attestation."""

    def __init__(self, keystore: Keystore, policy: Policy, audit: AuditLog) -> None:
        self.keystore, self.policy, self.audit = keystore, policy, audit
        self._challenges: dict[str, _Challenge] = {}
        self._grants: dict[str, _Grant] = {}

    # -- handlers -------------------------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "keystore_id": self.keystore.keystore_id,
                                  "simulation_allowed": self.policy.allow_simulation})

    async def auth(self, request: web.Request) -> web.Response:
        body = await _json(request)
        backend = str(body.get("backend", ""))
        self._expire()
        if len(self._challenges) >= MAX_PENDING_SESSIONS:
            raise _Denied(503, "too many pending challenges")
        session, nonce = secrets.token_hex(16), secrets.token_hex(32)
        self._challenges[session] = _Challenge(nonce, backend, time.time() + self.policy.nonce_ttl_seconds)
        return web.json_response({"session": session, "nonce": nonce,
                                  "expires_in": self.policy.nonce_ttl_seconds})

    async def attest(self, request: web.Request) -> web.Response:
        body = await _json(request)
        peer = request.remote or ""
        measurement = ""
        try:
            challenge = self._challenges.pop(str(body.get("session", "")), None)  # single use
            if challenge is None:
                raise AttestationError("unknown or already used challenge (nonce reuse)")
            if time.time() > challenge.expires:
                raise AttestationError("challenge expired")
            evidence = Evidence.from_dict(body.get("evidence"))
            measurement = evidence.measurement
            public_raw = _b64(body.get("public_key"))
            if len(public_raw) != 32:
                raise AttestationError("enclave public key must be a raw X25519 key")
            claims = verifier_for(evidence.backend, self.policy).verify(evidence, challenge.nonce, public_raw)
            rule = self.policy.rule_for(claims.measurement, time.time())
        except AttestationError as exc:
            self.audit.record("deny", "attest", peer=peer, measurement=measurement, reason=str(exc))
            raise _Denied(403, str(exc)) from None
        token = secrets.token_hex(32)
        expires = time.time() + self.policy.token_ttl_seconds
        if rule.expires is not None:
            expires = min(expires, rule.expires)
        self._grants[token] = _Grant(claims.measurement, X25519PublicKey.from_public_bytes(public_raw), expires)
        self.audit.record("grant", "attest", peer=peer, measurement=claims.measurement, backend=claims.backend,
                          token_id=token[:8])
        return web.json_response({
            "token": token,
            "expires_in": expires - time.time(),
            "keystore_id": self.keystore.keystore_id,
            "owner_public_key": base64.b64encode(self.keystore.owner_public_key.public_bytes_raw()).decode(),
        })

    async def unwrap(self, request: web.Request) -> web.Response:
        body = await _json(request)
        peer = request.remote or ""
        token = str(body.get("token", ""))
        grant = self._grants.get(token)
        if grant is None or time.time() > grant.expires:
            self._grants.pop(token, None)
            raise _Denied(401, "unknown or expired token: attest again")
        items = body.get("items")
        if not isinstance(items, list) or not 0 < len(items) <= MAX_ITEMS:
            raise _Denied(400, f"items must be a list of 1 to {MAX_ITEMS} keys")
        sealed = []
        for item in items:
            if not isinstance(item, dict):
                raise _Denied(400, "malformed item")
            context = _b64(item.get("context"))
            dataset = dataset_of(context)
            try:
                if dataset is None:
                    raise AttestationError("request names no dataset")
                rule = self.policy.rule_for(grant.measurement, time.time())
                if not rule.allows(dataset):
                    raise AttestationError(f"dataset {dataset} is not allowed for this measurement")
                key = self.keystore.unwrap(str(item.get("wrapped", "")), context)
            except TwofoldError as exc:
                reason = "wrapped key rejected" if isinstance(exc, IntegrityError) else str(exc)
                self.audit.record("deny", "unwrap", peer=peer, measurement=grant.measurement, dataset=dataset,
                                  reason=reason)
                raise _Denied(403, reason) from None
            sealed.append({"sealed": base64.b64encode(seal_to(grant.public_key, key, release_info(token, context)))
                           .decode()})
            self.audit.record("grant", "unwrap", peer=peer, measurement=grant.measurement, dataset=dataset,
                              purpose=context.decode().split("|")[0])
        return web.json_response({"items": sealed})

    def _expire(self) -> None:
        now = time.time()
        for session in [s for s, c in self._challenges.items() if c.expires < now]:
            del self._challenges[session]
        for token in [t for t, g in self._grants.items() if g.expires < now]:
            del self._grants[token]


def _b64(value: Any) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise _Denied(400, "malformed base64 field") from None


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise _Denied(400, "body must be JSON") from None
    if not isinstance(body, dict):
        raise _Denied(400, "body must be a JSON object")
    return body


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except _Denied as denied:
        return web.json_response({"error": denied.reason}, status=denied.status)
    except web.HTTPException:
        raise
    except Exception as exc:  # never crash the service on one bad request; never echo data
        log.error("internal error handling %s: %s", request.path, type(exc).__name__)
        return web.json_response({"error": "internal error"}, status=500)


def make_app(broker: KeyBroker) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY)
    app.add_routes([
        web.get(f"{API}/health", broker.health),
        web.post(f"{API}/auth", broker.auth),
        web.post(f"{API}/attest", broker.attest),
        web.post(f"{API}/unwrap", broker.unwrap),
    ])
    return app


async def serve(broker: KeyBroker, host: str, port: int, ssl_context: ssl.SSLContext | None,
                on_ready: Any) -> None:
    """Run until cancelled; calls ``on_ready(url)`` once listening (port 0 picks a free port)."""
    runner = web.AppRunner(make_app(broker), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    scheme = "https" if ssl_context else "http"
    on_ready(f"{scheme}://{host}:{bound}")
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
