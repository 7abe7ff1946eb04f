"""ChaCha20 keystream in torch tensor ops: RFC 8439 vectors, bit-exactness against ``cryptography``, limits."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

torch = pytest.importorskip("torch")

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from twofold.crypto import chacha20_tensor as ct  # noqa: E402

MAX_COUNTER = 2**32 - 1
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def h(text: str) -> bytes:
    """Bytes from hex laid out as in the RFC (whitespace ignored)."""
    return bytes.fromhex(text)


def reference(key: bytes, nonce: bytes, counter: int, data: bytes) -> bytes:
    """``cryptography``'s ChaCha20: its 16-byte nonce is the 32-bit LE counter followed by the RFC nonce."""
    iv = counter.to_bytes(4, "little") + nonce
    return Cipher(algorithms.ChaCha20(key, iv), mode=None).encryptor().update(data)


def as_tensor(data: bytes, device: str = "cpu") -> torch.Tensor:
    return torch.tensor(list(data), dtype=torch.uint8, device=device)


def as_bytes(t: torch.Tensor) -> bytes:
    return bytes(t.cpu().numpy().tobytes())


# ----------------------------------------------------------------------------------------------------------
# RFC 8439 vectors, typed in from the RFC.

RFC_KEY = bytes(range(32))

# Section 2.3.2: block function, counter 1.
BLOCK_NONCE = h("00 00 00 09 00 00 00 4a 00 00 00 00")
BLOCK_STATE = [
    0xE4E7F110, 0x15593BD1, 0x1FDD0F50, 0xC47120A3,
    0xC7F4D1C7, 0x0368C033, 0x9AAA2204, 0x4E6CD4C3,
    0x466482D2, 0x09AA9F07, 0x05D7C214, 0xA2028BD9,
    0xD19C12B5, 0xB94E16DE, 0xE883D0CB, 0x4E3C50A2,
]
BLOCK_SERIALIZED = h("""
    10 f1 e7 e4 d1 3b 59 15 50 0f dd 1f a3 20 71 c4
    c7 d1 f4 c7 33 c0 68 03 04 22 aa 9a c3 d4 6c 4e
    d2 82 64 46 07 9f aa 09 14 c2 d7 05 d9 8b 02 a2
    b5 12 9c d1 de 16 4e b9 cb d0 83 e8 a2 50 3c 4e
""")

# Section 2.4.2: encryption, counter 1.
SUNSCREEN_NONCE = h("00 00 00 00 00 00 00 4a 00 00 00 00")
SUNSCREEN = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
             b"sunscreen would be it.")
SUNSCREEN_CT = h("""
    6e 2e 35 9a 25 68 f9 80 41 ba 07 28 dd 0d 69 81
    e9 7e 7a ec 1d 43 60 c2 0a 27 af cc fd 9f ae 0b
    f9 1b 65 c5 52 47 33 ab 8f 59 3d ab cd 62 b3 57
    16 39 d6 24 e6 51 52 ab 8f 53 0c 35 9f 08 61 d8
    07 ca 0d bf 50 0d 6a 61 56 a3 8e 08 8a 22 b6 5e
    52 bc 51 4d 16 cc f8 06 81 8c e9 1a b7 79 37 36
    5a f9 0b bf 74 a3 5b e6 b4 0b 8e ed f2 78 5e 42
    87 4d
""")

ZERO_KEY, ONE_KEY = bytes(32), bytes(31) + b"\x01"
FF_KEY = b"\x00\xff" + bytes(30)
ZERO_NONCE, TWO_NONCE = bytes(12), bytes(11) + b"\x02"

