"""Priv-LR against an in-process SU: encrypted training tracks the plaintext fixed-point reference."""

from __future__ import annotations

import random

import gmpy2
import pytest

from twofold.crypto import dtpkc
from twofold.errors import ProtocolError
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


def owner_data(crypto, schema, rows, ys, key, partials: bool = False) -> lr.OwnerData:
    lay = lr.layout_for(crypto.params, schema)
    xs, stats = [], None
    for row, y in zip(rows, ys, strict=True):
        cts = lr.encrypt_record(lambda m: dtpkc.encrypt(key.public, m), lay, schema.encode_row(row),
                                schema.class_index(y))
        xs += cts[: lay.a_cts]
        st = cts[lay.a_cts :]
        stats = st if stats is None else [dtpkc.add(crypto.params, a, b) for a, b in zip(stats, st, strict=True)]
    return lr.OwnerData(key.public, len(rows), [codec.ct_to_bytes(crypto.params, c) for c in xs],
                        [codec.ct_to_bytes(crypto.params, c) for c in stats],
                        lr.upload_partials(crypto.share1, xs, 1) if partials else None)


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
    owners = [owner_data(crypto, schema, rows[:24], ys[:24], crypto.owner),
              owner_data(crypto, schema, rows[24:], ys[24:], crypto.owner, partials=True)]  # PSDec1 from upload
    seen: list[list[int]] = []
    original = su.open

    def spy(items):
        values = original(items)
        seen[-1].extend(values)
        return values

    su.open = spy
    try:
        for _ in range(2):
            seen.append([])
            lr.train(Blocks(local_pair(su.handle), crypto.share1, system_pool, threads=1), t1, schema, owners, None,
                     iterations=1)
    finally:
        su.open = original
    assert len(seen[0]) == len(seen[1]) > 0
    assert not set(seen[0]) & set(seen[1])
    lay = lr.layout_for(crypto.params, schema)
    plain = {codec.pack([v + lr.XMAX for v in schema.encode_row(r)][: lay.aslots], lr.AWIDTH) for r in rows}
    assert not plain & set(seen[0])


def test_t1_pool_values_are_used_once(crypto):
    src = fastexp.T1Source(crypto.system.public)
    src.refill(4)
    drawn = []
    original = src._fresh

    def spy():
        value = original()
        drawn.append(value)
        return value

    src._fresh = spy  # values computed inline (pool empty) are recorded too
    pooled = list(src._ready)
    cts = [src.encrypt(9) for _ in range(7)]  # 4 from the pool, 3 computed inline
    assert src.made_online == 3 and len(src) == 0 and len(drawn) == 3
    randomness = [c.t1 * gmpy2.invert(1 + 9 * crypto.params.n, crypto.params.n_sq) % crypto.params.n_sq
                  for c in cts]
    assert randomness == pooled + drawn and len(set(randomness)) == 7
    assert {int(dtpkc.strong_decrypt(crypto.strong, c)) for c in cts} == {9}


def test_t1_background_pool_fills_and_is_drained_once(crypto):
    src = fastexp.T1Source(crypto.system.public)
    try:
        src.start_background(40, batch=10)
        assert src.wait_filled(40, 60)
        seen = {src.rerandomize(dtpkc.Ciphertext(1, 1)).t1 for _ in range(40)}
        assert len(seen) == 40 and src.made_online == 0  # 40 distinct precomputed values, none reused
    finally:
        src.close()


def test_multiexp_variants_and_batch_inversion(crypto):
    p = crypto.params
    rng = random.Random(3)
    bases = [dtpkc.encrypt(crypto.system.public, rng.randrange(1000)).t1 for _ in range(9)]
    rows = [[rng.randrange(1 << rng.choice((1, 20, 53))) for _ in bases] for _ in range(4)]
    rows.append([0] * len(bases))
    assert fastexp.multiexp_buckets(bases, rows, p.n_sq) == fastexp.multiexp(bases, rows, p.n_sq)
    small = [rng.randrange(1 << 15) for _ in bases]
    want = 1
    for b, e in zip(bases, small, strict=True):
        want = want * pow(int(b), e, int(p.n_sq)) % int(p.n_sq)
    assert fastexp.multiexp_small(bases, small, p.n_sq) == want
    assert all(int(b) * int(v) % int(p.n_sq) == 1 for b, v in zip(bases, fastexp.invert_many(bases, p.n_sq),
                                                                   strict=True))
    with pytest.raises(ValueError):
        fastexp.multiexp_buckets(bases, [[-1] * len(bases)], p.n_sq)


def test_angle_sums_match_signed_scalar_products(crypto, t1):
    p = crypto.params
    rng = random.Random(5)
    values = [rng.randrange(-(1 << 14), 1 << 14) for _ in range(12)]
    trig = [t1.encrypt(v) for v in values]
    exps = [[rng.randrange(-3000, 3001) for _ in range(4)] for _ in range(3)]
    got = [codec.signed(dtpkc.strong_decrypt(crypto.strong, c), p.n) for c in lr.angle_sums(trig, exps, 3000, p)]
    assert got == [sum(e * v for e, v in zip(row, values[4 * i:4 * i + 4], strict=True)) for i, row in enumerate(exps)]
    with pytest.raises(ProtocolError):
        lr.angle_sums(trig, exps, 100, p)


def test_randomness_budget_covers_a_run_exactly(crypto, data, monkeypatch):
    """With MU's and SU's pools filled to the budget, a run draws every precomputed value once and none inline
    (records opened in three pipelined parts, one owner's from the PSDec1 stored at upload)."""
    from twofold.he.blocks import Blocks
    from twofold.he.randomness import PairPool
    from twofold.he.su import SecondaryUnit
    from twofold.he.transport import local_pair

    rows, ys, schema = data
    owners = [owner_data(crypto, schema, rows[:20], ys[:20], crypto.owner, partials=True),
              owner_data(crypto, schema, rows[20:], ys[20:], crypto.owner)]
    su = SecondaryUnit(None, crypto.params, crypto.share2, crypto.system.public, registry={}, threads=1)
    mu_t1 = fastexp.T1Source(crypto.system.public)
    need_mu, need_su = lr.randomness_budget(crypto.params, schema, len(rows), len(owners), iterations=2)
    mu_t1.refill(need_mu)
    su.t1().refill(need_su)
    monkeypatch.setattr(lr, "LOAD_PART", 17)
    link = local_pair(su.handle)
    try:
        model = lr.train(Blocks(link, crypto.share1, PairPool(crypto.system.public), threads=1), mu_t1, schema,
                         owners, None, iterations=2)
    finally:
        link.close()
    assert (len(mu_t1), mu_t1.made_online) == (0, 0)
    assert (len(su.t1()), su.t1().made_online) == (0, 0)
    ref = lr.reference_train(schema, rows, ys, iterations=2)
    assert all(abs(a - b) <= 2 + abs(b) // 2000 for a, b in zip(weights(crypto, model), ref, strict=True))
