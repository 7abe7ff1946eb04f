"""SU's Priv-DT handlers: unpack blinded counts, select a rotated bin's condition, pick-and-sum, reveal a split.

Each handler sees only values MU has blinded (statistical masks, secret rotations, random coins) except
``dt.reveal``, which opens the split index MU asks for (revealed to both servers by design, docs/he.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twofold.crypto import dtpkc
from twofold.errors import ProtocolError
from twofold.he import codec

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
        out += [su.system_pool.encrypt(v) for v in flat]
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
            out.append(su.system_pool.rerandomize(ct))
    return su._out(out)


def pick(su: SecondaryUnit, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Per group: open the uniform bits e_i and add up the records' ciphertexts with e_i = 1, re-randomized."""
    width, p = body["width"], su.params
    if width < 1:
        raise ProtocolError("bad width")
    n_sq = p.n_sq
    out = []
    for group in body["groups"]:
        pool = su.pool_for(group["key"])
        bits = su._open(group["bits"])
        if len(bits) != len(group["cts"]) or not bits:
            raise ProtocolError("bits and records differ in length")
        acc = [pool.encrypt(0) for _ in range(width)]
        for e, cts in zip(bits, group["cts"], strict=True):
            if e not in (0, 1) or len(cts) != width:
                raise ProtocolError("a selection bit is not 0/1 or a record is malformed")
            if e:
                acc = [dtpkc.Ciphertext(a.t1 * c.t1 % n_sq, a.t2 * c.t2 % n_sq)
                       for a, c in zip(acc, codec.cts_from_bytes(p, cts), strict=True)]
        out += acc  # acc started from fresh encryptions of zero: re-randomized
    return su._out(out)


def reveal(su: SecondaryUnit, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Open chosen split indices (public by design); refuses anything outside [0, bound)."""
    values = su._open(body["items"])
    if any(not 0 <= v < body["bound"] for v in values):
        raise ProtocolError("a revealed value is out of range")
    return "ok", {"result": {"values": values}}
