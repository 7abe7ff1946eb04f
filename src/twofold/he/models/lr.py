"""Priv-LR: logistic regression trained by MU and SU over the owners' encrypted records (full-batch GD).

Encoding. Features are standardized with public means and deviations (``public/lr.json``), clipped to [-8, 8]
and scaled by 2^8 (FX); weights carry 2^16 (FW), so z = x.w carries 2^24. The intercept is a constant feature.

Sigmoid. sigma(z) ~ 1/2 + sum_k a_k sin(h_k pi z / (2L)) with L = 24 and odd harmonics h = (1, 3), a_k fitted
by least squares on [-L, L] (a quarter-wave Fourier series: it saturates like the sigmoid, unlike a cubic).
A sine of a blinded input splits by angle addition: with s = z + r at SU and r at MU,
sin(h w z) = sin(h w s) cos(h w r) - cos(h w s) sin(h w r), so SU evaluates its half in the clear on a value
that statistically hides z, MU supplies [cos(h w r)], [sin(h w r)], and the product happens under encryption.

Training (per run): MU opens each record once into SU's additive share A = X + M' (M' MU's fresh statistical
masks, kept only for the run); per iteration, four SU round trips: (1) SU computes [A w] from the encrypted
weights while MU computes [M' w]; (2) SU opens the packed blinded z + r and returns [e_i] = [sum_k a_k
sin(h_k w z_i)]; (3) SU computes [A^T e] while MU computes [M'^T e]; (4) the gradient, blinded, is scaled by
lr/n and truncated at SU, and MU updates [w]. Label terms X^T(1/2 - y) come from an encrypted per-owner
aggregate (summed homomorphically at upload), so labels are never opened. Warm start: training starts from
the stored encrypted weights when they exist.

Inference: the client's query, packed under its key, is opened blinded at SU, which returns [(x + m) . w];
MU subtracts [m . w] and the comparison block returns Enc_client([z >= 0]) = the class index.
"""

from __future__ import annotations

import contextlib
import json
import math
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gmpy2
import numpy as np
from gmpy2 import mpz

from twofold.crypto import dtpkc
from twofold.crypto import dtpkc_wire as wire
from twofold.errors import InputError, ProtocolError
from twofold.he import codec, fastexp
from twofold.he.blocks import Blocks
from twofold.he.models.schema import ClassSchema

FX = 8  # feature fraction bits
FW = 16  # weight fraction bits
FZ = FX + FW
FT = 14  # trigonometric fraction bits
CLIP = 8.0
XMAX = 1 << 11  # |encoded feature| <= 2^11 (clip 8 * 2^8)
XBITS = 12
COUNT_BITS = 20
KAPPA = codec.KAPPA
AWIDTH = XBITS + KAPPA + 1  # opened record slots: x + 2^11 + m
SWIDTH = XBITS + COUNT_BITS + KAPPA + 2  # label-statistics slots
ZBITS = 44  # |z| < 2^43 at scale 2^24
ZWIDTH = ZBITS + KAPPA + 1
GBITS = 66  # |gradient| < 2^65 at scale 2^(FX + 2 FT)
GWIDTH = GBITS + KAPPA + 1
HALF = 24  # L: the series matches the sigmoid on [-L, L]
HARMONICS = (1, 3)
PERIOD = 4 * HALF << FZ  # period of the series in fixed-point units of z
RATE = 2.0
ITERATIONS = 10
SCALE_BITS = 24
LOAD_PART = 50  # records per lr.load request (pipelined)
OWNER_WINDOW = 6  # fixed-base window of the per-owner tables built once per run


def _fit_coefficients() -> list[float]:
    zz = np.linspace(-HALF, HALF, 2001)
    basis = np.stack([np.sin(h * math.pi * zz / (2 * HALF)) for h in HARMONICS], 1)
    return [float(a) for a in np.linalg.lstsq(basis, 1 / (1 + np.exp(-zz)) - 0.5, rcond=None)[0]]


COEF = _fit_coefficients()
COEF_INT = [round(a * (1 << FT)) for a in COEF]


