from __future__ import annotations

import json
import stat

import pytest

from twofold.errors import ConfigError, IntegrityError, KeyAccessError
from twofold.keys.keystore import KEYSTORE_FILE, Keystore

from ..conftest import FAST_KDF, PASSPHRASE


def test_wrap_unwrap_round_trip_and_context_binding(keystore):
    wrapped = keystore.wrap(b"k" * 32, b"ctx")
    assert keystore.unwrap(wrapped, b"ctx") == b"k" * 32
    with pytest.raises(IntegrityError):
        keystore.unwrap(wrapped, b"other context")


def test_wrapping_is_randomised(keystore):
    assert keystore.wrap(b"k" * 32, b"c") != keystore.wrap(b"k" * 32, b"c")


def test_tampered_wrapped_key_is_an_integrity_error(keystore):
    wrapped = keystore.wrap(b"k" * 32, b"ctx")
    flipped = wrapped[:-3] + ("A" if wrapped[-3] != "A" else "B") + wrapped[-2:]
    with pytest.raises(IntegrityError):
        keystore.unwrap(flipped, b"ctx")
    with pytest.raises(IntegrityError):
        keystore.unwrap("garbage", b"ctx")


def test_files_are_private(keystore):
    assert stat.S_IMODE(keystore.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((keystore.directory / KEYSTORE_FILE).stat().st_mode) == 0o600


def test_no_secret_in_the_clear(keystore):
    raw = (keystore.directory / KEYSTORE_FILE).read_bytes()
    for key in keystore._master.values():
        assert key not in raw
    assert PASSPHRASE.encode() not in raw


def test_wrong_passphrase_is_clear_and_changes_nothing(keystore):
    path = keystore.directory / KEYSTORE_FILE
    before = path.read_bytes(), path.stat().st_mtime_ns
    with pytest.raises(KeyAccessError, match="wrong passphrase"):
        Keystore.open(keystore.directory, "not the passphrase")
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_edited_keystore_is_detected(keystore):
    path = keystore.directory / KEYSTORE_FILE
    doc = json.loads(path.read_text())
    doc["master_keys"][0]["state"] = "retired"
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyAccessError):
        Keystore.open(keystore.directory, PASSPHRASE)


def test_other_keystore_cannot_unwrap(keystore, tmp_path):
    other = Keystore.create(tmp_path / "other", PASSPHRASE, FAST_KDF)
    with pytest.raises(KeyAccessError, match=r"another keystore|not by"):
        other.unwrap(keystore.wrap(b"k" * 32, b"c"), b"c")


def test_rotation_keeps_old_versions_until_retired(keystore):
    old = keystore.wrap(b"k" * 32, b"c")
    info = keystore.rotate()
    assert info.version == 2 and keystore.active_version == 2
    new = keystore.wrap(b"k" * 32, b"c")
    reopened = Keystore.open(keystore.directory, PASSPHRASE)
    assert reopened.unwrap(old, b"c") == reopened.unwrap(new, b"c") == b"k" * 32
    reopened.retire(1)
    with pytest.raises(KeyAccessError, match="retired"):
        Keystore.open(keystore.directory, PASSPHRASE).unwrap(old, b"c")
    with pytest.raises(ConfigError):
        reopened.retire(2)


def test_concurrent_handles_do_not_lose_versions(keystore):
    second = Keystore.open(keystore.directory, PASSPHRASE)
    keystore.rotate()
    second.rotate()  # reloads under the lock, so version 2 survives
    versions = [v.version for v in Keystore.open(keystore.directory, PASSPHRASE).versions()]
    assert versions == [1, 2, 3]


def test_create_refuses_existing_and_short_passphrase(keystore, tmp_path):
    with pytest.raises(ConfigError):
        Keystore.create(keystore.directory, PASSPHRASE, FAST_KDF)
    with pytest.raises(ConfigError, match="at least"):
        Keystore.create(tmp_path / "short", "short", FAST_KDF)


def test_owner_key_pair(keystore):
    reopened = Keystore.open(keystore.directory, PASSPHRASE)
    assert reopened.owner_private_key().public_key().public_bytes_raw() == \
        keystore.owner_public_key.public_bytes_raw()
