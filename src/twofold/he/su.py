"""SU, the secondary computation unit: holds the strong-key share lambda2 and answers MU's building blocks.

SU only ever decrypts values MU has blinded (additively with statistical masks, or multiplicatively with
log-uniform factors) and returns fresh encryptions; it keeps no per-request state except a bounded table of
training sessions, so a restarted SU serves the next request as if nothing happened (a lost session makes MU
rerun or resume the training). Every ciphertext it returns is freshly encrypted or re-randomized. The generic
building blocks are served here; each model plug-in (:mod:`twofold.he.models.base`) adds its own message kinds.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from twofold.crypto import dtpkc
from twofold.crypto import dtpkc_wire as wire
from twofold.errors import InputError, KeyAccessError, ProtocolError
from twofold.he import codec, fastexp
from twofold.he.keys import SystemInfo
from twofold.he.models import base
from twofold.he.randomness import KeyPools, PairPool
from twofold.he.transport import Call

MAX_ITEMS = 1_000_000
MAX_SESSIONS = 4


class Sessions(OrderedDict):
    """Per-run state kept by SU (Priv-LR's opened share); beyond ``limit`` entries the oldest is dropped."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        while len(self) > self.limit:
            self.popitem(last=False)


class SecondaryUnit:
    """The SU request handler (transport independent)."""

    def __init__(self, info: SystemInfo | None, params: dtpkc.PublicParams, share2: dtpkc.StrongKeyShare,
                 system_pk: dtpkc.PublicKey, *, threads: int = 2, registry: dict[str, dict[str, str]] | None = None,
                 exit_after: int | None = None) -> None:
        if share2.role != 2:
            raise KeyAccessError("SU needs the role-2 share")
        self.info = info
        self.params = params
        self.share = share2
        self.system_pk = system_pk
        self.threads = threads
        self.system_pool = PairPool(system_pk)
        self._pools = KeyPools()
        self._registry = registry
        self.requests = 0
        self.exit_after = exit_after
        self._handlers = {
            "hello": self._hello, "su.key_switch": self._key_switch, "su.mul": self._mul,
            "su.compare": self._compare, "su.shares_mulpack": self._shares_mulpack, "su.log_pack": self._log_pack,
            "su.select_sum": self._select_sum, "su.argmax": self._argmax, "su.stats": self._stats,
        }
        for plugin in base.REGISTRY.values():
            for kind, fn in plugin.su_handlers().items():
                if kind in self._handlers:
                    raise ValueError(f"two handlers for {kind}")
                self._handlers[kind] = lambda body, fn=fn: fn(self, body)
        self._sessions = Sessions(MAX_SESSIONS)
        self._t1: fastexp.T1Source | None = None

    # ------------------------------------------------------------------------------------------- plumbing

    def handle(self, kind: str, body: dict[str, Any], peer: tuple[str, str],
               call: Call | None = None) -> tuple[str, dict[str, Any]]:
        if peer[0] != "mu":
            raise KeyAccessError(f"only MU may call SU, not {peer[0]} {peer[1]}")
        handler = self._handlers.get(kind)
        if handler is None:
            raise ProtocolError(f"SU does not serve {kind!r}")
        result = handler(body)
        self.requests += 1
        if self.exit_after is not None and self.requests >= self.exit_after and kind != "hello":
            os._exit(17)  # fault injection for tests: die right after answering (the reply is lost)
        return result

    def _known_keys(self) -> dict[bytes, str]:
        registry = self._registry if self._registry is not None else (self.info.registry() if self.info else {})
        keys = {bytes.fromhex(e["pk"]): name for name, e in registry.items()}
        keys[codec.key_id(self.system_pk)] = "system"
        return keys

    def pool_for(self, key: bytes) -> PairPool:
        """The encryption pool of a registered public key (the system key if ``key`` is empty)."""
        if not key or key == codec.key_id(self.system_pk):
            return self.system_pool

        def make() -> PairPool:
            if key not in self._known_keys():
                raise KeyAccessError("target public key is not registered with this system")
            return PairPool(wire.public_key_from_bytes(self.params, key))

        return self._pools.get(key, make)

    def sessions(self) -> Sessions:
        return self._sessions

    def open(self, items: list[list[bytes]]) -> list[int]:
        if len(items) > MAX_ITEMS:
            raise ProtocolError("too many items")
        cts, parts = codec.load_pairs(self.params, items)
        return codec.psdec2_many(self.share, cts, parts, self.threads)

    def out(self, cts: Sequence[dtpkc.Ciphertext]) -> tuple[str, dict[str, Any]]:
        return "cts", {"cts": [codec.ct_to_bytes(self.params, c) for c in cts]}

    # ----------------------------------------------------------------------------------------- the blocks

    def _hello(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "ok", {"result": {"role": "su", "bits": self.params.bits}}

    def _stats(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        t1 = self._t1
        return "ok", {"result": {"requests": self.requests, "pool": len(self.system_pool),
                                 "online_pairs": self.system_pool.made_online, "lr_pool": len(t1) if t1 else 0,
                                 "lr_online": t1.made_online if t1 else 0}}

    def _key_switch(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Decrypt x + r (r uniform mod N, so x is perfectly hidden) and re-encrypt under the target key."""
        pool = self.pool_for(body["target"])
        return self.out([pool.encrypt(v) for v in self.open(body["items"])])

    def _mul(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """(a + r)(b + s) mod N under the system key, from two additively blinded operands."""
        flat = []
        for item in body["items"]:
            if len(item) != 4:
                raise ProtocolError("mul items are (ct_a, p_a, ct_b, p_b)")
            flat += [item[0:2], item[2:4]]
        values = self.open(flat)
        n = int(self.params.n)
        return self.out([self.system_pool.encrypt(values[i] * values[i + 1] % n) for i in range(0, len(values), 2)])

    def _compare(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Enc([v >= 0]) for v = r1 * (+-(a - b)) + r2: SU sees a sign MU has flipped at random."""
        pool = self.pool_for(body["target"])
        n = self.params.n
        return self.out([pool.encrypt(1 if codec.signed(v, n) >= 0 else 0) for v in self.open(body["items"])])

    def _shares_mulpack(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Open blinded packed counts into SU's shares d, then V_g = prod_i Q_i^(d_cell_i) * C_g, re-randomized."""
        width, slots, group = body["width"], body["slots"], body["group"]
        if not 8 <= width <= self.params.bits or slots < 1 or slots * width >= self.params.bits or group < 1:
            raise ProtocolError("bad packing parameters")
        shares: list[int] | None = None
        for owner_items in body["counts"]:
            values = [s for v in self.open(owner_items) for s in codec.unpack(v, width, slots)]
            shares = values if shares is None else [a + b for a, b in zip(shares, values, strict=False)]
            if len(values) != len(shares):
                raise ProtocolError("owners' count vectors differ in length")
        if shares is None:
            raise InputError("no counts to open")
        cells, q, c = body["cells"], body["q"], body["c"]
        if len(q) != len(cells) or len(c) != -(-len(cells) // group):
            raise ProtocolError("cells, q and c do not match")
        out = []
        n_sq = self.params.n_sq
        for g in range(len(c)):
            acc = codec.ct_from_bytes(self.params, c[g])
            for i in range(g * group, min(len(cells), (g + 1) * group)):
                if not cells[i] or any(not 0 <= k < len(shares) for k in cells[i]):
                    raise ProtocolError("cell index out of range")
                d = sum(shares[k] for k in cells[i])
                qi = codec.ct_from_bytes(self.params, q[i])
                term = dtpkc.scalar_mul(self.params, qi, d)
                acc = dtpkc.Ciphertext(acc.t1 * term.t1 % n_sq, acc.t2 * term.t2 % n_sq)
            out.append(self.system_pool.rerandomize(acc))
        return self.out(out)

    def _log_pack(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Logarithms of multiplicatively blinded values, combined and packed as MU asks, freshly encrypted."""
        group, vwidth, frac, width, offset = (body[k] for k in ("group", "vwidth", "frac", "width", "offset"))
        if group < 1 or group * vwidth >= self.params.bits or not 0 <= frac <= 64 or width < 2:
            raise ProtocolError("bad packing parameters")
        if len(body["gids"]) != len(body["groups"]):
            raise ProtocolError("gids and groups differ in length")
        values = self.open(body["groups"])
        logs: dict[int, int] = {}
        for gid, v in zip(body["gids"], values, strict=True):
            for s, x in enumerate(codec.unpack(v, vwidth, group)):
                if x > 0:
                    logs[gid * group + s] = round(math.log(x) * (1 << frac))
        out = []
        for output in body["outputs"]:
            slots = []
            for slot in output:
                total = offset
                for term in slot:
                    if len(term) != 2 or term[1] not in (1, -1):
                        raise ProtocolError("log terms are (cell, +-1)")
                    if term[0] not in logs:
                        raise InputError("a log cell is missing or not positive")
                    total += term[1] * logs[term[0]]
                slots.append(total)
            out.append(self.system_pool.encrypt(codec.pack(slots, width)))
        return self.out(out)

    def _select_sum(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Per query: open the rotated indices t_j = z_j mod B and sum the table entries MU sent in that order."""
        qwidth, bins, features = body["qwidth"], body["bins"], body["features"]
        if not 2 <= bins <= 1 << 16 or features < 1 or not 8 <= qwidth < self.params.bits:
            raise ProtocolError("bad selection parameters")
        per_ct = codec.slots_per_ct(self.params, qwidth)
        n_sq = self.params.n_sq
        out = []
        for query in body["queries"]:
            if len(query["table"]) != features * bins:
                raise ProtocolError("table size does not match features x bins")
            zs = [z for v in self.open(query["q"]) for z in codec.unpack(v, qwidth, per_ct)][:features]
            if len(zs) != features:
                raise ProtocolError("query has too few slots")
            acc = None
            for j, z in enumerate(zs):
                ct = codec.ct_from_bytes(self.params, query["table"][j * bins + z % bins])
                acc = ct if acc is None else dtpkc.Ciphertext(acc.t1 * ct.t1 % n_sq, acc.t2 * ct.t2 % n_sq)
            out.append(self.system_pool.rerandomize(acc))  # type: ignore[arg-type]
        return self.out(out)

    def _argmax(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Open affinely blinded, rotated packed scores; return the one-hot of the largest slot under the target."""
        classes, width = body["classes"], body["width"]
        if not 2 <= classes <= 4096 or classes * width >= self.params.bits:
            raise ProtocolError("bad argmax parameters")
        pool = self.pool_for(body["target"])
        out = []
        for v in self.open(body["items"]):
            slots = codec.unpack(v, width, classes)
            k = max(range(classes), key=lambda i: slots[i])
            out += [pool.encrypt(1 if i == k else 0) for i in range(classes)]
        return self.out(out)

    def t1(self) -> fastexp.T1Source:
        if self._t1 is None:
            self._t1 = fastexp.T1Source(self.system_pk)
        return self._t1
