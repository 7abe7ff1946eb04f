"""Precomputed encryption pairs: used once, refilled by a background process below the low-water mark."""

from __future__ import annotations

import time

import pytest

from twofold.crypto import dtpkc
from twofold.errors import KeyAccessError
from twofold.he import codec
from twofold.he.randomness import KeyPools, PairPool


def test_pool_pairs_are_fresh_and_decrypt(crypto):
    pool = PairPool(crypto.client.public)
    pool.refill(5)
    cts = [pool.encrypt(7) for _ in range(8)]  # 5 from the pool, 3 computed inline
    assert len({c.t2 for c in cts}) == 8 and pool.made_online == 3
    assert {int(dtpkc.weak_decrypt(crypto.client.secret, c)) for c in cts} == {7}
    again = pool.rerandomize(cts[0])
    assert again.t1 != cts[0].t1 and int(dtpkc.weak_decrypt(crypto.client.secret, again)) == 7


def test_background_refill_low_water_mark(crypto):
    pool = PairPool(crypto.client.public)
    try:
        pool.start_background(200, batch=25)
        assert pool.wait_filled(200, 60)
        for _ in range(80):
            pool.encrypt(1)
        time.sleep(0.5)
        assert len(pool) == 120  # above half: no refill competes with online work
        for _ in range(30):
            pool.encrypt(1)
        assert pool.wait_filled(200, 60)  # below half: refilled to the target
        assert pool.made_online == 0
    finally:
        pool.close()


def test_take_h_uses_each_pair_once(crypto):
    """T1-only randomness: each h^r comes from a pair that is then gone; an empty pool computes h^r inline."""
    from twofold.he.models import dt

    pool = PairPool(crypto.system.public)
    pool.refill(3)
    cts = [dt.t1_enc(pool, 11) for _ in range(5)]  # 3 from the pool, 2 inline
    assert len(pool) == 0 and pool.made_online == 2 and len({c.t1 for c in cts}) == 5
    assert all(c.t2 == 1 for c in cts)
    again = dt.t1_rerand(pool, cts[0])
    assert again.t1 != cts[0].t1
    assert {int(dtpkc.strong_decrypt(crypto.strong, c)) for c in [*cts, again]} == {11}


def test_key_pools_keep_the_recently_used_and_stay_bounded(crypto):
    keys = [crypto.client.public, crypto.owner.public, crypto.system.public]
    pools = KeyPools(limit=2)
    made: list[bytes] = []

    def maker(pk):
        return lambda: made.append(codec.key_id(pk)) or PairPool(pk)

    first = pools.get(codec.key_id(keys[0]), maker(keys[0]))
    pools.get(codec.key_id(keys[1]), maker(keys[1]))
    assert pools.get(codec.key_id(keys[0]), maker(keys[0])) is first  # kept, not rebuilt
    pools.get(codec.key_id(keys[2]), maker(keys[2]))  # over the limit: the least recently used (keys[1]) goes
    assert len(pools) == 2 and codec.key_id(keys[1]) not in pools and codec.key_id(keys[0]) in pools
    assert made == [codec.key_id(k) for k in keys]
    assert first.encrypt(3).t1 != first.encrypt(3).t1  # still usable


def test_su_refuses_an_unregistered_key_and_keeps_none(su, crypto):
    stranger = dtpkc.generate_user_key(crypto.params).public
    with pytest.raises(KeyAccessError):
        su.pool_for(codec.key_id(stranger))
    assert codec.key_id(stranger) not in su._pools
    assert su.pool_for(codec.key_id(crypto.client.public)) is su.pool_for(codec.key_id(crypto.client.public))
