"""Encrypted tensor datasets: shards of standard RFC 8439 ChaCha20-Poly1305 segments plus an authenticated header.

Layout::

    DIR/header.json        {header: body, keys: {kms_instance_id, data_key}, tag}
    DIR/shard-00000.bin    segments laid end to end, each ``ciphertext || 16-byte Poly1305 tag``

The body names the dataset id and the layout: arrays (name, dtype, row shape, rows per segment), rows per shard,
and per shard its rows, bytes and segment count. Shard ``s`` holds rows ``[s*R, (s+1)*R)`` of every array; inside
a shard each array's rows are cut into segments of ``rows_per_segment`` whole rows (so no row straddles two
nonces), arrays in header order, segments numbered ``0, 1, ...`` across the shard.

Cryptography: one fresh random 256-bit data key per dataset, wrapped by the owner's master key under
``key_context("tensor-key", dataset_id)``. Segment ``(s, j)`` is ``ChaCha20Poly1305(key).encrypt(nonce, rows,
aad)`` with ``nonce = s (u32 BE) || j (u64 BE)`` and ``aad = DOMAIN || dataset_id || 0x00 || s || j || array
name``. Every (shard, segment) pair is written exactly once and shard ``0xFFFFFFFF`` is reserved for the header,
so no nonce repeats under a key; the key is never reused across datasets (re-encrypting makes a new dataset id
and key). The header is authenticated by a Poly1305 tag over its canonical JSON under nonce ``0xFFFFFFFF ||
0^8`` (empty plaintext). Any RFC 8439 library decrypts a segment given the key, nonce and AAD.

Because RFC 8439's AEAD encrypts with the ChaCha20 keystream starting at block counter 1 and takes the Poly1305
key from block 0, a device can verify the tag over ciphertext (:func:`verify_segment`, no plaintext made) and
then decrypt with the raw keystream at counter 1 (``twofold.crypto.chacha20_tensor``).

This module needs numpy and cryptography only (no torch): the owner encrypts without an accelerator stack.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import shutil
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.poly1305 import Poly1305

from twofold.crypto.contexts import key_context, new_dataset_id
from twofold.crypto.document import Document, DocumentFormat
from twofold.crypto.mac import canonical, check_tag
from twofold.errors import ConfigError, InputError, IntegrityError
from twofold.fsutil import write_private
from twofold.keys.wrapping import KeyWrapper, WrappedKey

TENSORS = DocumentFormat("twofold-tensors", 1, "tensor dataset", part="header", key="data_key", tag="tag")
HEADER = "header.json"
CIPHER = "chacha20-poly1305-rfc8439"
KEY_BYTES = 32
TAG_BYTES = 16
HEADER_SHARD = 0xFFFFFFFF
MAX_SHARDS = HEADER_SHARD  # shard indexes 0 .. 2**32 - 2; the last value is the header's
SEGMENT_DOMAIN = b"twofold-tensor-segment-v1\x00"
HEADER_DOMAIN = b"twofold-tensor-header-v1\x00"
DEFAULT_SEGMENT_BYTES = 4 << 20
DEFAULT_SHARD_BYTES = 64 << 20
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
Progress = Callable[[int], None]


def tensor_context(dataset_id: str) -> bytes:
    """Associated data binding a wrapped data key to its tensor dataset (what a broker's policy checks)."""
    return key_context("tensor-key", dataset_id)


def segment_nonce(shard: int, segment: int) -> bytes:
    """The 96-bit nonce of segment ``segment`` of shard ``shard``: unique per (shard, segment)."""
    return struct.pack(">IQ", shard, segment)


def segment_aad(dataset_id: str, shard: int, segment: int, array: str) -> bytes:
    """Associated data of a segment: dataset id, shard, segment index and array name (fixed-width but the name)."""
    return SEGMENT_DOMAIN + dataset_id.encode("ascii") + b"\x00" + struct.pack(">IQ", shard, segment) + \
        array.encode("ascii")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.bin"


# -- layout ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArraySpec:
    """One array of the dataset: its dtype (numpy string, little-endian), row shape and rows per segment."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    rows_per_segment: int

    @property
    def row_bytes(self) -> int:
        return np.dtype(self.dtype).itemsize * math.prod(self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "row_bytes": self.row_bytes, "rows_per_segment": self.rows_per_segment}


@dataclass(frozen=True)
class Segment:
    """Where one segment's rows and bytes are: global rows ``[first_row, first_row + rows)`` of ``array``."""

    shard: int
    index: int
    array: str
    first_row: int
    rows: int
    offset: int  # byte offset of the segment's ciphertext in its shard file
    length: int  # ciphertext bytes, without the tag

    @property
    def nonce(self) -> bytes:
        return segment_nonce(self.shard, self.index)


@dataclass(frozen=True)
class Layout:
    """The authenticated layout of a tensor dataset."""

    dataset_id: str
    num_rows: int
    rows_per_shard: int
    arrays: tuple[ArraySpec, ...]

    @property
    def num_shards(self) -> int:
        return -(-self.num_rows // self.rows_per_shard)

    def shard_rows(self, shard: int) -> tuple[int, int]:
        start = shard * self.rows_per_shard
        return start, min(self.num_rows, start + self.rows_per_shard)

    def segments(self, shard: int) -> list[Segment]:
        """The segments of one shard in file order."""
        start, stop = self.shard_rows(shard)
        out: list[Segment] = []
        offset = 0
        for spec in self.arrays:
            for first in range(start, stop, spec.rows_per_segment):
                rows = min(spec.rows_per_segment, stop - first)
                length = rows * spec.row_bytes
                out.append(Segment(shard, len(out), spec.name, first, rows, offset, length))
                offset += length + TAG_BYTES
        return out

    def shard_bytes(self, shard: int) -> int:
        return sum(s.length + TAG_BYTES for s in self.segments(shard))

    def array(self, name: str) -> ArraySpec:
        for spec in self.arrays:
            if spec.name == name:
                return spec
        raise InputError(f"the dataset has no array {name!r} (arrays: {', '.join(a.name for a in self.arrays)})")


def rows_per_segment(row_bytes: int, segment_bytes: int) -> int:
    """Whole rows per segment, rounded down so that full segments are whole 64-byte ChaCha20 blocks."""
    rows = max(1, segment_bytes // row_bytes)
    step = 64 // math.gcd(row_bytes, 64)
    return rows - rows % step if rows >= step else rows


# -- the segment AEAD, in pieces a device can use ----------------------------------------------------------------


def poly1305_key(key: bytes, nonce: bytes) -> bytes:
    """RFC 8439 section 2.6: the one-time Poly1305 key is the first 32 bytes of ChaCha20 block 0."""
    encryptor = Cipher(algorithms.ChaCha20(key, b"\x00\x00\x00\x00" + nonce), mode=None).encryptor()
    return encryptor.update(bytes(32))


def _pad16(n: int) -> bytes:
    return bytes(-n % 16)


def verify_segment(key: bytes, nonce: bytes, aad: bytes, ciphertext: memoryview | bytes, tag: bytes) -> None:
    """Check a segment's Poly1305 tag over its ciphertext (RFC 8439 section 2.8) without decrypting anything.

    Raises the opaque IntegrityError on any mismatch.
    """
    mac = Poly1305(poly1305_key(key, nonce))
    mac.update(aad + _pad16(len(aad)))
    mac.update(ciphertext)
    mac.update(_pad16(len(ciphertext)) + struct.pack("<QQ", len(aad), len(ciphertext)))
    try:
        mac.verify(bytes(tag))
    except InvalidSignature:
        raise IntegrityError() from None


def header_tag(key: bytes, body: dict[str, Any]) -> str:
    """Poly1305 tag (the AEAD of an empty plaintext) over the canonical header body, under the reserved nonce."""
    aead = ChaCha20Poly1305(key)
    return aead.encrypt(segment_nonce(HEADER_SHARD, 0), b"", HEADER_DOMAIN + canonical(body)).hex()


# -- writing ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorDatasetInfo:
    """What was written."""

    path: Path
    dataset_id: str
    num_rows: int
    num_shards: int
    bytes: int


def _check_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not arrays:
        raise InputError("no arrays to encrypt")
    checked: dict[str, np.ndarray] = {}
    lengths = set()
    for name, value in arrays.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InputError("array names must be 1-64 characters of letters, digits, '_', '.' or '-'")
        array = np.asarray(value)
        if array.ndim == 0:
            raise InputError(f"array {name!r} is a scalar: arrays need a leading row dimension")
        if array.dtype.kind not in "biufc" or array.dtype.hasobject:
            raise InputError(f"array {name!r} has dtype {array.dtype}: only bool, integer, float and complex "
                             "arrays can be encrypted as tensors")
        if array.dtype.itemsize * math.prod(array.shape[1:]) == 0:
            raise InputError(f"array {name!r} has empty rows")
        lengths.add(array.shape[0])
        checked[name] = array
    if len(lengths) != 1:
        raise InputError("all arrays must have the same number of rows")
    if lengths.pop() == 0:
        raise InputError("the input has no rows")
    return checked


def _little_endian(array: np.ndarray) -> np.ndarray:
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    return np.ascontiguousarray(array, dtype=dtype)


def write_tensors(arrays: Mapping[str, np.ndarray], out: Path | str, wrapper: KeyWrapper, *,
                  rows_per_shard: int | None = None, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                  metadata: dict[str, Any] | None = None, progress: Progress | None = None) -> TensorDatasetInfo:
    """Encrypt same-length arrays (features, labels, ...) into a new tensor dataset directory ``out``.

    The data key is generated here, used, wrapped by ``wrapper`` and dropped; it never touches the disk in the
    clear. ``progress`` is called with the number of rows of each shard written.
    """
    out = Path(out)
    checked = _check_arrays(arrays)
    if segment_bytes < 64:
        raise ConfigError("segment size must be at least 64 bytes")
    if out.exists():
        raise ConfigError(f"output {out} already exists; choose a new directory")
    if not out.parent.is_dir():
        raise ConfigError(f"parent directory {out.parent} does not exist")
    num_rows = next(iter(checked.values())).shape[0]
    specs = tuple(
        ArraySpec(name, _little_endian(a[:0]).dtype.str, tuple(int(d) for d in a.shape[1:]),
                  rows_per_segment(a.dtype.itemsize * math.prod(a.shape[1:]), segment_bytes))
        for name, a in checked.items())
    total_row_bytes = sum(s.row_bytes for s in specs)
    if rows_per_shard is None:
        rows_per_shard = max(1, DEFAULT_SHARD_BYTES // total_row_bytes)
    if rows_per_shard < 1:
        raise ConfigError("rows per shard must be at least 1")
    dataset_id = new_dataset_id()
    layout = Layout(dataset_id, num_rows, rows_per_shard, specs)
    if layout.num_shards > MAX_SHARDS:
        raise ConfigError("too many shards: raise rows per shard")
    staging = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
    staging.mkdir(mode=0o700)
    key = ChaCha20Poly1305.generate_key()
    try:
        shards = [_write_shard(staging, layout, s, checked, key, progress) for s in range(layout.num_shards)]
        body = {
            "format": TENSORS.name,
            "format_version": TENSORS.version,
            "dataset_id": dataset_id,
            "created": time.time(),
            "kind": "tensors",
            "num_rows": num_rows,
            "rows_per_shard": rows_per_shard,
            "segment_bytes": segment_bytes,
            "encryption": {"cipher": CIPHER, "key_bits": 8 * KEY_BYTES, "tag_bytes": TAG_BYTES,
                           "nonce": "shard u32 BE || segment u64 BE", "keystream_counter": 1},
            "arrays": [s.to_dict() for s in specs],
            "shards": shards,
            "metadata": metadata or {},
        }
        wrapped = wrapper.wrap(key, tensor_context(dataset_id))
        header = Document(body, wrapper.keystore_id, wrapped, header_tag(key, body))
        write_private(staging / HEADER, TENSORS.render(header))
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return TensorDatasetInfo(out, dataset_id, num_rows, layout.num_shards, sum(s["bytes"] for s in shards))


def _write_shard(staging: Path, layout: Layout, shard: int, arrays: Mapping[str, np.ndarray], key: bytes,
                 progress: Progress | None) -> dict[str, Any]:
    aead = ChaCha20Poly1305(key)
    start, stop = layout.shard_rows(shard)
    rows: dict[str, np.ndarray] = {}
    segments = layout.segments(shard)
    path = staging / shard_name(shard)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        for seg in segments:
            if seg.array not in rows:
                rows[seg.array] = _little_endian(arrays[seg.array][start:stop]).reshape(-1).view(np.uint8)
            first = (seg.first_row - start) * (seg.length // seg.rows)
            aad = segment_aad(layout.dataset_id, shard, seg.index, seg.array)
            handle.write(aead.encrypt(seg.nonce, rows[seg.array][first: first + seg.length], aad))
        size = handle.tell()
    if progress:
        progress(stop - start)
    return {"name": shard_name(shard), "rows": stop - start, "bytes": size, "segments": len(segments)}


# -- reading ---------------------------------------------------------------------------------------------------


class TensorShards:
    """A tensor dataset directory: the header as read (public, unauthenticated) until :meth:`authenticate`.

    Reading is split so that the key-holding side (``twofold.torch.device``) verifies and decrypts, while this
    class only parses public metadata and reads ciphertext into caller-provided private buffers.
    """

    def __init__(self, path: Path, header: Document) -> None:
        self.path = path
        self.header = header  # as read: public, not authenticated
        self._layout: Layout | None = None

    @classmethod
    def open(cls, path: Path | str) -> TensorShards:
        path = Path(path)
        if not path.is_dir():
            raise InputError(f"{path} is not a tensor dataset directory")
        try:
            raw = (path / HEADER).read_bytes()
        except FileNotFoundError:
            raise InputError(f"{path} has no {HEADER}: not a twofold tensor dataset, or an incomplete one") from None
        return cls(path, TENSORS.parse(raw))

    # -- public, unauthenticated facts (used to ask for the key) --

    @property
    def dataset_id(self) -> str:
        return self.header.dataset_id

    @property
    def wrapped_key(self) -> str:
        return self.header.wrapped_key

    @property
    def key_context(self) -> bytes:
        return tensor_context(self.dataset_id)

    # -- authenticated --

    def authenticate(self, key: bytes) -> Layout:
        """Check the header tag under the data key and the directory listing; returns the verified layout."""
        body = self.header.body
        check_tag(header_tag(key, body), self.header.tag)
        layout = _layout_of(body)
        present = {p.name for p in self.path.iterdir()}
        if present != {HEADER} | {shard_name(s) for s in range(layout.num_shards)}:
            raise IntegrityError()
        for shard, entry in enumerate(body["shards"]):
            if (entry["name"] != shard_name(shard) or int(entry["bytes"]) != layout.shard_bytes(shard)
                    or int(entry["segments"]) != len(layout.segments(shard))):
                raise IntegrityError()
        self._layout = layout
        return layout

    @property
    def layout(self) -> Layout:
        if self._layout is None:
            raise ConfigError("authenticate the tensor dataset header first")
        return self._layout

    def read_shard_into(self, shard: int, buffer: memoryview) -> memoryview:
        """Read shard ``shard`` into the start of ``buffer`` (private memory: a read copy, never a mapping of
        the file, so a later change to the file cannot change bytes after they are verified)."""
        size = self.layout.shard_bytes(shard)
        if len(buffer) < size:
            raise ValueError("buffer too small for the shard")
        view = buffer[:size]
        try:
            with open(self.path / shard_name(shard), "rb") as handle:
                got = handle.readinto(view)
                extra = handle.read(1)
        except FileNotFoundError:
            raise IntegrityError() from None
        if got != size or extra:
            raise IntegrityError()
        return view

    def max_shard_bytes(self) -> int:
        return max(self.layout.shard_bytes(s) for s in range(self.layout.num_shards))

    def iter_shards(self) -> Iterator[tuple[int, memoryview]]:
        """Each shard's bytes in a fresh private buffer (owner-side tools)."""
        for shard in range(self.layout.num_shards):
            yield shard, self.read_shard_into(shard, memoryview(bytearray(self.layout.shard_bytes(shard))))

    def read_arrays(self, key: bytes) -> dict[str, np.ndarray]:
        """Decrypt the whole dataset on the host with the standard AEAD (owner-side use and cross-checks)."""
        layout = self._layout or self.authenticate(key)
        aead = ChaCha20Poly1305(key)
        out = {a.name: np.empty((layout.num_rows, *a.shape), dtype=np.dtype(a.dtype)) for a in layout.arrays}
        for shard, data in self.iter_shards():
            for seg in layout.segments(shard):
                blob = data[seg.offset: seg.offset + seg.length + TAG_BYTES]
                try:
                    plain = aead.decrypt(seg.nonce, blob, segment_aad(layout.dataset_id, shard, seg.index, seg.array))
                except InvalidTag:
                    raise IntegrityError() from None
                dest = out[seg.array][seg.first_row: seg.first_row + seg.rows]
                dest.reshape(-1).view(np.uint8)[:] = np.frombuffer(plain, dtype=np.uint8)
        return out


def _layout_of(body: dict[str, Any]) -> Layout:
    """The layout of an authenticated body (a malformed one is still refused: it was written by a bug)."""
    try:
        specs = tuple(ArraySpec(str(a["name"]), np.dtype(str(a["dtype"])).str, tuple(int(d) for d in a["shape"]),
                                int(a["rows_per_segment"])) for a in body["arrays"])
        layout = Layout(str(body["dataset_id"]), int(body["num_rows"]), int(body["rows_per_shard"]), specs)
        if (layout.num_rows < 1 or layout.rows_per_shard < 1 or not specs or len(body["shards"]) !=
                layout.num_shards or any(s.rows_per_segment < 1 or s.row_bytes < 1 for s in specs)):
            raise ValueError("layout")
    except (KeyError, TypeError, ValueError):
        raise InputError("the tensor dataset header has an invalid layout") from None
    return layout


def inspect_tensors(path: Path | str) -> dict[str, Any]:
    """Public metadata of a tensor dataset, read without any key and NOT authenticated."""
    shards = TensorShards.open(path)
    body = shards.header.body
    wrapped = WrappedKey.decode(shards.wrapped_key)
    return {
        "dataset_id": body["dataset_id"],
        "kind": body["kind"],
        "num_rows": body["num_rows"],
        "num_shards": len(body["shards"]),
        "bytes": sum(int(s["bytes"]) for s in body["shards"]),
        "arrays": body["arrays"],
        "encryption": body["encryption"],
        "keystore_id": wrapped.keystore_id,
        "master_key_version": wrapped.version,
        "authenticated": False,
    }