def sigmoid_approx(z: float) -> float:
    """The series MU and SU evaluate (for references and tests)."""
    return 0.5 + sum(a * math.sin(h * math.pi * z / (2 * HALF)) for a, h in zip(COEF, HARMONICS, strict=True))


# ------------------------------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class LRSchema(ClassSchema):
    """Public standardization: feature names, label, the two classes, means and deviations."""

    MODEL: ClassVar[str] = "lr"

    mean: list[float]
    std: list[float]

    def __post_init__(self) -> None:
        if len(self.classes) != 2:
            raise InputError("Priv-LR needs exactly two classes")
        if not self.features or not len(self.mean) == len(self.std) == len(self.features):
            raise InputError("Priv-LR needs a mean and a deviation for every feature")

    def encode_row(self, row: Sequence[float]) -> list[int]:
        """Standardized, clipped, fixed-point features in [-2^11, 2^11)."""
        out = []
        for x, m, s in zip(row, self.mean, self.std, strict=True):
            v = (float(x) - m) / (s or 1.0)
            out.append(max(-XMAX, min(XMAX - 1, round(max(-CLIP, min(CLIP, v)) * (1 << FX)))))
        return out

    @classmethod
    def _fields(cls, doc: dict[str, Any]) -> dict[str, Any]:
        return {**super()._fields(doc), "mean": [float(x) for x in doc["mean"]],
                "std": [float(x) for x in doc["std"]]}


def fit_schema(features: list[str], label: str, xs: Sequence[Sequence[float]], ys: Sequence[str]) -> LRSchema:
    """Means and deviations of data (in deployment the owners agree on public values instead)."""
    arr = np.asarray(xs, dtype=float)
    classes = sorted({str(y) for y in ys}, key=lambda v: (len(v), v))
    return LRSchema(list(features), label, classes, arr.mean(0).tolist(), arr.std(0).tolist())


