"""Tensor dataset format: RFC 8439 AEAD vectors, standard-library interoperability, tamper and key errors."""

from __future__ import annotations

import json
import os
import shutil
import stat

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305  # noqa: E402

from twofold.crypto.chacha20_tensor import xor_keystream  # noqa: E402
from twofold.crypto.kdf import Argon2Params  # noqa: E402
from twofold.data.tensors import (  # noqa: E402
    HEADER,
    TAG_BYTES,
    TensorShards,
    inspect_tensors,
    segment_aad,
    segment_nonce,
    verify_segment,
    write_tensors,
)
from twofold.errors import ConfigError, InputError, IntegrityError, KeyAccessError  # noqa: E402
from twofold.keys.keystore import Keystore  # noqa: E402
from twofold.torch import DeviceDecryptor, EncryptedTensorDataset  # noqa: E402

# RFC 8439 section 2.8.2: AEAD_CHACHA20_POLY1305 test vector, typed in from the RFC.
RFC_KEY = bytes(range(0x80, 0xA0))
RFC_NONCE = bytes.fromhex("070000004041424344454647")
RFC_AAD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
RFC_PLAIN = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
             b"sunscreen would be it.")
RFC_CT = bytes.fromhex(
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b"
    "1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b6116")
RFC_TAG = bytes.fromhex("1ae10b594f09e26a7e902ecbd0600691")


def test_rfc8439_aead_vector_verified_over_ciphertext_then_decrypted_with_the_tensor_keystream():
    assert ChaCha20Poly1305(RFC_KEY).encrypt(RFC_NONCE, RFC_PLAIN, RFC_AAD) == RFC_CT + RFC_TAG
    verify_segment(RFC_KEY, RFC_NONCE, RFC_AAD, RFC_CT, RFC_TAG)  # no plaintext made
    data = torch.tensor(list(RFC_CT), dtype=torch.uint8)
    assert bytes(xor_keystream(data, RFC_KEY, RFC_NONCE, counter=1).numpy()) == RFC_PLAIN


@pytest.mark.parametrize("bad", ["tag", "ciphertext", "aad", "nonce"])
def test_rfc8439_vector_with_any_change_fails_opaquely(bad):
    args = {"tag": RFC_TAG, "ciphertext": RFC_CT, "aad": RFC_AAD, "nonce": RFC_NONCE}
    value = bytearray(args[bad])
    value[0] ^= 1
    args[bad] = bytes(value)
    with pytest.raises(IntegrityError):
        verify_segment(RFC_KEY, args["nonce"], args["aad"], args["ciphertext"], args["tag"])


def test_nonces_and_aad_are_unique_and_bind_position():
    nonces = {segment_nonce(s, j) for s in range(5) for j in range(50)}
    assert len(nonces) == 250 and all(len(n) == 12 for n in nonces)
    assert segment_aad("ds-0000000000000000", 1, 2, "x") != segment_aad("ds-0000000000000000", 2, 1, "x")


def test_roundtrip_all_dtypes_and_files_are_private(arrays, dataset, keystore):
    shards = TensorShards.open(dataset.path)
    key = keystore.unwrap(shards.wrapped_key, shards.key_context)
    out = shards.read_arrays(key)
    for name, value in arrays.items():
        assert np.array_equal(out[name], value) and out[name].shape == value.shape
    assert out["h"].dtype == np.dtype("<f2")
    for path in dataset.path.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    meta = inspect_tensors(dataset.path)
    assert meta["num_rows"] == 203 and meta["num_shards"] == 4 and not meta["authenticated"]


def test_any_standard_library_decrypts_a_segment(arrays, dataset, keystore):
    shards = TensorShards.open(dataset.path)
    key = keystore.unwrap(shards.wrapped_key, shards.key_context)
    layout = shards.authenticate(key)
    seg = layout.segments(1)[0]  # first segment of shard 1: rows 64.. of "x"
    blob = (dataset.path / "shard-00001.bin").read_bytes()[seg.offset: seg.offset + seg.length + TAG_BYTES]
    plain = ChaCha20Poly1305(key).decrypt(segment_nonce(1, 0), blob, segment_aad(layout.dataset_id, 1, 0, "x"))
    assert plain == arrays["x"][64: 64 + seg.rows].tobytes()


def _open(path, keystore):
    return EncryptedTensorDataset(path, keystore, "cpu")


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip-ciphertext", "flip-tag", "truncate", "extend", "reorder-segments",
                                    "swap-shards", "missing-shard", "extra-file", "header-layout", "header-tag"])
