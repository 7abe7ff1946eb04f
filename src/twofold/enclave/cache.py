"""A bounded LRU cache of decrypted partitions, kept only in the enclave's memory."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class PartitionCache:
    """Maps (dataset id, partition index) to decrypted data, evicting least recently used beyond a byte budget."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, int], tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple[str, int]) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: tuple[str, int], value: Any, size: int) -> None:
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= evicted

    def drop(self, dataset_id: str) -> int:
        with self._lock:
            keys = [k for k in self._items if k[0] == dataset_id]
            for key in keys:
                self._bytes -= self._items.pop(key)[1]
            return len(keys)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"partitions": len(self._items), "bytes": self._bytes, "hits": self.hits, "misses": self.misses}
