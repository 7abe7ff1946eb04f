"""RFC 8439 ChaCha20 keystream in torch integer tensor ops: one code path for CPU and CUDA tensors.

Training data stays encrypted until it reaches the device that trains on it; this module turns a key, a
96-bit nonce and a 32-bit block counter into keystream *on that device* and XORs it into ``uint8`` tensors.

How it is computed: the 16-word state of many blocks is held as ``int32`` rows (one row per state word, one
column per block), so every step of the quarter round is one tensor op over thousands of blocks. ``int32``
addition wraps modulo 2**32 on CPU and CUDA; right shifts are arithmetic, so rotations mask the sign bits
away. The four quarter rounds of a column (or diagonal) round run as one op on ``(4, B)`` row groups; the
diagonal alignment comes from wrapped copies of the first rows of ``b``, ``c`` and ``d``, so no roll is needed.

Limits (RFC 8439 section 2.4): the block counter is 32 bits, so one (key, nonce) encrypts at most 2**32
blocks (256 GiB). A request whose blocks would pass counter 2**32 - 1 raises ``ValueError``; the counter never
wraps silently (wrapping would reuse keystream).

This is a stream cipher without authentication: verify the Poly1305 tag (``cryptography``'s
``ChaCha20Poly1305``) before trusting what it decrypts. Two other paths exist, each named for what it is:
``fused=True`` compiles the block function with ``torch.compile`` on CUDA devices only (falling back to the
eager path anywhere else, or if compilation or its self-check fails), and :func:`xor_keystream_cpu_fast` calls
``cryptography``'s native ChaCha20 for CPU tensors. The eager tensor path is the reference the tests check.
"""

from __future__ import annotations

import bisect
import operator
import struct
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

__all__ = [
    "BLOCK_BYTES",
    "KEY_BYTES",
    "MAX_COUNTER",
    "NONCE_BYTES",
    "block_words",
    "keystream",
    "xor_keystream",
    "xor_keystream_cpu_fast",
    "xor_keystream_segments",
]

KEY_BYTES = 32
NONCE_BYTES = 12
BLOCK_BYTES = 64
MAX_COUNTER = 2**32 - 1
CPU_CHUNK_BLOCKS = 1 << 15
"""Blocks per step on CPU: 2 MiB of keystream and ~4 MiB of scratch, the fastest size measured."""
CUDA_CHUNK_BLOCKS = 1 << 18
"""Blocks per step on CUDA: 16 MiB of keystream, enough to hide the ~560 kernel launches of one step."""

_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"
_COLUMNS = ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15))
_DIAGONALS = ((0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14))
_LITTLE_ENDIAN = sys.byteorder == "little"

Bytes = bytes | bytearray | memoryview
KeyLike = Bytes | torch.Tensor
DeviceLike = torch.device | str | None


# ----------------------------------------------------------------------------------------------------------
# Argument handling: misuse raises TypeError/ValueError before any keystream is made.


def _signed32(value: int) -> int:
    """The int32 whose bit pattern is the unsigned 32-bit ``value``."""
    return value - (1 << 32) if value >= 1 << 31 else value


def _words(value: KeyLike, nbytes: int, name: str, device: torch.device) -> torch.Tensor:
    """Little-endian 32-bit words of a key or nonce, as an ``int32`` tensor on ``device``."""
    if isinstance(value, torch.Tensor):
        _check_key_tensor(value, nbytes, name)
        b = value.reshape(nbytes // 4, 4).to(device=device, dtype=torch.int64)
        w = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16) | (b[:, 3] << 24)
        return (w - ((w >> 31) << 32)).to(torch.int32)
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{name} must be bytes or a uint8 tensor, not {type(value).__name__}")
    if len(value) != nbytes:
        raise ValueError(f"{name} must be {nbytes} bytes")
    return torch.tensor(struct.unpack(f"<{nbytes // 4}i", value), dtype=torch.int32, device=device)


