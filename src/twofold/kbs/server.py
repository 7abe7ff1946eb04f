"""The key broker's HTTP service (aiohttp): challenge, attest, unwrap. See ``enclave/broker_client.py``.

The broker serves only enclaves whose evidence names its own identity (``config``), signs every grant and
release with the keystore's broker key, and releases the keys of a request only if every one of them is allowed
(then audits them all as granted; otherwise one denial). Malformed (400), unauthenticated (401) and slow (408)
requests are audited too, up to a rate per address (beyond it they are only counted); 429s are not audited, so a
flood does not turn into disk writes.

Every table is bounded and every client is limited (habit 14). An address (an IPv4 address, or an IPv6 /64)
gets a token bucket for ``/v1/auth`` (429 with ``Retry-After`` when empty) and at most ``max_pending_per_address``
pending challenges (a new one evicts its oldest); when the whole table is full, the address holding the most
loses its oldest challenge, so one address cannot lock the others out. Requests in flight are capped (503) and
request bodies have a read deadline (408). All state lives in the one event-loop thread, so no lock is needed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import math
import secrets
import ssl
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from twofold.crypto.broker_identity import sign_statement
from twofold.crypto.contexts import dataset_of
from twofold.crypto.evidence import Evidence
from twofold.crypto.hpke_seal import seal_to
from twofold.enclave.broker_client import API, grant_statement, release_info, release_statement
from twofold.errors import AttestationError, ConfigError, IntegrityError, TwofoldError
from twofold.kbs.audit import AuditLog
from twofold.kbs.policy import Policy
from twofold.kbs.verifiers import verifier_for
from twofold.keys.keystore import Keystore

log = logging.getLogger("twofold.kbs")
MAX_BODY = 1 << 20
MAX_ITEMS = 4096
_AUDITED_REJECTIONS = (400, 401, 408)
_REJECTION_AUDIT_BURST, _REJECTION_AUDIT_RATE = 100, 10.0  # audited rejections per address: burst, then per second


@dataclass(frozen=True)
class Limits:
    """Bounds on the broker's tables and load. The defaults let 200 enclaves behind one address attest at once."""

    auth_burst: int = 200  # challenges an address may take at once (its token bucket's size)
    auth_rate: float = 100.0  # challenges per second an address earns back
    max_pending_per_address: int = 256
    max_pending: int = 10_000
    max_grants: int = 100_000
    max_addresses: int = 16_384  # token buckets kept at once (idle ones are dropped first)
    max_in_flight: int = 512
    body_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:
                raise ConfigError(f"key broker limit {name} must be positive, not {value!r}")


@dataclass
class _Challenge:
    nonce: str
    backend: str
    expires: float
    address: str


@dataclass
class _Grant:
    measurement: str
    public_key: X25519PublicKey
    expires: float


class _Denied(Exception):
    def __init__(self, status: int, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.retry_after = status, reason, retry_after


def client_address(remote: str | None) -> str:
    """The key that limits apply to: an IPv4 address, or an IPv6 /64 (one host usually holds a whole /64)."""
    try:
        ip = ipaddress.ip_address(remote or "")
    except ValueError:
        return remote or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class TokenBuckets:
    """One token bucket per address (``burst`` tokens, ``rate`` back per second), least recently used first.

    A bucket that has refilled is the same as no bucket, so idle ones are dropped; past ``max_addresses`` the
    least recently used goes (which only ever gives that address a full bucket again).
    """

    def __init__(self, burst: int, rate: float, max_addresses: int) -> None:
        self._burst, self._rate, self._max = float(burst), rate, max_addresses
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, when counted)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, address: str, now: float) -> float:
        """Take one token: 0.0 when granted, else the seconds until the address has one."""
        self._drop_idle(now)
        tokens, stamp = self._buckets.pop(address, (self._burst, now))
        tokens = min(self._burst, tokens + max(0.0, now - stamp) * self._rate)
        wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self._rate
        self._buckets[address] = (tokens - 1.0 if wait == 0.0 else tokens, now)
        return wait

    def _drop_idle(self, now: float) -> None:
        while self._buckets:
            address, (tokens, stamp) = next(iter(self._buckets.items()))
            if len(self._buckets) < self._max and tokens + (now - stamp) * self._rate < self._burst:
                return
            del self._buckets[address]