# Appendix A.1: block function vectors (key, nonce, counter, 64 bytes of keystream).
A1_VECTORS = [
    (ZERO_KEY, ZERO_NONCE, 0, h("""
        76 b8 e0 ad a0 f1 3d 90 40 5d 6a e5 53 86 bd 28 bd d2 19 b8 a0 8d ed 1a a8 36 ef cc 8b 77 0d c7
        da 41 59 7c 51 57 48 8d 77 24 e0 3f b8 d8 4a 37 6a 43 b8 f4 15 18 a1 1c c3 87 b6 69 b2 ee 65 86""")),
    (ZERO_KEY, ZERO_NONCE, 1, h("""
        9f 07 e7 be 55 51 38 7a 98 ba 97 7c 73 2d 08 0d cb 0f 29 a0 48 e3 65 69 12 c6 53 3e 32 ee 7a ed
        29 b7 21 76 9c e6 4e 43 d5 71 33 b0 74 d8 39 d5 31 ed 1f 28 51 0a fb 45 ac e1 0a 1f 4b 79 4d 6f""")),
    (ONE_KEY, ZERO_NONCE, 1, h("""
        3a eb 52 24 ec f8 49 92 9b 9d 82 8d b1 ce d4 dd 83 20 25 e8 01 8b 81 60 b8 22 84 f3 c9 49 aa 5a
        8e ca 00 bb b4 a7 3b da d1 92 b5 c4 2f 73 f2 fd 4e 27 36 44 c8 b3 61 25 a6 4a dd eb 00 6c 13 a0""")),
    (FF_KEY, ZERO_NONCE, 2, h("""
        72 d5 4d fb f1 2e c4 4b 36 26 92 df 94 13 7f 32 8f ea 8d a7 39 90 26 5e c1 bb be a1 ae 9a f0 ca
        13 b2 5a a2 6c b4 a6 48 cb 9b 9d 1b e6 5b 2c 09 24 a6 6c 54 d5 45 ec 1b 73 74 f4 87 2e 99 f0 96""")),
    (ZERO_KEY, TWO_NONCE, 0, h("""
        c2 c6 4d 37 8c d5 36 37 4a e2 04 b9 ef 93 3f cd 1a 8b 22 88 b3 df a4 96 72 ab 76 5b 54 ee 27 c7
        8a 97 0e 0e 95 5c 14 f3 a8 8e 74 1b 97 c2 86 f7 5f 8f c2 99 e8 14 83 62 fa 19 8a 39 53 1b ed 6d""")),
]

# Appendix A.2: encryption vectors (key, nonce, counter, plaintext, ciphertext).
IETF_TEXT = (b"Any submission to the IETF intended by the Contributor for publication as all or part of an IETF "
             b"Internet-Draft or RFC and any statement made within the context of an IETF activity is "
             b'considered an "IETF Contribution". Such statements include oral statements in IETF sessions, '
             b"as well as written and electronic communications made at any time or place, which are "
             b"addressed to")
JABBERWOCKY = (b"'Twas brillig, and the slithy toves\nDid gyre and gimble in the wabe:\nAll mimsy were the "
               b"borogoves,\nAnd the mome raths outgrabe.")
