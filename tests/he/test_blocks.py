"""Building blocks against an in-process SU: results checked with the strong key (test oracle only)."""

from __future__ import annotations

import math
import random

import pytest

from twofold.crypto import dtpkc
from twofold.errors import KeyAccessError
from twofold.he import codec


def enc(crypto, values, pk=None):
    pk = pk or crypto.system.public
    return [dtpkc.encrypt(pk, v % int(crypto.params.n)) for v in values]


def dec(crypto, cts):
    return [codec.signed(dtpkc.strong_decrypt(crypto.strong, c), crypto.params.n) for c in cts]


def test_key_switch_to_client(crypto, blocks):
    values = [0, 1, 12345, -7, int(crypto.params.n) // 3]
    out = blocks.key_switch(enc(crypto, values), crypto.client.public)
    assert [int(dtpkc.weak_decrypt(crypto.client.secret, c)) for c in out] == [v % int(crypto.params.n) for v in values]


def test_key_switch_from_owner_key(crypto, blocks):
    out = blocks.key_switch(enc(crypto, [42, 7], crypto.owner.public), crypto.system.public, source=crypto.owner.public)
    assert [int(dtpkc.weak_decrypt(crypto.system.secret, c)) for c in out] == [42, 7]


def test_key_switch_rejects_unknown_target(crypto, blocks):
    stranger = dtpkc.generate_user_key(crypto.params)
    with pytest.raises(KeyAccessError, match="not registered"):
        blocks.key_switch(enc(crypto, [1]), stranger.public)


def test_mul(crypto, blocks):
    rng = random.Random(1)
    a = [rng.randrange(-10**6, 10**6) for _ in range(6)]
    b = [rng.randrange(-10**6, 10**6) for _ in range(6)]
    assert dec(crypto, blocks.mul(enc(crypto, a), enc(crypto, b))) == [x * y for x, y in zip(a, b, strict=True)]


def test_compare_both_orientations(crypto, blocks):
    pairs = [(5, 3), (3, 5), (4, 4), (-9, 2), (2, -9), (0, 0), (-1, -2)] * 3
    a, b = zip(*pairs, strict=True)
    out = blocks.compare(enc(crypto, a), enc(crypto, b), bound_bits=8)
    assert dec(crypto, out) == [int(x >= y) for x, y in pairs]


def test_compare_under_client_key(crypto, blocks):
    out = blocks.compare(enc(crypto, [10, 1]), enc(crypto, [1, 10]), bound_bits=8, target=crypto.client.public)
    assert [int(dtpkc.weak_decrypt(crypto.client.secret, c)) for c in out] == [1, 0]


def test_log(crypto, blocks):
    xs = [1, 2, 3, 10, 1000, 65535]
    out = dec(crypto, blocks.log(enc(crypto, xs), value_bits=17, frac_bits=16))
    for x, got in zip(xs, out, strict=True):
        assert abs(got - math.log(x) * 2**16) <= 2


def test_argmax_under_client_key(crypto, blocks):
    rows = [[5, 9, 1], [9, 5, 1], [1, 5, 9], [0, 0, 3], [7, 7, 0]]
    out = blocks.argmax([enc(crypto, r) for r in rows], score_bits=8, target=crypto.client.public)
    got = [int(dtpkc.weak_decrypt(crypto.client.secret, c)) for c in out]
    assert got[:4] == [1, 0, 2, 2]
    assert got[4] in (0, 1)


def test_pack(crypto, blocks):
    ct = blocks.pack(enc(crypto, [3, 1, 4]), 20)
    assert dec(crypto, [ct]) == [3 + (1 << 20) + (4 << 40)]
