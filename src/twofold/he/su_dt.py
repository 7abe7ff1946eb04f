"""SU's Priv-DT handlers: unpack blinded counts, select a rotated bin's condition, pick-and-sum, reveal a split.

Each handler sees only values MU has blinded (statistical masks, secret rotations, random coins) except
``dt.reveal``, which opens the split index MU asks for (revealed to both servers by design, docs/he.md). Every
ciphertext returned is a fresh T1-only encryption or re-randomization under the system key (or, for
``dt.pick``, the owner's key): they are opened only by the two-server decryption, which reads T1 alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twofold.crypto import dtpkc
from twofold.errors import ProtocolError
from twofold.he import codec
from twofold.he.models.dt import t1_enc, t1_rerand

if TYPE_CHECKING:
    from twofold.he.su import SecondaryUnit


def unpack(su: SecondaryUnit, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Open packed counts blinded slot-wise (n + m, m uniform on [0, 2^60)); fresh system-key encryption per slot."""
    width, slots, count = body["width"], body["slots"], body["count"]
    if width < 8 or slots < 1 or slots * width >= su.params.bits or count < 1:
        raise ProtocolError("bad packing parameters")
    per = -(-count // slots)
    values = su._open(body["items"])
    if len(values) % per:
        raise ProtocolError("count vectors are not whole")
    out = []
    for r in range(0, len(values), per):
        flat = [v for x in values[r:r + per] for v in codec.unpack(x, width, slots)][:count]
        out += [t1_enc(su.system_pool, v) for v in flat]
    return su._out(out)


def select(su: SecondaryUnit, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Per item: open the rotated bins t_j = z_j mod B and return each table's entry at t_j, re-randomized."""
    qwidth, bins, features = body["qwidth"], body["bins"], body["features"]
    if not 2 <= bins <= 1 << 16 or features < 1 or not 8 <= qwidth < su.params.bits:
        raise ProtocolError("bad selection parameters")
    per_ct = codec.slots_per_ct(su.params, qwidth)
    out = []
    for item in body["items"]:
        zs = [z for v in su._open(item["q"]) for z in codec.unpack(v, qwidth, per_ct)][:features]
        if len(zs) != features:
            raise ProtocolError("too few bins")
        for sel in item["sel"]:
            if not 0 <= sel["feature"] < features or len(sel["table"]) != bins:
                raise ProtocolError("bad selection table")
            ct = codec.ct_from_bytes(su.params, sel["table"][zs[sel["feature"]] % bins])
            out.append(t1_rerand(su.system_pool, ct))
    return su._out(out)


def pick(su: SecondaryUnit, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Per group: open the uniform bits e_i (packed one per slot) and add up the records' ciphertexts with
    e_i = 1, re-randomized."""
    width, slots, p = body["width"], body["slots"], su.params
    if width < 1 or not 1 <= slots <= p.bits - 2:
        raise ProtocolError("bad width")
    n_sq = p.n_sq
    out = []
    for group in body["groups"]:
        pool = su.pool_for(group["key"])
        bits = [e for v in su._open(group["bits"]) for e in codec.unpack(v, 1, slots)][:len(group["cts"])]
        if len(bits) != len(group["cts"]) or not bits:
            raise ProtocolError("bits and records differ in length")
        acc = [t1_enc(pool, 0) for _ in range(width)]
        for e, cts in zip(bits, group["cts"], strict=True):
            if len(cts) != width:
                raise ProtocolError("a record is malformed")
            if e:
                acc = [dtpkc.Ciphertext(a.t1 * c.t1 % n_sq, 1) for a, c in zip(acc, codec.cts_from_bytes(p, cts),
                                                                                strict=True)]
        out += acc  # acc started from fresh encryptions of zero: re-randomized
    return su._out(out)


def mul(su: SecondaryUnit, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Open packed operands a + r, b + s (statistical masks) and return a fresh encryption of each product."""
    width, count, p = body["width"], body["count"], su.params
    if width < 8 or 2 * width + 2 >= p.bits or count < 2 or count % 2:
        raise ProtocolError("bad multiplication parameters")
    slots = codec.slots_per_ct(p, width)
    values = [v for x in su._open(body["items"]) for v in codec.unpack(x, width, slots)]
    if len(values) < count or len(body["items"]) != -(-count // slots):
        raise ProtocolError("too few operands")
    n = int(p.n)
    return su._out([t1_enc(su.system_pool, values[i] * values[i + 1] % n) for i in range(0, count, 2)])


def duel(su: SecondaryUnit, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Per item: open the blinded comparison value v (its sign is a fair coin) and return fresh
    re-randomizations of the candidate in front (the first ``width`` ciphertexts) if v >= 0, else of the other."""
    width, p = body["width"], su.params
    if not 1 <= width <= 16 or len(body["entries"]) != len(body["items"]):
        raise ProtocolError("bad duel parameters")
    if any(len(e) != 2 * width for e in body["entries"]):
        raise ProtocolError("a duel needs two candidates of the given width")
    out = []
    for v, entry in zip(su._open(body["items"]), body["entries"], strict=True):
        chosen = entry[:width] if codec.signed(v, p.n) >= 0 else entry[width:]
        out += [t1_rerand(su.system_pool, ct) for ct in codec.cts_from_bytes(p, chosen)]
    return su._out(out)


def reveal(su: SecondaryUnit, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Open chosen split indices (public by design); refuses anything outside [0, bound)."""
    values = su._open(body["items"])
    if any(not 0 <= v < body["bound"] for v in values):
        raise ProtocolError("a revealed value is out of range")
    return "ok", {"result": {"values": values}}