def test_tampered_truncated_reordered_or_replayed_data_raises_integrity_error(dataset, keystore, damage):
    path = dataset.path
    shard0, shard1 = path / "shard-00000.bin", path / "shard-00001.bin"
    if damage == "flip-ciphertext":
        _flip(shard1, 3)
    elif damage == "flip-tag":
        _flip(shard0, shard0.stat().st_size - 1)
    elif damage == "truncate":
        shard0.write_bytes(shard0.read_bytes()[:-1])
    elif damage == "extend":
        shard0.write_bytes(shard0.read_bytes() + b"\x00")
    elif damage == "reorder-segments":  # two equal-length segments of "x" swapped inside shard 0
        shards = TensorShards.open(path)
        layout = shards.authenticate(keystore.unwrap(shards.wrapped_key, shards.key_context))
        a, b = layout.segments(0)[:2]
        assert a.length == b.length
        data = bytearray(shard0.read_bytes())
        n = a.length + TAG_BYTES
        first, second = data[a.offset:a.offset + n], data[b.offset:b.offset + n]
        data[a.offset:a.offset + n], data[b.offset:b.offset + n] = second, first
        shard0.write_bytes(bytes(data))
    elif damage == "swap-shards":  # replay of shard 1's segments in shard 0's place (same sizes)
        one, zero = shard1.read_bytes(), shard0.read_bytes()
        shard0.write_bytes(one)
        shard1.write_bytes(zero)
    elif damage == "missing-shard":
        shard1.unlink()
    elif damage == "extra-file":
        (path / "shard-00009.bin").write_bytes(b"")
    elif damage == "header-layout":
        doc = json.loads((path / HEADER).read_text())
        doc["header"]["arrays"][1]["rows_per_segment"] += 8
        (path / HEADER).write_text(json.dumps(doc))
    elif damage == "header-tag":
        doc = json.loads((path / HEADER).read_text())
        doc["tag"] = "00" * 16
        (path / HEADER).write_text(json.dumps(doc))
    with pytest.raises(IntegrityError) as info:
        _open(path, keystore)
    assert "integrity check failed" in str(info.value)


def test_replayed_shard_from_another_dataset_under_the_same_keystore_fails(arrays, dataset, keystore, tmp_path):
    other = write_tensors(arrays, tmp_path / "other.tfds", keystore, rows_per_shard=64, segment_bytes=256)
    shutil.copy(other.path / "shard-00002.bin", dataset.path / "shard-00002.bin")
    with pytest.raises(IntegrityError):
        _open(dataset.path, keystore)


def test_wrong_key(dataset, keystore, tmp_path):
    stranger = Keystore.create(tmp_path / "ks2", "another passphrase", Argon2Params(8192, 1, 1))
    with pytest.raises(KeyAccessError):
        _open(dataset.path, stranger)
    shards = TensorShards.open(dataset.path)
    with pytest.raises(IntegrityError):
        shards.authenticate(os.urandom(32))
    # A wrong key that gets past the header (forged header tag) still fails every segment tag.
    key = keystore.unwrap(shards.wrapped_key, shards.key_context)
    layout = shards.authenticate(key)
    decryptor = DeviceDecryptor(os.urandom(32), "cpu")
    with pytest.raises(IntegrityError):
        decryptor._verify_shard(layout, 0, memoryview((dataset.path / "shard-00000.bin").read_bytes()))


def test_key_is_bound_to_its_dataset(dataset, keystore, arrays, tmp_path):
    other = write_tensors(arrays, tmp_path / "other.tfds", keystore)
    doc = json.loads((dataset.path / HEADER).read_text())
    doc["keys"]["data_key"] = json.loads((other.path / HEADER).read_text())["keys"]["data_key"]
    (dataset.path / HEADER).write_text(json.dumps(doc))
    with pytest.raises(IntegrityError):
        _open(dataset.path, keystore)


def test_writer_refuses_bad_input(keystore, tmp_path):
    with pytest.raises(InputError):
        write_tensors({"x": np.zeros(3), "y": np.zeros(4)}, tmp_path / "a", keystore)
    with pytest.raises(InputError):
        write_tensors({"x": np.array(["a", "b"], dtype=object)}, tmp_path / "b", keystore)
    with pytest.raises(InputError):
        write_tensors({"bad name": np.zeros(3)}, tmp_path / "c", keystore)
    (tmp_path / "d").mkdir()
    with pytest.raises(ConfigError):
        write_tensors({"x": np.zeros(3)}, tmp_path / "d", keystore)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