def _check_key_tensor(value: torch.Tensor, nbytes: int, name: str) -> None:
    if value.dtype != torch.uint8:
        raise TypeError(f"{name} tensor must have dtype uint8")
    if value.numel() != nbytes:
        raise ValueError(f"{name} tensor must hold {nbytes} bytes")


def _nonce_words(nonces: Sequence[Bytes] | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Words of many nonces as a ``(3, S)`` int32 tensor."""
    if isinstance(nonces, torch.Tensor):
        if nonces.dim() != 2 or nonces.shape[1] != NONCE_BYTES:
            raise ValueError("nonces tensor must have shape (segments, 12)")
        return _words(nonces.reshape(-1), nonces.numel(), "nonces", device).view(-1, 3).t().contiguous()
    if all(isinstance(n, bytes | bytearray | memoryview) and len(n) == NONCE_BYTES for n in nonces):
        words = struct.unpack(f"<{3 * len(nonces)}i", b"".join(nonces))  # one conversion for all segments
        return torch.tensor(words, dtype=torch.int32).view(-1, 3).t().contiguous().to(device)
    rows = [_words(n, NONCE_BYTES, "nonce", device) for n in nonces]  # raises the precise error
    return torch.stack(rows, dim=1)


def _integer(value: object, name: str) -> int:
    """``value`` as a Python int (numpy and torch integer scalars welcome; bools and floats refused)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}") from None