class ChallengeTable:
    """Pending challenges by session, oldest first, bounded per address and in all."""

    def __init__(self, max_pending: int, per_address: int) -> None:
        self._max, self._per_address = max_pending, per_address
        self._all: dict[str, _Challenge] = {}
        self._by_address: dict[str, dict[str, None]] = {}  # address -> its sessions, oldest first

    def __len__(self) -> int:
        return len(self._all)

    def heaviest(self) -> int:
        """How many challenges the address holding the most has pending."""
        return max(map(len, self._by_address.values()), default=0)

    def add(self, session: str, challenge: _Challenge, now: float) -> None:
        """Insert, evicting the address's oldest at its cap, or the heaviest address's oldest when full."""
        self.expire(now)
        mine = self._by_address.get(challenge.address)
        if mine is not None and len(mine) >= self._per_address:
            self.pop(next(iter(mine)))
        if len(self._all) >= self._max:
            self.pop(next(iter(max(self._by_address.values(), key=len))))
        self._all[session] = challenge
        self._by_address.setdefault(challenge.address, {})[session] = None

    def pop(self, session: str) -> _Challenge | None:
        challenge = self._all.pop(session, None)
        if challenge is not None:
            sessions = self._by_address[challenge.address]
            del sessions[session]
            if not sessions:
                del self._by_address[challenge.address]
        return challenge

    def expire(self, now: float) -> None:
        # Every challenge lives for the same TTL, so the oldest is also the first to expire.
        while self._all:
            session, challenge = next(iter(self._all.items()))
            if challenge.expires >= now:
                return
            self.pop(session)


class GrantTable:
    """Tokens granted by attestation, oldest first; past ``max_grants`` the oldest goes (its enclave re-attests)."""

    def __init__(self, max_grants: int) -> None:
        self._max = max_grants
        self._grants: dict[str, _Grant] = {}

    def __len__(self) -> int:
        return len(self._grants)

    def add(self, token: str, grant: _Grant, now: float) -> None:
        while self._grants:
            oldest, first = next(iter(self._grants.items()))
            if first.expires >= now and len(self._grants) < self._max:
                break
            del self._grants[oldest]
        self._grants[token] = grant

    def get(self, token: str, now: float) -> _Grant | None:
        grant = self._grants.get(token)
        if grant is not None and now > grant.expires:
            del self._grants[token]
            return None
        return grant