A2_VECTORS = [
    (ZERO_KEY, ZERO_NONCE, 0, bytes(64), A1_VECTORS[0][3]),
    (ONE_KEY, TWO_NONCE, 1, IETF_TEXT, h("""
        a3 fb f0 7d f3 fa 2f de 4f 37 6c a2 3e 82 73 70 41 60 5d 9f 4f 4f 57 bd 8c ff 2c 1d 4b 79 55 ec
        2a 97 94 8b d3 72 29 15 c8 f3 d3 37 f7 d3 70 05 0e 9e 96 d6 47 b7 c3 9f 56 e0 31 ca 5e b6 25 0d
        40 42 e0 27 85 ec ec fa 4b 4b b5 e8 ea d0 44 0e 20 b6 e8 db 09 d8 81 a7 c6 13 2f 42 0e 52 79 50
        42 bd fa 77 73 d8 a9 05 14 47 b3 29 1c e1 41 1c 68 04 65 55 2a a6 c4 05 b7 76 4d 5e 87 be a8 5a
        d0 0f 84 49 ed 8f 72 d0 d6 62 ab 05 26 91 ca 66 42 4b c8 6d 2d f8 0e a4 1f 43 ab f9 37 d3 25 9d
        c4 b2 d0 df b4 8a 6c 91 39 dd d7 f7 69 66 e9 28 e6 35 55 3b a7 6c 5c 87 9d 7b 35 d4 9e b2 e6 2b
        08 71 cd ac 63 89 39 e2 5e 8a 1e 0e f9 d5 28 0f a8 ca 32 8b 35 1c 3c 76 59 89 cb cf 3d aa 8b 6c
        cc 3a af 9f 39 79 c9 2b 37 20 fc 88 dc 95 ed 84 a1 be 05 9c 64 99 b9 fd a2 36 e7 e8 18 b0 4b 0b
        c3 9c 1e 87 6b 19 3b fe 55 69 75 3f 88 12 8c c0 8a aa 9b 63 d1 a1 6f 80 ef 25 54 d7 18 9c 41 1f
        58 69 ca 52 c5 b8 3f a3 6f f2 16 b9 c1 d3 00 62 be bc fd 2d c5 bc e0 91 19 34 fd a7 9a 86 f6 e6
        98 ce d7 59 c3 ff 9b 64 77 33 8f 3d a4 f9 cd 85 14 ea 99 82 cc af b3 41 b2 38 4d d9 02 f3 d1 ab
        7a c6 1d d2 9c 6f 21 ba 5b 86 2f 37 30 e3 7c fd c4 fd 80 6c 22 f2 21""")),
    (h("1c 92 40 a5 eb 55 d3 8a f3 33 88 86 04 f6 b5 f0 47 39 17 c1 40 2b 80 09 9d ca 5c bc 20 70 75 c0"),
     TWO_NONCE, 42, JABBERWOCKY, h("""
        62 e6 34 7f 95 ed 87 a4 5f fa e7 42 6f 27 a1 df 5f b6 91 10 04 4c 0d 73 11 8e ff a9 5b 01 e5 cf
        16 6d 3d f2 d7 21 ca f9 b2 1e 5f b1 4c 61 68 71 fd 84 c5 4f 9d 65 b2 83 19 6c 7f e4 f6 05 53 eb
        f3 9c 64 02 c4 22 34 e3 2a 35 6b 3e 76 43 12 a6 1a 55 32 05 57 16 ea d6 96 25 68 f8 7d 3f 3f 77
        04 c6 a8 d1 bc d1 bf 4d 50 d6 15 4b 6d a7 31 b1 87 b5 8d fd 72 8a fa 36 75 7a 79 7a c1 88 d1""")),
]

ENCRYPTION_VECTORS = [(RFC_KEY, SUNSCREEN_NONCE, 1, SUNSCREEN, SUNSCREEN_CT), *A2_VECTORS]
KEYSTREAM_VECTORS = [(RFC_KEY, BLOCK_NONCE, 1, BLOCK_SERIALIZED), *A1_VECTORS]


# ----------------------------------------------------------------------------------------------------------
# Every implementation, behind one signature, so each behaviour test runs on all of them.

Xor = Callable[[bytes, bytes, int, bytes], bytes]


def _tensor(key: bytes, nonce: bytes, counter: int, data: bytes) -> bytes:
    return as_bytes(ct.xor_keystream(as_tensor(data), key, nonce, counter))


def _tensor_one_block_chunks(key: bytes, nonce: bytes, counter: int, data: bytes) -> bytes:
    return as_bytes(ct.xor_keystream(as_tensor(data), key, nonce, counter, chunk_blocks=1))


def _tensor_key_tensors(key: bytes, nonce: bytes, counter: int, data: bytes) -> bytes:
    return as_bytes(ct.xor_keystream(as_tensor(data), as_tensor(key), as_tensor(nonce), counter))