def _check_counter(counter: object, nbytes: object) -> tuple[int, int]:
    """Validate a 32-bit start counter against a message length; returns ``(counter, number of blocks)``."""
    counter, nbytes = _integer(counter, "counter"), _integer(nbytes, "length")
    if not 0 <= counter <= MAX_COUNTER:
        raise ValueError("counter must be in [0, 2**32 - 1]")
    if nbytes < 0:
        raise ValueError("length must be non-negative")
    nblocks = -(-nbytes // BLOCK_BYTES)
    if counter + nblocks - 1 > MAX_COUNTER:
        raise ValueError("request would wrap the 32-bit ChaCha20 block counter (RFC 8439: at most 2**32 "
                         "blocks per key and nonce)")
    return counter, nblocks


def _flat_bytes(data: torch.Tensor, name: str) -> torch.Tensor:
    """A contiguous tensor of ``uint8`` viewed as 1-D (a view, so in-place writes reach the caller)."""
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor")
    if data.dtype != torch.uint8:
        raise TypeError(f"{name} must have dtype uint8")
    if not data.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    return data.view(-1)


def _prepare_out(data: torch.Tensor, out: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Result tensor (``out``, or a new one) holding a copy of ``data``, and its flat view."""
    if out is None:
        out = data.clone(memory_format=torch.contiguous_format)
    else:
        flat_out = _flat_bytes(out, "out")
        if out.shape != data.shape or out.device != data.device:
            raise ValueError("out must have the shape and device of data")
        if flat_out.data_ptr() != data.data_ptr():
            flat_out.copy_(data.reshape(-1))
    return out, out.view(-1)


def _chunk_blocks(device: torch.device, chunk_blocks: int | None) -> int:
    if chunk_blocks is None:
        return CUDA_CHUNK_BLOCKS if device.type == "cuda" else CPU_CHUNK_BLOCKS
    if chunk_blocks < 1:
        raise ValueError("chunk_blocks must be positive")
    return chunk_blocks


# ----------------------------------------------------------------------------------------------------------
# The eager block function: in-place int32 ops over (4, B) row groups, with reused scratch buffers.


def _rotl_(x: torch.Tensor, n: int, tmp: torch.Tensor) -> None:
    """Rotate int32 ``x`` left by ``n`` bits in place (the arithmetic right shift is masked to logical)."""
    torch.bitwise_left_shift(x, n, out=tmp)
    x.bitwise_right_shift_(32 - n).bitwise_and_((1 << n) - 1).bitwise_or_(tmp)


def _quarter_rounds_(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor,
                     tmp: torch.Tensor) -> None:
    """Four ChaCha quarter rounds at once, row ``i`` of each ``(4, B)`` group forming quarter round ``i``."""
    a.add_(b)
    d.bitwise_xor_(a)
    _rotl_(d, 16, tmp)
    c.add_(d)
    b.bitwise_xor_(c)
    _rotl_(b, 12, tmp)
    a.add_(b)
    d.bitwise_xor_(a)
    _rotl_(d, 8, tmp)
    c.add_(d)
    b.bitwise_xor_(c)
    _rotl_(b, 7, tmp)


class _Workspace:
    """Scratch reused across chunks: 26 int32 rows of ``capacity`` columns, viewed at any smaller width."""

    def __init__(self, capacity: int, device: torch.device) -> None:
        self._buf = torch.empty(26 * capacity, dtype=torch.int32, device=device)

    def views(self, nblocks: int) -> tuple[torch.Tensor, ...]:
        """Contiguous ``a, b, c, d, tmp`` views of ``nblocks`` columns: ``a`` (4 rows), ``b`` (4 + 1 wrapped
        copy), ``c`` (4 + 2), ``d`` (4 + 3), ``tmp`` (4)."""
        rows = self._buf[: 26 * nblocks].view(26, nblocks)
        return rows[0:4], rows[4:9], rows[9:15], rows[15:22], rows[22:26]


def _eager_blocks(ws: _Workspace, key_w: torch.Tensor, init_d: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Run ChaCha20 on ``B`` blocks whose counter/nonce rows are ``init_d`` (4, B); returns 4 word groups."""
    nblocks = init_d.shape[1]
    a, b, c, d, tmp = ws.views(nblocks)
    sigma = _sigma(key_w.device)
    a.copy_(sigma[:, None].expand(4, nblocks))
    b[0:4].copy_(key_w[0:4, None].expand(4, nblocks))
    c[0:4].copy_(key_w[4:8, None].expand(4, nblocks))
    d[0:4].copy_(init_d)
    columns = (a, b[0:4], c[0:4], d[0:4])
    diagonals = (a, b[1:5], c[2:6], d[3:7])  # row i of these is diagonal quarter round i
    wrapped = ((b[4:5], b[0:1]), (c[4:6], c[0:2]), (d[4:7], d[0:3]))
    for _ in range(10):
        _quarter_rounds_(*columns, tmp)
        for copy, row in wrapped:
            copy.copy_(row)
        _quarter_rounds_(*diagonals, tmp)
        for copy, row in wrapped:
            row.copy_(copy)
    a.add_(sigma[:, None])
    b[0:4].add_(key_w[0:4, None])
    c[0:4].add_(key_w[4:8, None])
    d[0:4].add_(init_d)
    return a, b[0:4], c[0:4], d[0:4]


def _sigma(device: torch.device) -> torch.Tensor:
    return torch.tensor([_signed32(s) for s in _SIGMA], dtype=torch.int32, device=device)


# ----------------------------------------------------------------------------------------------------------
# The functional block function: the same rounds without in-place ops, the form torch.compile fuses.


def _rotl(x: torch.Tensor, n: int) -> torch.Tensor:
    return (x << n) | ((x >> (32 - n)) & ((1 << n) - 1))


def _functional_blocks(state: torch.Tensor) -> torch.Tensor:
    """ChaCha20 over a ``(16, B)`` int32 initial state; returns the ``(16, B)`` output words."""
    x = list(state.unbind(0))
    for _ in range(10):
        for ia, ib, ic, id_ in _COLUMNS + _DIAGONALS:
            a, b, c, d = x[ia], x[ib], x[ic], x[id_]
            a = a + b
            d = _rotl(d ^ a, 16)
            c = c + d
            b = _rotl(b ^ c, 12)
            a = a + b
            d = _rotl(d ^ a, 8)
            c = c + d
            b = _rotl(b ^ c, 7)
            x[ia], x[ib], x[ic], x[id_] = a, b, c, d
    return torch.stack(x) + state


def _initial_state(key_w: torch.Tensor, init_d: torch.Tensor) -> torch.Tensor:
    nblocks = init_d.shape[1]
    head = torch.cat([_sigma(key_w.device), key_w])[:, None].expand(12, nblocks)
    return torch.cat([head, init_d])


@cache
def _fused_for(device: torch.device) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The compiled block function for a CUDA device, or None if it cannot be built or gives wrong words."""
    try:
        fn = torch.compile(_functional_blocks, dynamic=True, fullgraph=True)
        key_w = _words(bytes(range(32)), KEY_BYTES, "key", device)
        init_d = torch.tensor([[1, 2**31 - 1, -1], [0, 1, -2], [0x4A000000, 3, 5], [0, 7, 9]],
                              dtype=torch.int32, device=device)
        expected = torch.stack(_eager_blocks(_Workspace(3, device), key_w, init_d)).view(16, 3)
        if torch.equal(fn(_initial_state(key_w, init_d)), expected):
            return fn
        warnings.warn("torch.compile'd ChaCha20 disagreed with the eager path; using the eager path",
                      RuntimeWarning, stacklevel=3)
    except Exception as exc:  # any compiler failure means: use the eager path
        warnings.warn(f"torch.compile unavailable for ChaCha20 ({type(exc).__name__}); using the eager path",
                      RuntimeWarning, stacklevel=3)
    return None


class _Engine:
    """Makes keystream word groups for successive chunks on one device, eager or fused."""

    def __init__(self, key_w: torch.Tensor, capacity: int, fused: bool) -> None:
        device = key_w.device
        self.key_w = key_w
        self.fn = _fused_for(device) if fused and device.type == "cuda" else None
        self.ws = _Workspace(capacity if self.fn is None else 0, device)  # the fused path needs none
        self._init_d = torch.empty(4 * capacity, dtype=torch.int32, device=device)

    def init_d(self, nblocks: int) -> torch.Tensor:
        """Scratch ``(4, nblocks)`` rows for the caller to fill with counters and nonce words."""
        return self._init_d[: 4 * nblocks].view(4, nblocks)

    def blocks(self, init_d: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Output words of the blocks whose last four initial state rows are ``init_d``, as 4 groups."""
        if self.fn is None:
            return _eager_blocks(self.ws, self.key_w, init_d)
        out = self.fn(_initial_state(self.key_w, init_d))
        return out[0:4], out[4:8], out[8:12], out[12:16]


# ----------------------------------------------------------------------------------------------------------
# Word groups to bytes.


def _xor_into(dst: torch.Tensor, groups: tuple[torch.Tensor, ...], nbytes: int) -> None:
    """XOR the keystream bytes of ``groups`` (4 x (4, B) words) into the first ``nbytes`` of flat ``dst``."""
    nblocks = groups[0].shape[1]
    aligned = dst.storage_offset() % 4 == 0 and dst.data_ptr() % 4 == 0
    if _LITTLE_ENDIAN and aligned and nbytes == BLOCK_BYTES * nblocks:
        cols = dst[:nbytes].view(torch.int32).view(nblocks, 16).t()  # transpose folded into the XOR
        for i, g in enumerate(groups):
            cols[4 * i : 4 * i + 4].bitwise_xor_(g)
        return
    dst[:nbytes].bitwise_xor_(_to_bytes(groups)[:nbytes])


def _to_bytes(groups: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Serialise word groups block by block, little-endian, into a flat ``uint8`` tensor."""
    nblocks = groups[0].shape[1]
    words = torch.empty(nblocks, 16, dtype=torch.int32, device=groups[0].device)
    cols = words.t()
    for i, g in enumerate(groups):
        cols[4 * i : 4 * i + 4].copy_(g)
    if _LITTLE_ENDIAN:
        return words.view(torch.uint8).view(-1)
    shifts = torch.tensor([0, 8, 16, 24], dtype=torch.int32, device=words.device)
    return ((words[..., None] >> shifts) & 0xFF).to(torch.uint8).view(-1)


def _fill_counters(row: torch.Tensor, ramp: torch.Tensor, first: int) -> None:
    """``row[j] = first + j`` modulo 2**32, as int32 bit patterns."""
    torch.add(ramp[: row.shape[0]], _signed32(first), out=row)


# ----------------------------------------------------------------------------------------------------------
# Public API.


def block_words(key: KeyLike, nonce: KeyLike, counter: int, device: DeviceLike = None) -> torch.Tensor:
    """The 16 output words of one ChaCha20 block (RFC 8439 section 2.3) as int32 bit patterns."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    counter, _ = _check_counter(counter, BLOCK_BYTES)
    engine = _Engine(_words(key, KEY_BYTES, "key", dev), 1, fused=False)
    init_d = engine.init_d(1)
    init_d[0, 0] = _signed32(counter)
    init_d[1:4, 0] = _words(nonce, NONCE_BYTES, "nonce", dev)
    return torch.cat([g[:, 0] for g in engine.blocks(init_d)])


def xor_keystream(data: torch.Tensor, key: KeyLike, nonce: KeyLike, counter: int = 1,
                  out: torch.Tensor | None = None, *, fused: bool = False,
                  chunk_blocks: int | None = None) -> torch.Tensor:
    """Encrypt or decrypt ``data`` (uint8, any shape, contiguous) with ChaCha20 on its own device.

    ``counter`` is the block counter of the first 64 bytes (1 for the payload of RFC 8439's AEAD). Returns
    ``out``: pass ``out=data`` to work in place (``out`` must otherwise not overlap ``data``); by default a
    new tensor is returned. Scratch memory is bounded by ``chunk_blocks`` (about 120 bytes per block, 184
    for unaligned data). ``fused=True`` asks for the ``torch.compile`` path, taken only on CUDA devices.
    """
    flat = _flat_bytes(data, "data")
    counter, nblocks = _check_counter(counter, flat.numel())
    key_w = _words(key, KEY_BYTES, "key", data.device)
    nonce_w = _words(nonce, NONCE_BYTES, "nonce", data.device)
    out, flat_out = _prepare_out(data, out)
    if nblocks == 0:
        return out
    step = min(_chunk_blocks(data.device, chunk_blocks), nblocks)
    engine = _Engine(key_w, step, fused)
    ramp = torch.arange(step, dtype=torch.int32, device=data.device)
    for first in range(0, nblocks, step):
        n = min(step, nblocks - first)
        init_d = engine.init_d(n)
        _fill_counters(init_d[0], ramp, counter + first)
        init_d[1:4].copy_(nonce_w[:, None].expand(3, n))
        start = first * BLOCK_BYTES
        _xor_into(flat_out[start:], engine.blocks(init_d), min(n * BLOCK_BYTES, flat.numel() - start))
    return out


def keystream(key: KeyLike, nonce: KeyLike, counter: int, nbytes: int, device: DeviceLike = None, *,
              fused: bool = False, chunk_blocks: int | None = None) -> torch.Tensor:
    """``nbytes`` of ChaCha20 keystream starting at block ``counter``, as a uint8 tensor on ``device``."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    nbytes = _integer(nbytes, "nbytes")
    _check_counter(counter, nbytes)  # before allocating
    zeros = torch.zeros(nbytes, dtype=torch.uint8, device=dev)
    return xor_keystream(zeros, key, nonce, counter, out=zeros, fused=fused, chunk_blocks=chunk_blocks)


@dataclass(frozen=True)
class _Segments:
    """Host-side layout of segments laid end to end: where each one's blocks and bytes begin and end."""

    lengths: list[int]
    block_start: list[int]
    block_end: list[int]
    byte_start: list[int]

    @classmethod
    def build(cls, counters: list[int], lengths: list[int]) -> _Segments:
        """Validate every segment's counter range and lay the segments out."""
        layout = cls([], [], [], [])
        blocks = nbytes = 0
        for ctr, n in zip(counters, lengths, strict=True):
            layout.lengths.append(n)
            layout.block_start.append(blocks)
            layout.byte_start.append(nbytes)
            blocks += _check_counter(ctr, n)[1]
            nbytes += n
            layout.block_end.append(blocks)
        return layout

    @property
    def total_blocks(self) -> int:
        return self.block_end[-1] if self.block_end else 0

    def span(self, first: int, n: int) -> tuple[slice, int, int]:
        """For global blocks ``first .. first + n - 1``: the segments they touch and the data bytes they cover."""
        seg_first = bisect.bisect_right(self.block_end, first)
        seg_last = bisect.bisect_right(self.block_end, first + n - 1)
        start = self.byte_start[seg_first] + BLOCK_BYTES * (first - self.block_start[seg_first])
        last = self.byte_start[seg_last] + BLOCK_BYTES * (first + n - 1 - self.block_start[seg_last])
        stop = min(last + BLOCK_BYTES, self.byte_start[seg_last] + self.lengths[seg_last])
        return slice(seg_first, seg_last + 1), start, stop

    def tables(self, counters: Sequence[int], device: torch.device) -> dict[str, torch.Tensor]:
        """Per-segment int64 tables on ``device``: block and byte offsets, lengths, first counters."""
        def table(values: Sequence[int]) -> torch.Tensor:
            return torch.tensor(list(values), dtype=torch.int64).to(device)

        return {"block_start": table(self.block_start), "block_end": table(self.block_end),
                "byte_start": table(self.byte_start), "length": table(self.lengths), "counter": table(counters)}


def xor_keystream_segments(data: torch.Tensor, key: KeyLike, nonces: Sequence[Bytes] | torch.Tensor,
                           counters: Sequence[int], lengths: Sequence[int],
                           out: torch.Tensor | None = None, *, fused: bool = False,
                           chunk_blocks: int | None = None) -> torch.Tensor:
    """Apply ChaCha20 to many segments laid end to end in ``data``, the blocks of all of them in one pass.

    Segment ``i`` is the next ``lengths[i]`` bytes, with nonce ``nonces[i]`` (bytes, or row ``i`` of a
    ``(segments, 12)`` uint8 tensor) and first block counter ``counters[i]``; the lengths must add up to
    ``data.numel()``. Same result as one :func:`xor_keystream` call per segment; ``out``, ``fused`` and
    ``chunk_blocks`` as there. Segments whose lengths are multiples of 64 take the fastest path.
    """
    flat = _flat_bytes(data, "data")
    counters = [_integer(c, "counter") for c in counters]
    lengths = [_integer(n, "length") for n in lengths]
    if not len(counters) == len(lengths) == len(nonces):
        raise ValueError("nonces, counters and lengths must have one entry per segment")
    layout = _Segments.build(counters, lengths)
    if sum(lengths) != flat.numel():
        raise ValueError("segment lengths must add up to data.numel()")
    dev = data.device
    key_w = _words(key, KEY_BYTES, "key", dev)
    nonce_w = _nonce_words(nonces, dev)
    out, flat_out = _prepare_out(data, out)
    if layout.total_blocks == 0:
        return out
    step = min(_chunk_blocks(dev, chunk_blocks), layout.total_blocks)
    engine = _Engine(key_w, step, fused)
    tables = layout.tables(counters, dev)
    for first in range(0, layout.total_blocks, step):
        n = min(step, layout.total_blocks - first)
        segs, start, stop = layout.span(first, n)
        init_d = engine.init_d(n)
        _fill_segment_rows(init_d, tables, nonce_w, first)
        groups = engine.blocks(init_d)
        if stop - start == n * BLOCK_BYTES:  # no short tails: keystream and data line up
            _xor_into(flat_out[start:], groups, stop - start)
        else:
            index = _tail_skipping_index(tables, segs, first, n, start, stop)
            flat_out[start:stop].bitwise_xor_(_to_bytes(groups).index_select(0, index))
    return out


def _fill_segment_rows(init_d: torch.Tensor, tables: dict[str, torch.Tensor], nonce_w: torch.Tensor,
                       first: int) -> None:
    """Fill the counter and nonce rows of global blocks ``first, first + 1, ...``."""
    g = torch.arange(first, first + init_d.shape[1], dtype=torch.int64, device=init_d.device)
    seg = torch.searchsorted(tables["block_end"], g, right=True)
    ctr = tables["counter"][seg] + (g - tables["block_start"][seg])
    init_d[0].copy_(ctr - ((ctr >> 31) << 32))
    init_d[1:4].copy_(nonce_w[:, seg])


def _tail_skipping_index(tables: dict[str, torch.Tensor], segs: slice, first: int, n: int, start: int,
                         stop: int) -> torch.Tensor:
    """Position in the chunk's flat keystream of each data byte in ``[start, stop)``.

    Bytes map one to one within a segment; the keystream bytes past a segment's end (the rest of its last
    block) are skipped. Computed per segment (a shift), then spread over its bytes.
    """
    dtype = torch.int32 if BLOCK_BYTES * n < 2**31 else torch.int64
    seg_block = tables["block_start"][segs]
    seg_byte = tables["byte_start"][segs]
    first_block = seg_block.clamp(min=first)  # the segment's first block inside this chunk
    end_block = tables["block_end"][segs].clamp(max=first + n)
    begin = seg_byte + BLOCK_BYTES * (first_block - seg_block)
    end = torch.minimum(seg_byte + BLOCK_BYTES * (end_block - seg_block), seg_byte + tables["length"][segs])
    shift = BLOCK_BYTES * (first_block - first) - (begin - start)
    runs = (end - begin).clamp(min=0)
    spread = torch.repeat_interleave(shift.to(dtype), runs.to(dtype), output_size=stop - start)
    return spread.add_(torch.arange(stop - start, dtype=dtype, device=spread.device))


_FAST_CHUNK_BYTES = 1 << 20


def xor_keystream_cpu_fast(data: torch.Tensor, key: KeyLike, nonce: KeyLike, counter: int = 1,
                           out: torch.Tensor | None = None) -> torch.Tensor:
    """Same result as :func:`xor_keystream` for CPU tensors, computed by ``cryptography``'s native ChaCha20.

    A separate fast path for host-side work (tools, benchmarks' baselines); it never touches an accelerator.
    """
    flat = _flat_bytes(data, "data")
    if data.device.type != "cpu":
        raise ValueError("xor_keystream_cpu_fast works on CPU tensors only; use xor_keystream")
    counter, _ = _check_counter(counter, flat.numel())
    key_b, nonce_b = _as_bytes(key, KEY_BYTES, "key"), _as_bytes(nonce, NONCE_BYTES, "nonce")
    out, flat_out = _prepare_out(data, out)
    if flat.numel():
        iv = counter.to_bytes(4, "little") + nonce_b
        encryptor = Cipher(algorithms.ChaCha20(key_b, iv), mode=None).encryptor()
        view = memoryview(flat_out.numpy())
        # cryptography refuses overlapping input and output, so each chunk goes through a small scratch buffer
        scratch = bytearray(min(len(view), _FAST_CHUNK_BYTES))
        for start in range(0, len(view), len(scratch)):
            part = view[start:start + len(scratch)]
            written = encryptor.update_into(part, scratch)
            part[:] = memoryview(scratch)[:written]
    return out


def _as_bytes(value: KeyLike, nbytes: int, name: str) -> bytes:
    """A key or nonce as ``bytes`` (the form ``cryptography`` takes), with the checks of :func:`_words`."""
    if isinstance(value, torch.Tensor):
        _check_key_tensor(value, nbytes, name)
        return value.detach().cpu().contiguous().numpy().tobytes()
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{name} must be bytes or a uint8 tensor, not {type(value).__name__}")
    if len(value) != nbytes:
        raise ValueError(f"{name} must be {nbytes} bytes")
    return bytes(value)