@dataclass(frozen=True)
class Layout:
    """Sizes that depend on the key and the schema."""

    bits: int
    features: int

    @property
    def aslots(self) -> int:
        return (self.bits - 2) // AWIDTH

    @property
    def a_cts(self) -> int:
        return -(-self.features // self.aslots)

    @property
    def sslots(self) -> int:
        return (self.bits - 2) // SWIDTH

    @property
    def s_cts(self) -> int:
        return -(-(self.features + 1) // self.sslots)

    @property
    def cts_per_record(self) -> int:
        return self.a_cts + self.s_cts

    @property
    def zslots(self) -> int:
        return (self.bits - 2) // ZWIDTH

    @property
    def gslots(self) -> int:
        return (self.bits - 2) // GWIDTH

    def check(self) -> None:
        if min(self.aslots, self.sslots, self.zslots, self.gslots) < 1:
            raise InputError(f"a {self.bits}-bit key is too small for Priv-LR")


def layout_for(params: dtpkc.PublicParams, schema: LRSchema) -> Layout:
    lay = Layout(params.bits, len(schema.features))
    lay.check()
    return lay


# ------------------------------------------------------------------------------------------ owner and client


def encrypt_record(encrypt: Callable[[int], dtpkc.Ciphertext], lay: Layout, x: Sequence[int],
                   y: int) -> list[dtpkc.Ciphertext]:
    """Packed features (x + 2^11 per slot), then the label statistics (1 - 2y) * (1, x) + 2^11 per slot."""
    sign = 1 - 2 * y
    xs = [v + XMAX for v in x]
    stats = [sign * v + XMAX for v in [1 << FX, *x]]
    return ([encrypt(codec.pack(c, AWIDTH)) for c in codec.chunks(xs, lay.aslots)]
            + [encrypt(codec.pack(c, SWIDTH)) for c in codec.chunks(stats, lay.sslots)])


def encrypt_query(encrypt: Callable[[int], dtpkc.Ciphertext], lay: Layout, x: Sequence[int]) -> list[dtpkc.Ciphertext]:
    return [encrypt(codec.pack(c, AWIDTH)) for c in codec.chunks([v + XMAX for v in x], lay.aslots)]


# ----------------------------------------------------------------------------------------------- helpers


def _in_thread(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Run fn in a thread (the SU request waits on the socket, MU computes meanwhile); returns a joiner."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def join() -> Any:
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    return join


def _pack_t1(cts: Sequence[dtpkc.Ciphertext], width: int, params: dtpkc.PublicParams) -> dtpkc.Ciphertext:
    acc = cts[-1]
    for ct in reversed(cts[:-1]):
        acc = fastexp.t1_add(fastexp.t1_scalar(acc, 1 << width, params), ct, params)
    return acc


def angle_sums(trig: Sequence[dtpkc.Ciphertext], exps: Sequence[Sequence[int]], bound: int,
               params: dtpkc.PublicParams) -> list[dtpkc.Ciphertext]:
    """[sum_j e_ij t_ij] (T1 only) per row i from the row's ciphertexts [t_ij] (consecutive in ``trig``) and
    signed exponents |e_ij| <= bound: prod_j T_j^(e_j + bound) * (prod_j T_j)^(-bound), one shared-squaring
    multi-exponentiation per row and one modular inversion for all rows."""
    n_sq = params.n_sq
    per = len(exps[0]) if exps else 0
    if len(trig) != per * len(exps) or any(len(row) != per or any(abs(e) > bound for e in row) for row in exps):
        raise ProtocolError("sigmoid terms do not match their exponents")
    groups = [[c.t1 for c in trig[i * per:(i + 1) * per]] for i in range(len(exps))]
    products = []
    for bases in groups:
        acc = bases[0]
        for b in bases[1:]:
            acc = acc * b % n_sq
        products.append(acc)
    inverses = fastexp.invert_many(products, n_sq)
    return [dtpkc.Ciphertext(fastexp.multiexp_small([*bases, inv], [*(e + bound for e in row), bound], n_sq), 1)
            for bases, inv, row in zip(groups, inverses, exps, strict=True)]


class _Opener:
    """Blind, pack and partially decrypt system-key values for SU (fresh masks every call)."""

    def __init__(self, blocks: Blocks, t1: fastexp.T1Source) -> None:
        self.blocks, self.t1, self.params = blocks, t1, blocks.params

    def open_packed(self, cts: Sequence[dtpkc.Ciphertext], value_bits: int, width: int,
                    slots: int) -> tuple[list[list[bytes]], list[int]]:
        """Items for SU holding v + 2^(value_bits-1) + R per slot; returns (items, offsets+masks)."""
        p = self.params
        masks = [(1 << (value_bits - 1)) + secrets.randbelow(1 << (value_bits + KAPPA)) for _ in cts]
        blinded = [fastexp.t1_add_plain(c, m, p) for c, m in zip(cts, masks, strict=True)]
        packed = [self.t1.rerandomize(_pack_t1(chunk, width, p)) for chunk in codec.chunks(blinded, slots)]
        return self.blocks.open_items(packed), masks


# ----------------------------------------------------------------------------------------------- training


@dataclass
class OwnerData:
    """One owner's uploads as MU stores them: record ciphertexts and the label-statistics aggregate."""

    pk: dtpkc.PublicKey
    records: int
    x: list[bytes]
    stats: list[bytes]
    partials: list[bytes] | None = None  # MU's PSDec1 of each record ciphertext, computed once at upload


def upload_partials(share1: dtpkc.StrongKeyShare, cts: Sequence[dtpkc.Ciphertext], threads: int = 2) -> list[bytes]:
    """MU's partial decryptions T1^lambda1 of uploaded record ciphertexts (stored with them; see ``Session``)."""
    return [codec.partial_to_bytes(share1.params, q) for q in codec.psdec1_many(share1, cts, threads)]


class _Reopener:
    """Fresh (ciphertext, PSDec1) pairs of masked records from the PSDec1 stored at upload: for
    ct' = ct (1 + mN) h^r, PSDec1(ct') = ct^lambda1 (1 + (m lambda1 mod N) N) (h^lambda1)^r, with r fresh per record
    (two fixed-base powers instead of one full-length power)."""

    def __init__(self, share1: dtpkc.StrongKeyShare, src: fastexp.T1Source) -> None:
        params = src.params
        self.src, self.n, self.n_sq, self.lam = src, int(params.n), params.n_sq, int(share1.value)
        self._hl = dtpkc.FixedBaseTable(gmpy2.powmod(src.pk.h, share1.value, self.n_sq), self.n_sq, params.bits,
                                        OWNER_WINDOW)

    def open(self, ct: dtpkc.Ciphertext, partial: mpz, m: int) -> tuple[dtpkc.Ciphertext, dtpkc.PartialDecryption]:
        r = secrets.randbelow(self.n - 1) + 1
        m %= self.n
        t1 = ct.t1 * (1 + m * self.n) % self.n_sq * self.src.power(r) % self.n_sq
        q = partial * (1 + m * self.lam % self.n * self.n) % self.n_sq * self._hl.pow(r) % self.n_sq
        return dtpkc.Ciphertext(t1, 1), dtpkc.PartialDecryption(q)


class Session:
    """One training run: MU's masks M' and the SU session holding A = X + M'."""

    def __init__(self, blocks: Blocks, t1: fastexp.T1Source, lay: Layout, owners: Sequence[OwnerData]) -> None:
        self.blocks, self.t1, self.lay = blocks, t1, lay
        self.params = blocks.params
        self.id = secrets.token_hex(16)
        self.mask_rows: list[list[int]] = []
        self.stats: list[dtpkc.Ciphertext] = []
        self._load(owners)

    def _load(self, owners: Sequence[OwnerData]) -> None:
        """Open the records into SU's share in parts of LOAD_PART records, pipelined: MU masks, re-randomizes and
        partially decrypts part k + 1 while SU opens part k (the label statistics travel with the last part)."""
        p, lay, link = self.params, self.lay, self.blocks.link
        sources = [fastexp.T1Source(owner.pk, OWNER_WINDOW) for owner in owners]  # ~200 uses each: window 6
        reopeners: dict[int, _Reopener] = {}
        records = []  # (owner index, the record's ciphertexts, their stored PSDec1 or None)
        for o, owner in enumerate(owners):
            cts = codec.cts_from_bytes(p, owner.x)
            if len(cts) != owner.records * lay.a_cts:
                raise InputError("an owner's records do not match the schema")
            parts: list[mpz | None] = [None] * len(cts)
            if owner.partials is not None and len(owner.partials) == len(cts):
                parts = [wire.partial_from_bytes(p, b).value for b in owner.partials]
            records += [(o, cts[r * lay.a_cts:(r + 1) * lay.a_cts], parts[r * lay.a_cts:(r + 1) * lay.a_cts])
                        for r in range(owner.records)]

        def part(group: Sequence[tuple[int, list[dtpkc.Ciphertext], list[mpz | None]]]) -> list[list[bytes]]:
            ready, todo = [], []
            for o, cts, stored in group:
                masks = [secrets.randbelow(1 << (XBITS + KAPPA)) for _ in range(lay.features)]
                self.mask_rows.append([0] + [XMAX + m for m in masks])
                for ct, q, chunk in zip(cts, stored, codec.chunks(masks, lay.aslots), strict=True):
                    m = codec.pack(chunk, AWIDTH)
                    if q is None:
                        todo.append((len(ready), sources[o].rerandomize(fastexp.t1_add_plain(ct, m, p))))
                        ready.append(None)
                    else:
                        if o not in reopeners:
                            reopeners[o] = _Reopener(self.blocks.share, sources[o])
                        ready.append(reopeners[o].open(ct, q, m))
            for (i, ct), q in zip(todo, codec.psdec1_many(self.blocks.share, [c for _, c in todo],
                                                          self.blocks.threads), strict=True):
                ready[i] = (ct, q)
            return codec.pair_items(p, [c for c, _ in ready], [q for _, q in ready])  # type: ignore[misc]

        s_cts, s_masks = [], []
        for owner, src in zip(owners, sources, strict=True):
            masks = [secrets.randbelow(1 << (XBITS + COUNT_BITS + KAPPA)) for _ in range(lay.features + 1)]
            s_masks.append((owner.records, masks))
            s_cts += [src.rerandomize(fastexp.t1_add_plain(ct, codec.pack(chunk, SWIDTH), p))
                      for ct, chunk in zip(codec.cts_from_bytes(p, owner.stats), codec.chunks(masks, lay.sslots),
                                           strict=True)]
        groups = codec.chunks(records, LOAD_PART)
        join: Callable[[], Any] | None = None
        for k, group in enumerate(groups):
            last = k == len(groups) - 1
            body = {"session": self.id, "first": k == 0, "cols": lay.features, "width": AWIDTH,
                    "slots": lay.aslots, "per": lay.a_cts, "x": part(group),
                    "stats": self.blocks.open_items(s_cts) if last else [], "swidth": SWIDTH, "sslots": lay.sslots}
            if join is not None:
                join()
            join = _in_thread(lambda b=body: link.request("lr.load", b))
        if join is None:
            raise InputError("no training data uploaded yet")
        out = codec.cts_from_bytes(p, join()["cts"])
        if len(out) != len(s_cts) * lay.sslots:
            raise ProtocolError("SU returned the wrong number of statistics")
        total = [self.t1.encrypt(0) for _ in range(lay.features + 1)]
        per_owner = lay.s_cts * lay.sslots
        for o, (records, masks) in enumerate(s_masks):
            for j in range(lay.features + 1):
                ct = fastexp.t1_add_plain(out[o * per_owner + j], -(records * XMAX + masks[j]), p)
                total[j] = fastexp.t1_add(total[j], ct, p)
        self.stats = total  # [sum_i (1 - 2 y_i) x_ij] at scale 2^FX
        self.mask_columns = [list(col) for col in zip(*self.mask_rows, strict=True)]

    @property
    def n(self) -> int:
        return len(self.mask_rows)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # SU may be gone; its session dies with it
            self.blocks.link.request("lr.close", {"session": self.id})

    def step(self, w: list[dtpkc.Ciphertext]) -> list[dtpkc.Ciphertext]:
        """One gradient step on the encrypted weights."""
        p, lay, link, t1 = self.params, self.lay, self.blocks.link, self.t1
        # (1) z = A w - M' w, SU and MU in parallel; MU also prepares its trigonometric halves
        body = {"session": self.id, "w": [codec.ct_to_bytes(p, t1.rerandomize(c)) for c in w]}
        join = _in_thread(lambda: link.request("lr.forward", body))
        mw = fastexp.t1_multiexp(w, self.mask_rows, p)
        rs = [secrets.randbelow(1 << (ZBITS + KAPPA)) for _ in range(self.n)]
        trig = []
        for r in rs:
            phase = 2 * math.pi * (((1 << (ZBITS - 1)) + r) % PERIOD) / PERIOD
            for h in HARMONICS:
                trig += [t1.encrypt(round(math.cos(h * phase) * (1 << FT))),
                         t1.encrypt(round(math.sin(h * phase) * (1 << FT)))]
        aw = codec.cts_from_bytes(p, join()["cts"])
        if len(aw) != self.n:
            raise ProtocolError("SU returned the wrong number of products")
        z = [fastexp.t1_sub(a, b, p) for a, b in zip(aw, mw, strict=True)]
        # (2) SU opens z + r and returns [e_i] = [sum_k a_k sin(h_k w z_i)] at scale 2^(2 FT)
        blinded = [fastexp.t1_add_plain(c, (1 << (ZBITS - 1)) + r, p) for c, r in zip(z, rs, strict=True)]
        packed = [t1.rerandomize(_pack_t1(chunk, ZWIDTH, p)) for chunk in codec.chunks(blinded, lay.zslots)]
        body = {"session": self.id, "z": self.blocks.open_items(packed), "zwidth": ZWIDTH, "zslots": lay.zslots,
                "trig": [codec.ct_to_bytes(p, c) for c in trig], "period": PERIOD, "harmonics": list(HARMONICS),
                "coef": COEF_INT}
        e = codec.cts_from_bytes(p, link.request("lr.sigmoid", body)["cts"])
        if len(e) != self.n:
            raise ProtocolError("SU returned the wrong number of sigmoid values")
        # (3) gradient X^T e = A^T e - M'^T e, SU and MU in parallel
        join = _in_thread(lambda: link.request("lr.backward", {"session": self.id}))
        mte = fastexp.t1_multiexp_buckets(e, self.mask_columns, p)
        ate = codec.cts_from_bytes(p, join()["cts"])
        if len(ate) != lay.features + 1:
            raise ProtocolError("SU returned the wrong number of gradient entries")
        grad = []
        for a, m, s in zip(ate, mte, self.stats, strict=True):
            g = fastexp.t1_sub(a, m, p)
            grad.append(fastexp.t1_add(g, fastexp.t1_scalar(s, 1 << (2 * FT - 1), p), p))
        # (4) SU scales the blinded gradient by lr/n and truncates; MU removes the masks and updates w
        mult, shift = scale_factor(self.n)
        items, masks = _Opener(self.blocks, t1).open_packed(grad, GBITS, GWIDTH, lay.gslots)
        body = {"items": items, "width": GWIDTH, "slots": lay.gslots, "count": len(grad), "mult": mult,
                "shift": shift}
        delta = codec.cts_from_bytes(p, link.request("lr.scale", body)["cts"])
        if len(delta) != len(grad):
            raise ProtocolError("SU returned the wrong number of updates")
        return [fastexp.t1_add_plain(fastexp.t1_sub(wj, dj, p), (m * mult) >> shift, p)
                for wj, dj, m in zip(w, delta, masks, strict=True)]


def scale_factor(n: int) -> tuple[int, int]:
    """(mult, shift) with mult / 2^shift = lr / n / 2^(FX + 2 FT - FW)."""
    return round(RATE * (1 << SCALE_BITS) / n), FX + 2 * FT - FW + SCALE_BITS


def train(blocks: Blocks, t1: fastexp.T1Source, schema: LRSchema, owners: Sequence[OwnerData],
          weights: Sequence[bytes] | None, iterations: int = ITERATIONS,
          progress: Callable[[str, int, int], None] | None = None,
          on_step: Callable[[int, list[bytes]], None] | None = None) -> dict[str, Any]:
    """Run ``iterations`` GD steps from ``weights`` (encrypted, warm start) or from zero; returns the model.

    ``on_step(k, w)`` receives the encrypted weights after every completed step ``k`` (1-based), for a checkpoint.
    """
    params = blocks.params
    lay = layout_for(params, schema)
    if not owners:
        raise InputError("no training data uploaded yet")
    w = codec.cts_from_bytes(params, weights) if weights else [t1.encrypt(0) for _ in range(lay.features + 1)]
    if len(w) != lay.features + 1:
        raise InputError("stored weights do not match the schema")
    session = Session(blocks, t1, lay, owners)
    try:
        for it in range(iterations):
            w = session.step(w)
            if on_step:
                on_step(it + 1, [codec.ct_to_bytes(params, c) for c in w])
            if progress:
                progress("lr", it + 1, iterations)
    finally:
        session.close()
    return {"model": "lr", "schema": json.loads(schema.to_json()), "w": [codec.ct_to_bytes(params, c) for c in w],
            "records": session.n, "owners": len(owners), "resumed": bool(weights), "iterations": iterations}


# --------------------------------------------------------------------------------------------- inference


def predict(blocks: Blocks, model: dict[str, Any], queries: Sequence[Sequence[dtpkc.Ciphertext]],
            client: dtpkc.PublicKey) -> list[dtpkc.Ciphertext]:
    """Enc_client(class index) per query (features packed under the client's key)."""
    params = blocks.params
    schema = LRSchema.from_dict(model["schema"])
    lay = layout_for(params, schema)
    w = codec.cts_from_bytes(params, model["w"])
    cpool, spool = blocks.pool(client), blocks.system_pool
    blinded, rows = [], []
    for query in queries:
        if len(query) != lay.a_cts:
            raise InputError(f"a query must have {lay.a_cts} ciphertexts")
        masks = [secrets.randbelow(1 << (XBITS + KAPPA)) for _ in range(lay.features)]
        rows.append([0] + [XMAX + m for m in masks])
        blinded += [cpool.rerandomize(dtpkc.add_plain(params, ct, codec.pack(chunk, AWIDTH)))
                    for ct, chunk in zip(query, codec.chunks(masks, lay.aslots), strict=True)]
    body = {"w": [codec.ct_to_bytes(params, spool.rerandomize(c)) for c in w], "x": blocks.open_items(blinded),
            "per": lay.a_cts, "cols": lay.features, "width": AWIDTH, "slots": lay.aslots}
    join = _in_thread(lambda: blocks.link.request("lr.dot", body))
    mw = fastexp.t1_multiexp(w, rows, params)
    xw = codec.cts_from_bytes(params, join()["cts"])
    if len(xw) != len(queries):
        raise ProtocolError("SU returned the wrong number of scores")
    z = [fastexp.t1_sub(a, b, params) for a, b in zip(xw, mw, strict=True)]
    zero = [spool.encrypt(0) for _ in z]
    return blocks.compare(z, zero, ZBITS, target=client)


# ------------------------------------------------------------------------------------ plaintext reference


def reference_train(schema: LRSchema, rows: Sequence[Sequence[float]], labels: Sequence[str],
                    iterations: int = ITERATIONS, w0: Sequence[int] | None = None) -> list[int]:
    """The same fixed-point GD in the clear (weights at scale 2^FW); differs from the encrypted run only by
    the rounding of the trigonometric halves and the +-1 truncation error per update."""
    xs = [[1 << FX, *schema.encode_row(r)] for r in rows]
    ys = [schema.class_index(y) for y in labels]
    w = list(w0) if w0 is not None else [0] * len(xs[0])
    mult, shift = scale_factor(len(xs))
    for _ in range(iterations):
        e = [round(sum(a * math.sin(h * math.pi * sum(a_ * b for a_, b in zip(x, w, strict=True))
                                     / (1 << FZ) / (2 * HALF)) for a, h in zip(COEF, HARMONICS, strict=True))
                   * (1 << (2 * FT))) for x in xs]
        for j in range(len(w)):
            g = sum(x[j] * (ei + (1 << (2 * FT - 1)) * (1 - 2 * y)) for x, ei, y in zip(xs, e, ys, strict=True))
            w[j] -= (g * mult) >> shift
    return w


def reference_predict(schema: LRSchema, w: Sequence[int], rows: Sequence[Sequence[float]]) -> list[int]:
    return [int(sum(a * b for a, b in zip([1 << FX, *schema.encode_row(r)], w, strict=True)) >= 0) for r in rows]


# ------------------------------------------------------------------------------------------ offline phase


def randomness_budget(params: dtpkc.PublicParams, schema: LRSchema, records: int, owners: int,
                      iterations: int = ITERATIONS) -> tuple[int, int]:
    """How many T1 randomness values (h^r) MU and SU draw in one training run from zero weights: the pool sizes
    that let the offline phase cover the whole run (MU: the trigonometric halves, 4 per record and iteration,
    and its re-randomizations; SU: its re-randomizations and fresh encryptions)."""
    lay = layout_for(params, schema)
    cols = lay.features + 1
    mu = 2 * cols + iterations * (cols + 2 * len(HARMONICS) * records + -(-records // lay.zslots)
                                  + -(-cols // lay.gslots))
    su = owners * lay.s_cts * lay.sslots + iterations * (2 * records + 2 * cols)
    return mu, su