def _segments_split(key: bytes, nonce: bytes, counter: int, data: bytes) -> bytes:
    """One segment, preceded and followed by other segments that must not disturb it."""
    other = os.urandom(12)
    padded = as_tensor(b"\x00" * 70 + data + b"\x00" * 5)
    out = ct.xor_keystream_segments(padded, key, [other, nonce, other], [3, counter, 9], [70, len(data), 5])
    return as_bytes(out[70 : 70 + len(data)])


def _cpu_fast(key: bytes, nonce: bytes, counter: int, data: bytes) -> bytes:
    return as_bytes(ct.xor_keystream_cpu_fast(as_tensor(data), key, nonce, counter))


IMPLEMENTATIONS: dict[str, Xor] = {
    "tensor": _tensor,
    "tensor-1-block-chunks": _tensor_one_block_chunks,
    "tensor-key-as-tensor": _tensor_key_tensors,
    "segments": _segments_split,
    "cpu-fast": _cpu_fast,
}
TENSOR_IMPLEMENTATIONS = {k: v for k, v in IMPLEMENTATIONS.items() if k != "cpu-fast"}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def xor(request: pytest.FixtureRequest) -> Xor:
    return IMPLEMENTATIONS[request.param]


# ----------------------------------------------------------------------------------------------------------
# Known answers.


def test_block_function_rfc8439_2_3_2() -> None:
    words = ct.block_words(RFC_KEY, BLOCK_NONCE, 1)
    assert [w & 0xFFFFFFFF for w in words.tolist()] == BLOCK_STATE
    assert b"".join(w.to_bytes(4, "little") for w in BLOCK_STATE) == BLOCK_SERIALIZED


@pytest.mark.parametrize(("key", "nonce", "counter", "expected"), KEYSTREAM_VECTORS)
def test_keystream_vectors(key: bytes, nonce: bytes, counter: int, expected: bytes) -> None:
    assert as_bytes(ct.keystream(key, nonce, counter, 64)) == expected
    assert as_bytes(ct.keystream(key, nonce, counter, 64, "cpu", chunk_blocks=1)) == expected
    assert reference(key, nonce, counter, bytes(64)) == expected  # the vector and the reference agree


@pytest.mark.parametrize(("key", "nonce", "counter", "plaintext", "ciphertext"), ENCRYPTION_VECTORS)
def test_encryption_vectors(xor: Xor, key: bytes, nonce: bytes, counter: int, plaintext: bytes,
                            ciphertext: bytes) -> None:
    assert len(plaintext) == len(ciphertext)
    assert xor(key, nonce, counter, plaintext) == ciphertext
    assert xor(key, nonce, counter, ciphertext) == plaintext


def test_vector_lengths() -> None:
    assert (len(SUNSCREEN), len(IETF_TEXT), len(JABBERWOCKY)) == (114, 375, 127)


def test_keystream_continues_across_blocks() -> None:
    stream = as_bytes(ct.keystream(RFC_KEY, BLOCK_NONCE, 1, 64 * 5 + 3, chunk_blocks=2))
    for i in range(5):
        assert stream[64 * i : 64 * i + 64] == as_bytes(ct.keystream(RFC_KEY, BLOCK_NONCE, 1 + i, 64))


# ----------------------------------------------------------------------------------------------------------
# Bit-exact against cryptography for random inputs.

EDGE_LENGTHS = [0, 1, 2, 3, 4, 5, 63, 64, 65, 127, 128, 129, 191, 192, 193, 1000, 4095, 4096, 4097]


