"""SU, the secondary computation unit: holds the strong-key share lambda2 and answers MU's building blocks.

SU only ever decrypts values MU has blinded (additively with statistical masks, or multiplicatively with
log-uniform factors) and returns fresh encryptions; it keeps no per-request state, so a restarted SU serves the
next request as if nothing happened. Every ciphertext it returns is freshly encrypted or re-randomized.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from typing import Any

from twofold.crypto import dtpkc
from twofold.errors import InputError, KeyAccessError, ProtocolError
from twofold.he import codec, fastexp, su_dt
from twofold.he.keys import SystemInfo
from twofold.he.randomness import KeyPools, PairPool
from twofold.he.transport import Call

MAX_ITEMS = 1_000_000
MAX_SESSIONS = 4


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
            "lr.load": self._lr_load, "lr.forward": self._lr_forward, "lr.sigmoid": self._lr_sigmoid,
            "lr.backward": self._lr_backward, "lr.scale": self._lr_scale, "lr.dot": self._lr_dot,
            "lr.close": self._lr_close,
            "dt.unpack": lambda b: su_dt.unpack(self, b), "dt.select": lambda b: su_dt.select(self, b),
            "dt.pick": lambda b: su_dt.pick(self, b), "dt.reveal": lambda b: su_dt.reveal(self, b),
            "dt.mul": lambda b: su_dt.mul(self, b), "dt.duel": lambda b: su_dt.duel(self, b),
        }
        self._sessions: OrderedDict[str, dict[str, Any]] = OrderedDict()
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
            return PairPool(dtpkc.public_key_from_bytes(self.params, key))

        return self._pools.get(key, make)

    def _open(self, items: list[list[bytes]]) -> list[int]:
        if len(items) > MAX_ITEMS:
            raise ProtocolError("too many items")
        cts, parts = codec.load_pairs(self.params, items)
        return codec.psdec2_many(self.share, cts, parts, self.threads)

    def _out(self, cts: list[dtpkc.Ciphertext]) -> tuple[str, dict[str, Any]]:
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
        return self._out([pool.encrypt(v) for v in self._open(body["items"])])

    def _mul(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """(a + r)(b + s) mod N under the system key, from two additively blinded operands."""
        flat = []
        for item in body["items"]:
            if len(item) != 4:
                raise ProtocolError("mul items are (ct_a, p_a, ct_b, p_b)")
            flat += [item[0:2], item[2:4]]
        values = self._open(flat)
        n = int(self.params.n)
        return self._out([self.system_pool.encrypt(values[i] * values[i + 1] % n) for i in range(0, len(values), 2)])

    def _compare(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Enc([v >= 0]) for v = r1 * (+-(a - b)) + r2: SU sees a sign MU has flipped at random."""
        pool = self.pool_for(body["target"])
        n = self.params.n
        return self._out([pool.encrypt(1 if codec.signed(v, n) >= 0 else 0) for v in self._open(body["items"])])

    def _shares_mulpack(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Open blinded packed counts into SU's shares d, then V_g = prod_i Q_i^(d_cell_i) * C_g, re-randomized."""
        width, slots, group = body["width"], body["slots"], body["group"]
        if not 8 <= width <= self.params.bits or slots < 1 or slots * width >= self.params.bits or group < 1:
            raise ProtocolError("bad packing parameters")
        shares: list[int] | None = None
        for owner_items in body["counts"]:
            values = [s for v in self._open(owner_items) for s in codec.unpack(v, width, slots)]
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
        return self._out(out)

    def _log_pack(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Logarithms of multiplicatively blinded values, combined and packed as MU asks, freshly encrypted."""
        group, vwidth, frac, width, offset = (body[k] for k in ("group", "vwidth", "frac", "width", "offset"))
        if group < 1 or group * vwidth >= self.params.bits or not 0 <= frac <= 64 or width < 2:
            raise ProtocolError("bad packing parameters")
        if len(body["gids"]) != len(body["groups"]):
            raise ProtocolError("gids and groups differ in length")
        values = self._open(body["groups"])
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
        return self._out(out)

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
            zs = [z for v in self._open(query["q"]) for z in codec.unpack(v, qwidth, per_ct)][:features]
            if len(zs) != features:
                raise ProtocolError("query has too few slots")
            acc = None
            for j, z in enumerate(zs):
                ct = codec.ct_from_bytes(self.params, query["table"][j * bins + z % bins])
                acc = ct if acc is None else dtpkc.Ciphertext(acc.t1 * ct.t1 % n_sq, acc.t2 * ct.t2 % n_sq)
            out.append(self.system_pool.rerandomize(acc))  # type: ignore[arg-type]
        return self._out(out)

    def _argmax(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Open affinely blinded, rotated packed scores; return the one-hot of the largest slot under the target."""
        classes, width = body["classes"], body["width"]
        if not 2 <= classes <= 4096 or classes * width >= self.params.bits:
            raise ProtocolError("bad argmax parameters")
        pool = self.pool_for(body["target"])
        out = []
        for v in self._open(body["items"]):
            slots = codec.unpack(v, width, classes)
            k = max(range(classes), key=lambda i: slots[i])
            out += [pool.encrypt(1 if i == k else 0) for i in range(classes)]
        return self._out(out)

    # ----------------------------------------------------------------------------------------- Priv-LR

    def t1(self) -> fastexp.T1Source:
        if self._t1 is None:
            self._t1 = fastexp.T1Source(self.system_pk)
        return self._t1

    def _session(self, sid: str) -> dict[str, Any]:
        if sid not in self._sessions:
            raise InputError("unknown or expired Priv-LR session (SU restarted?): rerun train")
        return self._sessions[sid]

    def _rows(self, body: dict[str, Any]) -> list[list[int]]:
        """Open blinded packed records into rows [2^FX, x_1 + m_1, ...] (SU's additive share)."""
        from twofold.he.models.lr import FX

        cols, width, slots, per = body["cols"], body["width"], body["slots"], body["per"]
        if not 1 <= cols <= 4096 or slots < 1 or slots * width >= self.params.bits or per != -(-cols // slots):
            raise ProtocolError("bad record layout")
        values = self._open(body["x"])
        if len(values) % per:
            raise ProtocolError("records are not whole")
        rows = []
        for r in range(0, len(values), per):
            flat = [v for x in values[r:r + per] for v in codec.unpack(x, width, slots)]
            rows.append([1 << FX, *flat[:cols]])
        return rows

    def _lr_load(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Keep the opened share A = X + M' for the session, in parts (``first`` starts the session, later parts
        append rows, so MU prepares the next part while SU opens this one); return the opened label statistics
        re-encrypted."""
        swidth, sslots, sid = body["swidth"], body["sslots"], body["session"]
        if sslots < 1 or swidth * sslots >= self.params.bits:
            raise ProtocolError("bad statistics layout")
        if body["first"] == (sid in self._sessions):
            raise InputError("Priv-LR session already started" if body["first"] else
                             "unknown or expired Priv-LR session (SU restarted?): rerun train")
        rows = self._rows(body)
        if not rows and body["first"]:
            raise InputError("no records to train on")
        if not body["first"] and rows and len(rows[0]) != len(self._sessions[sid]["a"][0]):
            raise ProtocolError("records do not match the session's columns")
        t1 = self.t1()
        out = [t1.encrypt(v) for x in self._open(body["stats"]) for v in codec.unpack(x, swidth, sslots)]
        if not body["first"]:
            self._sessions[sid]["a"] += rows
            self._sessions[sid].pop("columns", None)
            return self._out(out)
        self._sessions[sid] = {"a": rows, "e": None}
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return self._out(out)

    def _lr_forward(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """[A_i . w] for every stored row, re-randomized."""
        rows = self._session(body["session"])["a"]
        w = codec.cts_from_bytes(self.params, body["w"])
        if len(w) != len(rows[0]):
            raise ProtocolError("weights do not match the session's columns")
        t1 = self.t1()
        return self._out([t1.rerandomize(c) for c in fastexp.t1_multiexp(w, rows, self.params)])

    def _lr_sigmoid(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Open s = z + r; [e] = sum_k c_k (sin(h s') [cos(h r')] - cos(h s') [sin(h r')]) by angle addition."""
        session = self._session(body["session"])
        n = len(session["a"])
        zwidth, zslots, period, harmonics, coef = (body[k] for k in ("zwidth", "zslots", "period", "harmonics",
                                                                    "coef"))
        if zslots < 1 or zwidth * zslots >= self.params.bits or period < 2 or not 1 <= len(harmonics) <= 16 \
                or len(coef) != len(harmonics) or any(abs(c) >= 1 << 32 for c in coef) \
                or any(not 1 <= h <= 1 << 16 for h in harmonics):
            raise ProtocolError("bad sigmoid parameters")
        s = [v for x in self._open(body["z"]) for v in codec.unpack(x, zwidth, zslots)][:n]
        trig = codec.cts_from_bytes(self.params, body["trig"])
        k = len(harmonics)
        if len(s) != n or len(trig) != 2 * k * n:
            raise ProtocolError("sigmoid inputs do not match the session")
        from twofold.he.models.lr import angle_sums

        exps = []
        for v in s:
            phase = 2 * math.pi * (v % period) / period
            row = []
            for h, c in zip(harmonics, coef, strict=True):
                row += [round(c * math.sin(h * phase)), -round(c * math.cos(h * phase))]
            exps.append(row)
        t1 = self.t1()
        out = [t1.rerandomize(c) for c in angle_sums(trig, exps, max(abs(c) for c in coef), self.params)]
        session["e"] = out
        return self._out(out)

    def _lr_backward(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """[A^T e] from the session's share and its last sigmoid values."""
        session = self._session(body["session"])
        if session["e"] is None:
            raise InputError("no sigmoid values in this session yet")
        if "columns" not in session:
            session["columns"] = [list(col) for col in zip(*session["a"], strict=True)]
        t1 = self.t1()
        return self._out([t1.rerandomize(c) for c in fastexp.t1_multiexp_buckets(session["e"], session["columns"],
                                                                                 self.params)])

    def _lr_scale(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Enc(floor(v * mult / 2^shift)) for each opened blinded slot v."""
        width, slots, count, mult, shift = (body[k] for k in ("width", "slots", "count", "mult", "shift"))
        if slots < 1 or width * slots >= self.params.bits or not 0 < mult < 1 << 64 or not 0 <= shift <= 1024:
            raise ProtocolError("bad scaling parameters")
        values = [v for x in self._open(body["items"]) for v in codec.unpack(x, width, slots)][:count]
        if len(values) != count:
            raise ProtocolError("too few slots")
        t1 = self.t1()
        return self._out([t1.encrypt((v * mult) >> shift) for v in values])

    def _lr_dot(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """[(x + m) . w] for opened blinded queries (no state kept)."""
        rows = self._rows(body)
        w = codec.cts_from_bytes(self.params, body["w"])
        if rows and len(w) != len(rows[0]):
            raise ProtocolError("weights do not match the queries")
        t1 = self.t1()
        return self._out([t1.rerandomize(c) for c in fastexp.t1_multiexp(w, rows, self.params)])

    def _lr_close(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        self._sessions.pop(body["session"], None)
        return "ok", {"result": {}}
