"""Priv-LR against an in-process SU: encrypted training tracks the plaintext fixed-point reference."""

from __future__ import annotations

import random

import pytest

from twofold.crypto import dtpkc
from twofold.he import codec, fastexp
from twofold.he.models import lr

FEATURES = ["a", "b", "c", "d"]


def synthetic(n: int, seed: int):
    rng = random.Random(seed)
    rows, ys = [], []
    for _ in range(n):
        y = rng.randrange(2)
        rows.append([rng.gauss((1.4 if y else 0.0) + 0.3 * j, 1.0) for j in range(len(FEATURES))])
        ys.append(str(y))
    return rows, ys


def owner_data(crypto, schema, rows, ys, key) -> lr.OwnerData:
    lay = lr.layout_for(crypto.params, schema)
    xs, stats = [], None
    for row, y in zip(rows, ys, strict=True):
        cts = lr.encrypt_record(lambda m: dtpkc.encrypt(key.public, m), lay, schema.encode_row(row),
                                schema.class_index(y))
        xs += cts[: lay.a_cts]
        st = cts[lay.a_cts :]
        stats = st if stats is None else [dtpkc.add(crypto.params, a, b) for a, b in zip(stats, st, strict=True)]
    return lr.OwnerData(key.public, len(rows), [codec.ct_to_bytes(crypto.params, c) for c in xs],
                        [codec.ct_to_bytes(crypto.params, c) for c in stats])


def weights(crypto, model) -> list[int]:
    return [codec.signed(dtpkc.strong_decrypt(crypto.strong, codec.ct_from_bytes(crypto.params, c)), crypto.params.n)
            for c in model["w"]]


@pytest.fixture(scope="module")
def data():
    rows, ys = synthetic(48, 7)
    return rows, ys, lr.fit_schema(FEATURES, "y", rows, ys)


@pytest.fixture(scope="module")
def t1(crypto):
    return fastexp.T1Source(crypto.system.public)


def test_multiexp_matches_powers(crypto, t1):
    cts = [t1.encrypt(v) for v in (5, -7, 11)]
    rows = [[1, 2, 3], [0, 0, 0], [2**40 + 3, 17, 0]]
    got = [codec.signed(dtpkc.strong_decrypt(crypto.strong, c), crypto.params.n)
           for c in fastexp.t1_multiexp(cts, rows, crypto.params)]
    assert got == [5 - 14 + 33, 0, 5 * (2**40 + 3) - 7 * 17]


def test_train_matches_reference_and_warm_start(crypto, blocks, t1, data):
    rows, ys, schema = data
    owner2 = dtpkc.generate_user_key(crypto.params)
    owners = [owner_data(crypto, schema, rows[:30], ys[:30], crypto.owner),
              owner_data(crypto, schema, rows[30:], ys[30:], owner2)]
    model = lr.train(blocks, t1, schema, owners, None, iterations=3)
    ref = lr.reference_train(schema, rows, ys, iterations=3)
    got = weights(crypto, model)
    assert all(abs(a - b) <= 2 + abs(b) // 2000 for a, b in zip(got, ref, strict=True)), (got, ref)
    # warm start: two more iterations continue from the encrypted weights
    model2 = lr.train(blocks, t1, schema, owners, model["w"], iterations=2)
    ref2 = lr.reference_train(schema, rows, ys, iterations=2, w0=got)
    got2 = weights(crypto, model2)
    assert model2["resumed"]
    assert all(abs(a - b) <= 4 + abs(b) // 1000 for a, b in zip(got2, ref2, strict=True)), (got2, ref2)
    # encrypted inference answers under the client's key equal the plaintext decision on the same weights
    lay = lr.layout_for(crypto.params, schema)
    queries = [lr.encrypt_query(lambda m: dtpkc.encrypt(crypto.client.public, m), lay, schema.encode_row(r))
               for r in rows[:10]]
    answers = lr.predict(blocks, model2, queries, crypto.client.public)
    got_cls = [int(dtpkc.weak_decrypt(crypto.client.secret, a)) for a in answers]
    assert got_cls == lr.reference_predict(schema, got2, rows[:10])


def test_su_sees_only_blinded_values(crypto, su, system_pool, t1, data):
    """What SU opens differs between two runs on the same data (fresh masks), and never equals the records."""
    from twofold.he.blocks import Blocks
    from twofold.he.transport import local_pair

    rows, ys, schema = data
    owners = [owner_data(crypto, schema, rows, ys, crypto.owner)]
    seen: list[list[int]] = []
    original = su._open

    def spy(items):
        values = original(items)
        seen[-1].extend(values)
        return values

    su._open = spy
    try:
        for _ in range(2):
            seen.append([])
            lr.train(Blocks(local_pair(su.handle), crypto.share1, system_pool, threads=1), t1, schema, owners, None,
                     iterations=1)
    finally:
        su._open = original
    assert len(seen[0]) == len(seen[1]) > 0
    assert not set(seen[0]) & set(seen[1])
    lay = lr.layout_for(crypto.params, schema)
    plain = {codec.pack([v + lr.XMAX for v in schema.encode_row(r)][: lay.aslots], lr.AWIDTH) for r in rows}
    assert not plain & set(seen[0])