@st.composite
def chacha_requests(draw: st.DrawFn, max_len: int = 4200) -> tuple[bytes, bytes, int, bytes]:
    """(key, nonce, counter, data), counters biased to the int32 sign boundary and the 2**32 limit."""
    n = draw(st.one_of(st.sampled_from(EDGE_LENGTHS), st.integers(0, max_len)))
    top = min(MAX_COUNTER, MAX_COUNTER + 1 - -(-n // 64))  # the counter is a 32-bit field even for empty data
    edges = [0, 1, 2**31 - 2, 2**31 - 1, 2**31, top - 1, top]
    counter = draw(st.one_of(st.sampled_from(edges), st.integers(0, top)).filter(lambda c: 0 <= c <= top))
    key = draw(st.binary(min_size=32, max_size=32))
    nonce = draw(st.binary(min_size=12, max_size=12))
    return key, nonce, counter, draw(st.binary(min_size=n, max_size=n))


@SETTINGS
@given(req=chacha_requests(), chunk=st.sampled_from([None, 1, 2, 3, 7]))
def test_tensor_path_matches_cryptography(req: tuple[bytes, bytes, int, bytes], chunk: int | None) -> None:
    key, nonce, counter, data = req
    got = ct.xor_keystream(as_tensor(data), key, nonce, counter, chunk_blocks=chunk)
    assert as_bytes(got) == reference(key, nonce, counter, data)


@SETTINGS
@given(req=chacha_requests(), offset=st.integers(1, 3))
def test_unaligned_views_match_cryptography(req: tuple[bytes, bytes, int, bytes], offset: int) -> None:
    """Data starting off a 4-byte boundary takes the byte-wise path; same keystream."""
    key, nonce, counter, data = req
    view = as_tensor(bytes(offset) + data)[offset:]
    assert as_bytes(ct.xor_keystream(view, key, nonce, counter, chunk_blocks=3)) == \
        reference(key, nonce, counter, data)


@SETTINGS
@given(req=chacha_requests())
def test_cpu_fast_path_matches_cryptography(req: tuple[bytes, bytes, int, bytes]) -> None:
    key, nonce, counter, data = req
    assert as_bytes(ct.xor_keystream_cpu_fast(as_tensor(data), key, nonce, counter)) == \
        reference(key, nonce, counter, data)


@st.composite
def segment_batches(draw: st.DrawFn) -> tuple[list[bytes], list[int], list[int]]:
    lengths = draw(st.lists(st.one_of(st.sampled_from(EDGE_LENGTHS[:12]), st.integers(0, 300)), max_size=8))
    counters = [draw(st.one_of(st.sampled_from([0, 1, 2**31 - 1]), st.integers(0, MAX_COUNTER - 8)))
                for _ in lengths]
    nonces = [draw(st.binary(min_size=12, max_size=12)) for _ in lengths]
    return nonces, counters, lengths


@SETTINGS
@given(batch=segment_batches(), key=st.binary(min_size=32, max_size=32), chunk=st.sampled_from([None, 1, 3]),
       nonces_as_tensor=st.booleans())
def test_segments_match_per_segment_cryptography(batch: tuple[list[bytes], list[int], list[int]], key: bytes,
                                                 chunk: int | None, nonces_as_tensor: bool) -> None:
    nonces, counters, lengths = batch
    data = os.urandom(sum(lengths))
    expected, pos = b"", 0
    for nonce, counter, n in zip(nonces, counters, lengths, strict=True):
        expected += reference(key, nonce, counter, data[pos : pos + n])
        pos += n
    nonce_arg = as_tensor(b"".join(nonces)).view(-1, 12) if nonces_as_tensor else nonces
    got = ct.xor_keystream_segments(as_tensor(data), key, nonce_arg, counters, lengths, chunk_blocks=chunk)
    assert as_bytes(got) == expected


def test_multi_mib_matches_cryptography() -> None:
    key, nonce, counter = os.urandom(32), os.urandom(12), 2**31 - 5000  # crosses the int32 sign boundary
    data = os.urandom(3 * 2**20 + 17)
    got = ct.xor_keystream(torch.frombuffer(bytearray(data), dtype=torch.uint8), key, nonce, counter)
    assert as_bytes(got) == reference(key, nonce, counter, data)


def test_functional_block_function_matches_eager() -> None:
    """The uncompiled form of the fused CUDA path computes the same words (tested here without compiling)."""
    key_w = ct._words(os.urandom(32), 32, "key", torch.device("cpu"))
    init_d = torch.randint(-(2**31), 2**31 - 1, (4, 37), dtype=torch.int32)
    eager = torch.stack(ct._eager_blocks(ct._Workspace(37, torch.device("cpu")), key_w, init_d)).view(16, 37)
    assert torch.equal(ct._functional_blocks(ct._initial_state(key_w, init_d)), eager)


def test_fused_request_on_cpu_never_compiles(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.compile must not run for CPU tensors")

    monkeypatch.setattr(torch, "compile", refuse)
    data = os.urandom(300)
    got = ct.xor_keystream(as_tensor(data), RFC_KEY, SUNSCREEN_NONCE, 7, fused=True)
    assert as_bytes(got) == reference(RFC_KEY, SUNSCREEN_NONCE, 7, data)


# ----------------------------------------------------------------------------------------------------------
# Round trips and in-place/out-of-place behaviour.


@SETTINGS
@given(req=chacha_requests(max_len=2000))
def test_decrypt_of_encrypt_is_identity(req: tuple[bytes, bytes, int, bytes]) -> None:
    key, nonce, counter, data = req
    plain = as_tensor(data)
    sealed = ct.xor_keystream(plain, key, nonce, counter)
    assert torch.equal(ct.xor_keystream(sealed, key, nonce, counter), plain)


def test_out_of_place_leaves_input_alone() -> None:
    data = as_tensor(SUNSCREEN)
    result = ct.xor_keystream(data, RFC_KEY, SUNSCREEN_NONCE)
    assert as_bytes(data) == SUNSCREEN
    assert as_bytes(result) == SUNSCREEN_CT
    assert result.data_ptr() != data.data_ptr()


def test_in_place_with_out_equal_data() -> None:
    data = as_tensor(SUNSCREEN)
    result = ct.xor_keystream(data, RFC_KEY, SUNSCREEN_NONCE, out=data)
    assert result is data
    assert as_bytes(data) == SUNSCREEN_CT


def test_separate_out_buffer_and_any_shape() -> None:
    data = as_tensor(SUNSCREEN[:112]).view(7, 16)
    out = torch.empty_like(data)
    assert ct.xor_keystream(data, RFC_KEY, SUNSCREEN_NONCE, out=out) is out
    assert out.shape == (7, 16)
    assert as_bytes(out) == SUNSCREEN_CT[:112]
    assert as_bytes(data) == SUNSCREEN[:112]


def test_segments_in_place() -> None:
    data = as_tensor(SUNSCREEN + JABBERWOCKY)
    result = ct.xor_keystream_segments(data, RFC_KEY, [SUNSCREEN_NONCE, TWO_NONCE], [1, 42],
                                       [len(SUNSCREEN), len(JABBERWOCKY)], out=data)
    assert result is data
    assert as_bytes(data) == SUNSCREEN_CT + reference(RFC_KEY, TWO_NONCE, 42, JABBERWOCKY)


def test_empty_inputs() -> None:
    empty = torch.empty(0, dtype=torch.uint8)
    assert ct.xor_keystream(empty, RFC_KEY, ZERO_NONCE, MAX_COUNTER).numel() == 0
    assert ct.keystream(RFC_KEY, ZERO_NONCE, MAX_COUNTER, 0).numel() == 0
    assert ct.xor_keystream_segments(empty, RFC_KEY, [], [], []).numel() == 0
    assert ct.xor_keystream_cpu_fast(empty, RFC_KEY, ZERO_NONCE, MAX_COUNTER).numel() == 0


# ----------------------------------------------------------------------------------------------------------
# The 32-bit counter limit: RFC 8439 allows 2**32 blocks per (key, nonce); wrapping would reuse keystream.


@pytest.mark.parametrize("name", sorted(IMPLEMENTATIONS))
def test_last_counter_value_is_usable(name: str) -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    data = os.urandom(64)
    assert IMPLEMENTATIONS[name](key, nonce, MAX_COUNTER, data) == reference(key, nonce, MAX_COUNTER, data)
    data = os.urandom(128)
    assert IMPLEMENTATIONS[name](key, nonce, MAX_COUNTER - 1, data) == \
        reference(key, nonce, MAX_COUNTER - 1, data)


@pytest.mark.parametrize("name", sorted(IMPLEMENTATIONS))
@pytest.mark.parametrize(("counter", "nbytes"), [(MAX_COUNTER, 65), (MAX_COUNTER - 1, 129), (2**32 - 3, 193)])
def test_counter_wrap_raises(name: str, counter: int, nbytes: int) -> None:
    with pytest.raises(ValueError, match="wrap"):
        IMPLEMENTATIONS[name](RFC_KEY, ZERO_NONCE, counter, bytes(nbytes))


def test_cryptography_refuses_the_same_wrap() -> None:
    """The reference also stops at the 32-bit boundary, so both sides agree on where the limit is."""
    with pytest.raises(ValueError):
        reference(RFC_KEY, ZERO_NONCE, MAX_COUNTER, bytes(65))


def test_keystream_and_segments_refuse_wrap() -> None:
    with pytest.raises(ValueError, match="wrap"):
        ct.keystream(RFC_KEY, ZERO_NONCE, MAX_COUNTER, 65)
    with pytest.raises(ValueError, match="wrap"):
        ct.xor_keystream_segments(torch.zeros(70, dtype=torch.uint8), RFC_KEY, [ZERO_NONCE] * 2,
                                  [0, MAX_COUNTER], [5, 65])


@pytest.mark.parametrize("counter", [-1, 2**32, 2**40])
def test_counter_out_of_range_raises(counter: int) -> None:
    with pytest.raises(ValueError, match="counter"):
        ct.xor_keystream(torch.zeros(1, dtype=torch.uint8), RFC_KEY, ZERO_NONCE, counter)
    with pytest.raises(ValueError, match="counter"):
        ct.xor_keystream_cpu_fast(torch.zeros(1, dtype=torch.uint8), RFC_KEY, ZERO_NONCE, counter)


# ----------------------------------------------------------------------------------------------------------
# Misuse is refused before any keystream is made.


def test_misuse_raises() -> None:
    data = torch.zeros(10, dtype=torch.uint8)
    with pytest.raises(ValueError, match="key"):
        ct.xor_keystream(data, bytes(31), ZERO_NONCE)
    with pytest.raises(ValueError, match="nonce"):
        ct.xor_keystream(data, RFC_KEY, bytes(8))
    with pytest.raises(TypeError, match="key"):
        ct.xor_keystream(data, "k" * 32, ZERO_NONCE)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key"):
        ct.xor_keystream(data, torch.zeros(32, dtype=torch.int32), ZERO_NONCE)
    with pytest.raises(TypeError, match="uint8"):
        ct.xor_keystream(data.float(), RFC_KEY, ZERO_NONCE)
    with pytest.raises(TypeError, match="counter"):
        ct.xor_keystream(data, RFC_KEY, ZERO_NONCE, True)
    with pytest.raises(TypeError, match="counter"):
        ct.xor_keystream(data, RFC_KEY, ZERO_NONCE, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="contiguous"):
        ct.xor_keystream(torch.zeros(4, 4, dtype=torch.uint8).t(), RFC_KEY, ZERO_NONCE)
    with pytest.raises(ValueError, match="shape"):
        ct.xor_keystream(data, RFC_KEY, ZERO_NONCE, out=torch.zeros(11, dtype=torch.uint8))
    with pytest.raises(ValueError, match="chunk_blocks"):
        ct.xor_keystream(data, RFC_KEY, ZERO_NONCE, chunk_blocks=0)


def test_segment_misuse_raises() -> None:
    data = torch.zeros(10, dtype=torch.uint8)
    with pytest.raises(ValueError, match="add up"):
        ct.xor_keystream_segments(data, RFC_KEY, [ZERO_NONCE], [0], [9])
    with pytest.raises(ValueError, match="one entry per segment"):
        ct.xor_keystream_segments(data, RFC_KEY, [ZERO_NONCE], [0, 1], [5, 5])
    with pytest.raises(ValueError, match="shape"):
        ct.xor_keystream_segments(data, RFC_KEY, torch.zeros(1, 8, dtype=torch.uint8), [0], [10])
    with pytest.raises(ValueError, match="nonce"):
        ct.xor_keystream_segments(data, RFC_KEY, [ZERO_NONCE, bytes(11)], [0, 0], [5, 5])
    with pytest.raises(ValueError, match="wrap"):
        ct.xor_keystream_segments(torch.zeros(130, dtype=torch.uint8), RFC_KEY, [ZERO_NONCE, ZERO_NONCE],
                                  [0, MAX_COUNTER], [0, 130])


def test_numpy_integers_are_accepted() -> None:
    np = pytest.importorskip("numpy")
    got = ct.xor_keystream(as_tensor(SUNSCREEN), RFC_KEY, SUNSCREEN_NONCE, np.uint32(1))
    assert as_bytes(got) == SUNSCREEN_CT


def test_cpu_fast_refuses_other_devices() -> None:
    with pytest.raises(ValueError, match="CPU"):
        ct.xor_keystream_cpu_fast(torch.zeros(4, dtype=torch.uint8, device="meta"), RFC_KEY, ZERO_NONCE)


# ----------------------------------------------------------------------------------------------------------
# CUDA: the same code path on device tensors (skipped cleanly without a GPU).


@CUDA
@pytest.mark.parametrize(("key", "nonce", "counter", "plaintext", "ciphertext"), ENCRYPTION_VECTORS)
def test_cuda_encryption_vectors(key: bytes, nonce: bytes, counter: int, plaintext: bytes,
                                 ciphertext: bytes) -> None:
    data = as_tensor(plaintext, "cuda")
    assert as_bytes(ct.xor_keystream(data, key, nonce, counter)) == ciphertext
    assert as_bytes(ct.xor_keystream(data, as_tensor(key, "cuda"), as_tensor(nonce, "cuda"), counter)) == \
        ciphertext


@CUDA
@SETTINGS
@given(req=chacha_requests(), chunk=st.sampled_from([None, 1, 3]))
def test_cuda_matches_cryptography(req: tuple[bytes, bytes, int, bytes], chunk: int | None) -> None:
    key, nonce, counter, data = req
    got = ct.xor_keystream(as_tensor(data, "cuda"), key, nonce, counter, chunk_blocks=chunk)
    assert got.device.type == "cuda"
    assert as_bytes(got) == reference(key, nonce, counter, data)


@CUDA
def test_cuda_multi_mib_in_place_and_segments() -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    data = os.urandom(5 * 2**20 + 3)
    gpu = as_tensor(data, "cuda")
    ct.xor_keystream(gpu, key, nonce, 2**31 - 7, out=gpu)
    assert as_bytes(gpu) == reference(key, nonce, 2**31 - 7, data)
    lengths = [100, 2**20, 0, 4097]
    nonces = [os.urandom(12) for _ in lengths]
    seg_data = os.urandom(sum(lengths))
    got = ct.xor_keystream_segments(as_tensor(seg_data, "cuda"), key, nonces, [1, 2, 3, 4], lengths)
    expected, pos = b"", 0
    for n_, c_, len_ in zip(nonces, [1, 2, 3, 4], lengths, strict=True):
        expected += reference(key, n_, c_, seg_data[pos : pos + len_])
        pos += len_
    assert as_bytes(got) == expected


@CUDA
@pytest.mark.slow
def test_cuda_fused_path_matches_cryptography() -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    data = os.urandom(3 * 2**20 + 5)
    got = ct.xor_keystream(as_tensor(data, "cuda"), key, nonce, 2**31 - 3, fused=True)
    assert as_bytes(got) == reference(key, nonce, 2**31 - 3, data)
