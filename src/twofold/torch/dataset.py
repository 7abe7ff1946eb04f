"""``EncryptedTensorDataset`` and ``EncryptedDataLoader``: train on tensor datasets decrypted only on the device.

Usage::

    dataset = EncryptedTensorDataset("train.tfds", keys=DeviceKeyProvider(broker), device="cuda")
    loader = EncryptedDataLoader(dataset, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0))
    for x, y in loader:          # device tensors, bit-identical to DataLoader(TensorDataset(x, y), ...) batches
        ...

Two residency modes, named for what sits in device memory between batches:

- ``decrypt="once"`` (default): every shard is verified and decrypted on the device when the dataset opens;
  batches are gathered from the device-resident plaintext, exactly like a ``TensorDataset`` kept on the device.
- ``decrypt="per-batch"``: only verified *ciphertext* stays on the device; each batch's rows are decrypted there
  when the loader prepares it (in a background thread / CUDA side stream, overlapping the model's compute).

Shuffling and batching are torch's own: the loader drives a standard ``DataLoader`` over row indices with the
caller's sampler settings and generator, so it draws exactly the random numbers (and indices) a plaintext
``DataLoader(TensorDataset(...))`` with the same arguments would. ``num_workers > 0`` is supported: the worker
processes produce the index batches only. They never hold the key, the ciphertext to be decrypted or any
plaintext, so nothing secret crosses the (untrusted) shared memory between processes; gathering and decryption
stay in the training process, from the buffers whose tags it checked.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from twofold.data.tensors import Layout, TensorShards
from twofold.errors import ConfigError
from twofold.keys.wrapping import KeyWrapper
from twofold.torch.device import DeviceDecryptor, Progress
from twofold.torch.keys import KeyProvider, as_key_provider

__all__ = ["EncryptedDataLoader", "EncryptedTensorDataset"]

MODES = ("once", "per-batch")
Batch = tuple[torch.Tensor, ...]


class EncryptedTensorDataset(Dataset):
    """A tensor dataset opened on one device: header authenticated, every tag checked, decrypted there."""

    def __init__(self, path: Path | str, keys: KeyProvider | KeyWrapper | str, device: torch.device | str = "cpu",
                 *, arrays: Sequence[str] | None = None, decrypt: str = "once", impl: str = "auto",
                 progress: Progress | None = None) -> None:
        if decrypt not in MODES:
            raise ConfigError(f"decrypt must be one of {', '.join(MODES)}")
        shards = TensorShards.open(path)
        key = as_key_provider(keys).data_key(shards.wrapped_key, shards.key_context)
        self.layout: Layout = shards.authenticate(key)
        self._decryptor = DeviceDecryptor(key, device, impl=impl)
        del key
        self.names = list(arrays) if arrays is not None else [a.name for a in self.layout.arrays]
        self.mode = decrypt
        if decrypt == "once":
            plain = self._decryptor.materialize(shards, self.names, progress)
            self._tensors: Batch = tuple(plain[n] for n in self.names)
            self._ciphertext: dict[str, torch.Tensor] = {}
        else:
            self._ciphertext = self._decryptor.load_ciphertext(shards, self.names, progress)
            self._tensors = ()

    @property
    def dataset_id(self) -> str:
        return self.layout.dataset_id

    @property
    def device(self) -> torch.device:
        return self._decryptor.device

    @property
    def keystream_impl(self) -> str:
        """Which keystream decrypts: ``cryptography`` (native, CPU) or ``torch`` / ``torch-fused`` (tensor ops)."""
        return self._decryptor.impl if self.mode == "once" else self._decryptor.impl.replace("cryptography", "torch")

    @property
    def tensors(self) -> Batch:
        """The decrypted device tensors (``decrypt="once"`` only), in ``names`` order."""
        if self.mode != "once":
            raise ConfigError("a per-batch dataset keeps only ciphertext on the device; use batch() or a loader")
        return self._tensors

    def __len__(self) -> int:
        return self.layout.num_rows

    def batch(self, index: torch.Tensor) -> Batch:
        """Rows ``index`` (int64, host) of every array, as device tensors."""
        _refuse_workers()
        if self.mode == "once":
            index = index.to(self.device, non_blocking=True)
            return tuple(t.index_select(0, index) for t in self._tensors)
        return tuple(self._decryptor.decrypt_rows(self.layout, n, self._ciphertext[n], index) for n in self.names)

    def __getitem__(self, index: int) -> Batch:
        return tuple(t[0] for t in self.batch(torch.tensor([index], dtype=torch.int64)))

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("an EncryptedTensorDataset holds a data key and plaintext; it cannot be pickled")


def _refuse_workers() -> None:
    if get_worker_info() is not None:
        raise ConfigError("decrypted rows must not leave the training process: use EncryptedDataLoader (its "
                          "workers produce indices only), not a DataLoader over the dataset itself")


class _Indices(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index

    def __getitems__(self, indices: list[int]) -> list[int]:
        return indices


def _index_batch(indices: list[int]) -> torch.Tensor:
    return torch.tensor(indices, dtype=torch.int64)


def _fetcher(dataset: Dataset) -> Callable[[torch.Tensor], Batch]:
    if isinstance(dataset, EncryptedTensorDataset):
        return dataset.batch
    tensors = getattr(dataset, "tensors", None)
    if not tensors:
        raise TypeError("EncryptedDataLoader needs an EncryptedTensorDataset or a TensorDataset")

    def fetch(index: torch.Tensor) -> Batch:  # plaintext baseline: the same gather, no decryption
        return tuple(t.index_select(0, index.to(t.device, non_blocking=True)) for t in tensors)

    return fetch


class EncryptedDataLoader:
    """Batches of an :class:`EncryptedTensorDataset` on its device, prepared ``prefetch`` batches ahead.

    Arguments mirror ``torch.utils.data.DataLoader``. Also accepts a ``TensorDataset`` (plaintext baselines go
    through the very same code, minus decryption).
    """

    def __init__(self, dataset: Dataset, batch_size: int = 1, shuffle: bool = False, *,
                 sampler: Sampler | None = None, generator: torch.Generator | None = None, drop_last: bool = False,
                 num_workers: int = 0, prefetch: int = 2) -> None:
        if prefetch < 0:
            raise ValueError("prefetch must be >= 0")
        self.dataset = dataset
        self.prefetch = prefetch
        self._fetch = _fetcher(dataset)
        self._device = getattr(dataset, "device", None) or dataset.tensors[0].device  # type: ignore[attr-defined]
        self._indices = DataLoader(_Indices(len(dataset)), batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                                   generator=generator, drop_last=drop_last, num_workers=num_workers,
                                   collate_fn=_index_batch)

    def __len__(self) -> int:
        return len(self._indices)

    def __iter__(self) -> Iterator[Batch]:
        indices = iter(self._indices)  # draws from the generator / global RNG where a DataLoader would
        first = next(indices, None)  # the sampler's permutation is drawn here, in the caller's thread
        if first is None:
            return
        if self.prefetch == 0:
            yield self._fetch(first)
            for index in indices:
                yield self._fetch(index)
            return
        yield from self._prefetched(first, indices)

    def _prefetched(self, first: torch.Tensor, indices: Iterator[torch.Tensor]) -> Iterator[Batch]:
        """A producer thread prepares batches (on a CUDA side stream) while the caller computes on the last."""
        cuda = self._device.type == "cuda"
        side = torch.cuda.Stream(self._device) if cuda else None
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for index in _chain(first, indices):
                    if cuda:
                        with torch.cuda.stream(side):
                            batch = self._fetch(index)
                            event = torch.cuda.Event()
                            event.record(side)
                    else:
                        batch, event = self._fetch(index), None
                    if not put((batch, event)):
                        return
                put(None)
            except BaseException as exc:  # re-raised in the consumer
                put(exc)

        thread = threading.Thread(target=produce, name="twofold-batch-prefetch", daemon=True)
        thread.start()
        try:
            while (item := ready.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                batch, event = item
                if event is not None:
                    stream = torch.cuda.current_stream(self._device)
                    stream.wait_event(event)
                    for t in batch:
                        t.record_stream(stream)
                yield batch
        finally:
            stop.set()
            thread.join()


def _chain(first: torch.Tensor, rest: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    yield first
    yield from rest
