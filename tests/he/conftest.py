"""Fixtures for the HE tests: one small (insecure, fast) DT-PKC system per session and an in-process SU."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from twofold.crypto import dtpkc
from twofold.crypto import dtpkc_wire as wire
from twofold.he.blocks import Blocks
from twofold.he.randomness import PairPool
from twofold.he.su import SecondaryUnit
from twofold.he.transport import local_pair

TEST_BITS = 512


@dataclass
class Crypto:
    params: dtpkc.PublicParams
    strong: dtpkc.StrongKey
    share1: dtpkc.StrongKeyShare
    share2: dtpkc.StrongKeyShare
    system: dtpkc.UserKeyPair
    client: dtpkc.UserKeyPair
    owner: dtpkc.UserKeyPair


@pytest.fixture(scope="session")
def crypto() -> Crypto:
    params, strong = dtpkc.generate_params(TEST_BITS)
    share1, share2 = dtpkc.split_strong_key(strong)
    return Crypto(params, strong, share1, share2, dtpkc.generate_user_key(params), dtpkc.generate_user_key(params),
                  dtpkc.generate_user_key(params))


@pytest.fixture(scope="session")
def su(crypto: Crypto) -> SecondaryUnit:
    registry = {"alice": {"role": "client", "pk": wire.public_key_to_bytes(crypto.client.public).hex()},
                "olga": {"role": "owner", "pk": wire.public_key_to_bytes(crypto.owner.public).hex()}}
    return SecondaryUnit(None, crypto.params, crypto.share2, crypto.system.public, registry=registry, threads=1)


@pytest.fixture(scope="session")
def system_pool(crypto: Crypto) -> PairPool:
    return PairPool(crypto.system.public)


@pytest.fixture
def blocks(crypto: Crypto, su: SecondaryUnit, system_pool: PairPool) -> Blocks:
    link = local_pair(su.handle)
    yield Blocks(link, crypto.share1, system_pool, threads=1)
    link.close()