class KeyBroker:
    """Owner-side key release: state (challenges, grants) lives in memory; a restart forces re-attestation."""

    def __init__(self, keystore: Keystore, policy: Policy, audit: AuditLog, limits: Limits | None = None,
                 tls_ca: str = "") -> None:
        self.keystore, self.policy, self.audit = keystore, policy, audit
        self.limits = limits or Limits()
        self.identity = keystore.broker_identity(tls_ca)
        self._config = self.identity.digest()
        self._signing_key = keystore.broker_signing_key()
        self._buckets = TokenBuckets(self.limits.auth_burst, self.limits.auth_rate, self.limits.max_addresses)
        self._challenges = ChallengeTable(self.limits.max_pending, self.limits.max_pending_per_address)
        self._grants = GrantTable(self.limits.max_grants)
        self._rejection_audit = TokenBuckets(_REJECTION_AUDIT_BURST, _REJECTION_AUDIT_RATE, self.limits.max_addresses)
        self.in_flight = 0
        self.rate_limited = 0
        self.rejections_not_audited = 0

    # -- middleware -----------------------------------------------------------------------------------------

    @web.middleware
    async def limit_in_flight(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Answer 503 beyond ``max_in_flight`` requests being handled at once."""
        if self.in_flight >= self.limits.max_in_flight:
            return _error_response(_Denied(503, "key broker is busy: retry later", retry_after=1.0))
        self.in_flight += 1
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1

    @web.middleware
    async def audit_rejections(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Record malformed, unauthenticated and slow requests (400, 401, 408) in the audit log."""
        try:
            return await handler(request)
        except _Denied as denied:
            if denied.status in _AUDITED_REJECTIONS:
                if self._rejection_audit.take(client_address(request.remote), time.monotonic()) > 0:
                    self.rejections_not_audited += 1  # a flood is counted, not written
                else:
                    self.audit.record("deny", request.path.rsplit("/", 1)[-1], peer=request.remote or "",
                                      status=denied.status, reason=denied.reason)
            raise

    # -- handlers -------------------------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "keystore_id": self.keystore.keystore_id,
                                  "simulation_allowed": self.policy.allow_simulation,
                                  "pending_challenges": len(self._challenges),
                                  "pending_challenges_heaviest_address": self._challenges.heaviest(),
                                  "pending_per_address_cap": self.limits.max_pending_per_address,
                                  "grants": len(self._grants), "in_flight": self.in_flight,
                                  "rate_limited": self.rate_limited,
                                  "rejections_not_audited": self.rejections_not_audited})

    async def auth(self, request: web.Request) -> web.Response:
        address = client_address(request.remote)
        wait = self._buckets.take(address, time.monotonic())
        if wait > 0:
            self.rate_limited += 1  # not audited: a flood must not turn into disk writes
            raise _Denied(429, "too many challenges requested from this address", retry_after=wait)
        body = await self._json(request)
        now = time.time()
        session, nonce = secrets.token_hex(16), secrets.token_hex(32)
        challenge = _Challenge(nonce, str(body.get("backend", "")), now + self.policy.nonce_ttl_seconds, address)
        self._challenges.add(session, challenge, now)
        return web.json_response({"session": session, "nonce": nonce,
                                  "expires_in": self.policy.nonce_ttl_seconds})

    async def attest(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        peer = request.remote or ""
        measurement = ""
        try:
            challenge = self._challenges.pop(str(body.get("session", "")))  # single use
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
            if claims.config != self._config:
                raise AttestationError("the enclave pins another key broker's identity")
            rule = self.policy.rule_for(claims.measurement, time.time())
        except AttestationError as exc:
            self.audit.record("deny", "attest", peer=peer, measurement=measurement, reason=str(exc))
            raise _Denied(403, str(exc)) from None
        token = secrets.token_hex(32)
        now = time.time()
        expires = now + self.policy.token_ttl_seconds
        if rule.expires is not None:
            expires = min(expires, rule.expires)
        self._grants.add(token, _Grant(claims.measurement, X25519PublicKey.from_public_bytes(public_raw), expires),
                         now)
        self.audit.record("grant", "attest", peer=peer, measurement=claims.measurement, backend=claims.backend,
                          token_id=token[:8])
        owner = self.identity.owner_public_key
        signed = grant_statement(challenge.nonce, public_raw, token, self.identity.keystore_id, owner,
                                 claims.measurement)
        return web.json_response({
            "token": token,
            "expires_in": expires - time.time(),
            "keystore_id": self.identity.keystore_id,
            "owner_public_key": base64.b64encode(owner).decode(),
            "signature": sign_statement(self._signing_key, "grant", signed),
        })

    async def unwrap(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        peer = request.remote or ""
        token = str(body.get("token", ""))
        grant = self._grants.get(token, time.time())
        if grant is None:
            raise _Denied(401, "unknown or expired token: attest again")
        items, nonce = body.get("items"), body.get("request")
        if not isinstance(items, list) or not 0 < len(items) <= MAX_ITEMS:
            raise _Denied(400, f"items must be a list of 1 to {MAX_ITEMS} keys")
        if not isinstance(nonce, str) or not 16 <= len(nonce) <= 128:
            raise _Denied(400, "request must be a fresh nonce of 16 to 128 characters")
        if not all(isinstance(item, dict) for item in items):
            raise _Denied(400, "malformed item")
        contexts = [_b64(item.get("context")) for item in items]
        keys = [self._release_one(grant, peer, str(item.get("wrapped", "")), context)
                for item, context in zip(items, contexts, strict=True)]
        # Every key is allowed: only now seal them and audit the whole request as granted.
        sealed = [seal_to(grant.public_key, key, release_info(token, context))
                  for key, context in zip(keys, contexts, strict=True)]
        datasets = sorted({d for d in map(dataset_of, contexts) if d is not None})
        rules = {d: self.policy.dataset_rule(d).to_dict() for d in datasets}
        for context in contexts:
            self.audit.record("grant", "unwrap", peer=peer, measurement=grant.measurement,
                              dataset=dataset_of(context), purpose=context.decode().split("|")[0])
        signature = sign_statement(self._signing_key, "release",
                                   release_statement(nonce, token, contexts, sealed, rules))
        return web.json_response({"items": [{"sealed": base64.b64encode(b).decode()} for b in sealed],
                                  "rules": rules, "signature": signature})

    def _release_one(self, grant: _Grant, peer: str, wrapped: str, context: bytes) -> bytes:
        """One key of a request, if the policy lets the grant's measurement have it; else the request is denied."""
        dataset = dataset_of(context)
        try:
            if dataset is None:
                raise AttestationError("request names no dataset")
            rule = self.policy.rule_for(grant.measurement, time.time())
            if not rule.allows(dataset):
                raise AttestationError(f"dataset {dataset} is not allowed for this measurement")
            return self.keystore.unwrap(wrapped, context)
        except TwofoldError as exc:
            reason = "wrapped key rejected" if isinstance(exc, IntegrityError) else str(exc)
            self.audit.record("deny", "unwrap", peer=peer, measurement=grant.measurement, dataset=dataset,
                              reason=reason)
            raise _Denied(403, reason) from None

    async def _json(self, request: web.Request) -> dict[str, Any]:
        """The request's JSON object, read within ``body_timeout_s`` (a slow body gets 408)."""
        try:
            return await asyncio.wait_for(_json(request), self.limits.body_timeout_s)
        except TimeoutError:
            raise _Denied(408, "request body was not received in time") from None


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


def _error_response(denied: _Denied) -> web.Response:
    """``{"error"}``; with a wait, also ``retry_after`` (seconds, fractional) and a ``Retry-After`` header."""
    if denied.retry_after is None:
        return web.json_response({"error": denied.reason}, status=denied.status)
    return web.json_response({"error": denied.reason, "retry_after": math.ceil(denied.retry_after * 1000) / 1000},
                             status=denied.status, headers={"Retry-After": str(math.ceil(denied.retry_after))})


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except _Denied as denied:
        return _error_response(denied)
    except web.HTTPException:
        raise
    except Exception as exc:  # never crash the service on one bad request; never echo data
        log.error("internal error handling %s: %s", request.path, type(exc).__name__)
        return web.json_response({"error": "internal error"}, status=500)


def make_app(broker: KeyBroker) -> web.Application:
    app = web.Application(middlewares=[broker.limit_in_flight, _errors, broker.audit_rejections],
                          client_max_size=MAX_BODY)
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
