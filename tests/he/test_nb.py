"""Priv-NB against an in-process SU: the encrypted model predicts exactly what the plaintext model predicts."""

from __future__ import annotations

import random

import pytest

from twofold.crypto import dtpkc
from twofold.errors import ServiceError
from twofold.he import codec
from twofold.he.models import nb


def synthetic(n: int, seed: int = 3, classes: int = 2, features: int = 4):
    rng = random.Random(seed)
    rows, ys = [], []
    for _ in range(n):
        y = rng.randrange(classes)
        rows.append([rng.gauss(y * 1.5 + j * 0.1, 1.0) for j in range(features)])
        ys.append(str(y))
    return rows, ys


def aggregate(crypto, lay, schema, rows, ys, pk):
    agg = None
    for row, y in zip(rows, ys, strict=True):
        cts = nb.encrypt_record(lambda m: dtpkc.encrypt(pk, m % int(crypto.params.n)), lay, schema.bin_row(row),
                                schema.class_index(y))
        agg = cts if agg is None else [dtpkc.add(crypto.params, a, b) for a, b in zip(agg, cts, strict=True)]
    return [codec.ct_to_bytes(crypto.params, c) for c in agg]


@pytest.fixture(scope="module")
def data():
    rows, ys = synthetic(60)
    schema = nb.fit_schema([f"f{j}" for j in range(4)], "y", rows, ys, bins=4)
    return rows, ys, schema


def test_train_and_predict_match_plaintext(crypto, blocks, data):
    rows, ys, schema = data
    lay = nb.layout_for(crypto.params, schema)
    owner2 = dtpkc.generate_user_key(crypto.params)
    owners = [(crypto.owner.public, aggregate(crypto, lay, schema, rows[:35], ys[:35], crypto.owner.public)),
              (owner2.public, aggregate(crypto, lay, schema, rows[35:], ys[35:], owner2.public))]
    model = nb.train(blocks, schema, owners, nb.MemoryCheckpoint(), chunk=7)
    counts = nb.plaintext_counts(schema, rows, ys)
    # every table entry decrypts to the plaintext log-probability (within fixed-point rounding)
    for j in range(lay.features):
        for b in range(lay.bins):
            for rho in range(lay.classes):
                entry = model["table"][(j * lay.bins + b) * 2 + rho]
                v = dtpkc.strong_decrypt(crypto.strong, codec.ct_from_bytes(crypto.params, entry))
                for c, slot in enumerate(codec.unpack(v, lay.width, lay.classes)):
                    cc = (c + rho) % 2
                    expect = (counts[lay.joint(cc, j, b)] + 1) / (counts[lay.class_count(cc)] + lay.bins)
                    import math
                    expect = math.log(expect)
                    if j == 0:
                        expect += math.log((counts[lay.class_count(cc)] + 1) / (len(rows) + 2))
                    assert abs((slot - lay.offset) / 2**16 - expect) < 1e-3
    queries = rows[:12]
    pk = crypto.client.public
    enc_q = [nb.encrypt_query(lambda m: dtpkc.encrypt(pk, m), lay, schema.bin_row(r)) for r in queries]
    answers = nb.predict(blocks, model, enc_q, crypto.client.public)
    got = [int(dtpkc.weak_decrypt(crypto.client.secret, a)) for a in answers]
    want = []
    for r in queries:
        s = nb.reference_scores(schema, counts, schema.bin_row(r))
        want.append(max(range(2), key=lambda c: s[c]))
    assert got == want


def test_three_classes(crypto, blocks):
    rows, ys = synthetic(45, seed=5, classes=3, features=3)
    schema = nb.fit_schema(["a", "b", "c"], "y", rows, ys, bins=3)
    lay = nb.layout_for(crypto.params, schema)
    owners = [(crypto.owner.public, aggregate(crypto, lay, schema, rows, ys, crypto.owner.public))]
    model = nb.train(blocks, schema, owners, nb.MemoryCheckpoint())
    counts = nb.plaintext_counts(schema, rows, ys)
    enc_q = [nb.encrypt_query(lambda m: dtpkc.encrypt(crypto.client.public, m), lay, schema.bin_row(r)) for r in rows]
    got = [int(dtpkc.weak_decrypt(crypto.client.secret, a)) for a in nb.predict(blocks, model, enc_q,
                                                                               crypto.client.public)]
    ref = [nb.reference_scores(schema, counts, schema.bin_row(r)) for r in rows]
    for g, s in zip(got, ref, strict=True):
        assert s[g] >= max(s) - 1e-3  # the predicted class is a best class (ties may go either way)


def test_resume_after_su_failure(crypto, su, system_pool, data):
    from twofold.he.blocks import Blocks
    from twofold.he.transport import local_pair

    rows, ys, schema = data
    lay = nb.layout_for(crypto.params, schema)
    owners = [(crypto.owner.public, aggregate(crypto, lay, schema, rows, ys, crypto.owner.public))]
    calls = {"n": 0}

    def flaky(kind, body, peer, call=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise ServiceError("SU went away")
        return su.handle(kind, body, peer, call)

    ck = nb.MemoryCheckpoint()
    with pytest.raises(ServiceError):
        nb.train(Blocks(local_pair(flaky), crypto.share1, system_pool, threads=1), schema, owners, ck, chunk=8)
    assert ck.doc is not None and 0 < len(ck.doc["done"]) < lay.features * lay.bins * 2
    model = nb.train(Blocks(local_pair(su.handle), crypto.share1, system_pool, threads=1), schema, owners, ck,
                     chunk=8)
    assert model["resumed"] and ck.doc is None
    counts = nb.plaintext_counts(schema, rows, ys)
    enc_q = [nb.encrypt_query(lambda m: dtpkc.encrypt(crypto.client.public, m), lay, schema.bin_row(r)) for r in rows]
    blk = Blocks(local_pair(su.handle), crypto.share1, system_pool, threads=1)
    got = [int(dtpkc.weak_decrypt(crypto.client.secret, a)) for a in nb.predict(blk, model, enc_q,
                                                                               crypto.client.public)]
    ref = [nb.reference_scores(schema, counts, schema.bin_row(r)) for r in rows]
    assert all(s[g] >= max(s) - 1e-3 for g, s in zip(got, ref, strict=True))
