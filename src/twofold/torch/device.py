"""On-device decryption of tensor shards: tags checked over ciphertext, then keystream XOR on the device.

The flow for one shard (a reader thread runs steps 1-2 for shard ``k + 1`` while the device decrypts shard ``k``):

1. read the shard file into a private host buffer (pinned on CUDA) with ``readinto``: a copy, never a mapping,
   so a later write to the file cannot change bytes after they are checked;
2. check every segment's Poly1305 tag over that buffer (:func:`twofold.data.tensors.verify_segment`): this needs
   the key but makes no plaintext; any failure raises the opaque IntegrityError and nothing is decrypted;
3. copy the checked buffer to the device (non-blocking) and XOR the ChaCha20 keystream (counter 1, RFC 8439's
   AEAD payload) into preallocated device tensors, which are then reinterpreted as each array's dtype and shape.
   The buffer is handed back to the reader only after the copy has completed (a CUDA event), so the bytes that
   reach the device are the bytes that were checked.

On CPU the "device" is this process's memory and the default keystream is ``cryptography``'s native ChaCha20
(``keystream_impl = "cryptography"``, an order of magnitude faster there); on CUDA it is the torch keystream
(``"torch-fused"``: ``torch.compile``'d, eager if compilation is unavailable). ``impl="torch"`` forces the tensor
path anywhere: it is bit-exact with the native one.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from twofold.crypto.chacha20_tensor import xor_keystream_cpu_fast, xor_keystream_segments
from twofold.data.tensors import TAG_BYTES, Layout, TensorShards, segment_aad, verify_segment
from twofold.errors import InputError

__all__ = ["DeviceDecryptor", "torch_dtype"]

IMPLS = ("auto", "cryptography", "torch", "torch-fused")
Progress = Callable[[int], None]


def torch_dtype(numpy_dtype: str) -> torch.dtype:
    """The torch dtype with the same bytes as a (little-endian) numpy dtype string."""
    try:
        return torch.from_numpy(np.empty(0, dtype=np.dtype(numpy_dtype))).dtype
    except (TypeError, ValueError):
        raise InputError(f"dtype {numpy_dtype} has no torch equivalent") from None


@dataclass
class _Buffer:
    host: torch.Tensor  # uint8, pinned on CUDA
    event: torch.cuda.Event | None = None


class DeviceDecryptor:
    """Holds a dataset's data key on one device and turns verified shards into device tensors.

    The key lives only in this object's memory (bytes for the host-side tag check, a uint8 tensor on the
    device for the keystream); it is never logged, pickled or written anywhere.
    """

    def __init__(self, key: bytes, device: torch.device | str = "cpu", *, impl: str = "auto") -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != 32:
            raise ValueError("the data key must be 32 bytes")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {', '.join(IMPLS)}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and impl == "cryptography":
            raise ValueError("the cryptography keystream runs on the host; CUDA devices use the torch keystream")
        if impl == "auto":
            impl = "cryptography" if self.device.type == "cpu" else "torch-fused"
        self.impl = impl
        self._key = bytes(key)
        self._key_device = torch.tensor(list(self._key), dtype=torch.uint8, device=self.device)

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("a DeviceDecryptor holds a data key and cannot be pickled")

    def __repr__(self) -> str:
        return f"DeviceDecryptor(device={self.device}, impl={self.impl})"

    # -- whole shards ------------------------------------------------------------------------------------------

    def materialize(self, shards: TensorShards, names: list[str] | None = None,
                    progress: Progress | None = None) -> dict[str, torch.Tensor]:
        """Verify and decrypt every shard into one device tensor per array (``names``: a subset, in order)."""
        layout = shards.layout
        specs = [layout.array(n) for n in names] if names is not None else list(layout.arrays)
        out = {s.name: torch.empty((layout.num_rows, *s.shape), dtype=torch_dtype(s.dtype), device=self.device)
               for s in specs}
        flat = {name: t.view(-1).view(torch.uint8) for name, t in out.items()}
        for shard, buffer in self._verified_shards(shards, layout):
            self._decrypt_shard(layout, shard, buffer, flat)
            if progress:
                progress(layout.shard_rows(shard)[1] - layout.shard_rows(shard)[0])
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        return out

    def _verified_shards(self, shards: TensorShards, layout: Layout):
        """Yield ``(shard, buffer)`` with every tag of the shard checked; a reader thread stays one shard ahead."""
        pin = self.device.type == "cuda"
        size = shards.max_shard_bytes()
        free: queue.Queue[_Buffer] = queue.Queue()
        for _ in range(2):
            free.put(_Buffer(torch.empty(size, dtype=torch.uint8, pin_memory=pin)))
        ready: queue.Queue[tuple[int, _Buffer] | BaseException | None] = queue.Queue()
        stop = threading.Event()

        def reader() -> None:
            try:
                for shard in range(layout.num_shards):
                    buffer = free.get()
                    if stop.is_set():
                        return
                    if buffer.event is not None:
                        buffer.event.synchronize()  # the previous copy out of this buffer has completed
                    view = shards.read_shard_into(shard, memoryview(buffer.host.numpy()))
                    self._verify_shard(layout, shard, view)
                    ready.put((shard, buffer))
                ready.put(None)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                ready.put(exc)

        thread = threading.Thread(target=reader, name="twofold-shard-reader", daemon=True)
        thread.start()
        try:
            while (item := ready.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                shard, buffer = item
                yield shard, buffer
                free.put(buffer)
        finally:
            stop.set()
            free.put(_Buffer(torch.empty(0, dtype=torch.uint8)))  # unblock a reader waiting for a buffer
            thread.join()

    def _verify_shard(self, layout: Layout, shard: int, data: memoryview) -> None:
        for seg in layout.segments(shard):
            end = seg.offset + seg.length
            verify_segment(self._key, seg.nonce, segment_aad(layout.dataset_id, shard, seg.index, seg.array),
                           data[seg.offset:end], data[end:end + TAG_BYTES])

    def _decrypt_shard(self, layout: Layout, shard: int, buffer: _Buffer, flat: dict[str, torch.Tensor]) -> None:
        segments = [s for s in layout.segments(shard) if s.array in flat]
        size = layout.shard_bytes(shard)
        if self.device.type == "cuda":
            staged = torch.empty(size, dtype=torch.uint8, device=self.device)
            staged.copy_(buffer.host[:size], non_blocking=True)
            buffer.event = torch.cuda.Event()
            buffer.event.record(torch.cuda.current_stream(self.device))
        else:
            staged = buffer.host[:size]
        by_array: dict[str, list] = {}
        for seg in segments:
            by_array.setdefault(seg.array, []).append(seg)
        for name, segs in by_array.items():
            row_bytes = layout.array(name).row_bytes
            start = segs[0].first_row * row_bytes
            region = flat[name][start: start + sum(s.length for s in segs)]
            if self.impl == "cryptography":
                for seg in segs:
                    begin = seg.first_row * row_bytes - start
                    xor_keystream_cpu_fast(staged[seg.offset: seg.offset + seg.length], self._key, seg.nonce, 1,
                                           out=region[begin: begin + seg.length])
                continue
            for seg in segs:
                begin = seg.first_row * row_bytes - start
                region[begin: begin + seg.length].copy_(staged[seg.offset: seg.offset + seg.length])
            xor_keystream_segments(region, self._key_device, [s.nonce for s in segs], [1] * len(segs),
                                   [s.length for s in segs], out=region, fused=self.impl == "torch-fused")

    # -- ciphertext kept on the device, rows decrypted per batch -------------------------------------------------

    def load_ciphertext(self, shards: TensorShards, names: list[str] | None = None,
                        progress: Progress | None = None) -> dict[str, torch.Tensor]:
        """Verify every shard and keep its ciphertext (tags removed) on the device: ``(rows, row_bytes)`` uint8.

        The tags are checked over the very bytes copied to the device; rows are later decrypted per batch with
        :meth:`decrypt_rows`, so plaintext exists on the device only for the batches in flight.
        """
        layout = shards.layout
        specs = [layout.array(n) for n in names] if names is not None else list(layout.arrays)
        out = {s.name: torch.empty((layout.num_rows, s.row_bytes), dtype=torch.uint8, device=self.device)
               for s in specs}
        for shard, buffer in self._verified_shards(shards, layout):
            size = layout.shard_bytes(shard)
            staged = buffer.host[:size]
            if self.device.type == "cuda":
                staged = torch.empty(size, dtype=torch.uint8, device=self.device)
                staged.copy_(buffer.host[:size], non_blocking=True)
                buffer.event = torch.cuda.Event()
                buffer.event.record(torch.cuda.current_stream(self.device))
            for seg in layout.segments(shard):
                if seg.array in out:
                    rows = out[seg.array][seg.first_row: seg.first_row + seg.rows].view(-1)
                    rows.copy_(staged[seg.offset: seg.offset + seg.length])
            if progress:
                progress(layout.shard_rows(shard)[1] - layout.shard_rows(shard)[0])
        return out

    def decrypt_rows(self, layout: Layout, name: str, ciphertext: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Decrypt rows ``index`` (host int64) of one array's device-resident ciphertext into a device tensor.

        Each row's keystream is cut from the blocks that cover it in its segment (counter ``1 + offset // 64``),
        computed on the device with the torch keystream.
        """
        spec = layout.array(name)
        rb = spec.row_bytes
        idx = index.to(torch.int64).cpu().numpy()
        shard, local = np.divmod(idx, layout.rows_per_shard)
        seg_in_array, row_in_seg = np.divmod(local, spec.rows_per_segment)
        seg = _segments_before(layout, name, shard) + seg_in_array
        offset = row_in_seg * rb
        blocks = math.ceil((rb + 63) / 64)
        nonces = np.empty((idx.size, 12), dtype=np.uint8)
        nonces[:, :4] = shard.astype(">u4").view(np.uint8).reshape(-1, 4)
        nonces[:, 4:] = seg.astype(">u8").view(np.uint8).reshape(-1, 8)
        counters = (1 + offset // 64).tolist()
        stream = torch.zeros(idx.size * blocks * 64, dtype=torch.uint8, device=self.device)
        xor_keystream_segments(stream, self._key_device, torch.from_numpy(nonces).to(self.device), counters,
                               [blocks * 64] * idx.size, out=stream, fused=self.impl == "torch-fused")
        skip = torch.from_numpy(offset % 64).to(self.device)
        take = skip[:, None] + torch.arange(rb, device=self.device)
        stream = stream.view(idx.size, blocks * 64).gather(1, take)
        rows = ciphertext.index_select(0, torch.from_numpy(idx).to(self.device))
        plain = rows.bitwise_xor_(stream)
        return plain.view(torch_dtype(spec.dtype)).view(idx.size, *spec.shape)


def _segments_before(layout: Layout, name: str, shard: np.ndarray) -> np.ndarray:
    """For each shard in ``shard``, the index of ``name``'s first segment (earlier arrays' segments come first)."""
    rows = np.minimum(layout.rows_per_shard, layout.num_rows - shard * layout.rows_per_shard)
    first = np.zeros_like(shard)
    for spec in layout.arrays:
        if spec.name == name:
            return first
        first += -(-rows // spec.rows_per_segment)
    raise InputError(f"the dataset has no array {name!r}")
