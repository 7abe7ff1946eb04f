"""Values that depend only on fresh randomness, precomputed by a background worker process and used once.

:class:`OfflineValues` keeps a deque near a target size with one worker process (the offline phase); each
value is popped exactly once, and a caller that finds the deque empty computes a fresh value itself (counted in
``made_online``). Subclasses say what the worker computes (:meth:`_worker`) and how a raw result is stored
(:meth:`_convert`); ``low_water`` makes the worker wait until half the target is used before it refills, so
that online work has the cores meanwhile.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any


class OfflineValues:
    """A thread-safe deque of precomputed values with an optional background worker process."""

    low_water = False

    def __init__(self) -> None:
        self._ready: deque[Any] = deque()
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._target = 0
        self._batch = 64
        self._inflight = 0
        self._filling = True
        self.made_online = 0

    def __len__(self) -> int:
        return len(self._ready)

    def _worker(self) -> tuple[Callable[..., None], tuple, Callable[..., list], tuple]:
        """(initializer, its arguments, batch function, its arguments after the batch size)."""
        raise NotImplementedError

    def _convert(self, raw: Any) -> Any:
        return raw

    def _pop(self) -> Any | None:
        """The next precomputed value, or None (counted in ``made_online``) when there is none."""
        with self._lock:
            if self._ready:
                value = self._ready.popleft()
                self._top_up()
                return value
            self.made_online += 1
        return None

    def _push(self, value: Any) -> None:
        with self._lock:
            self._ready.append(value)

    def start_background(self, target: int, batch: int = 64) -> None:
        """Keep about ``target`` values ready, computed by one worker process."""
        if target <= 0 or self._executor is not None:
            return
        self._target, self._batch = target, batch
        initializer, initargs, _, _ = self._worker()
        self._executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=initializer, initargs=initargs)
        with self._lock:
            self._top_up()

    def _top_up(self) -> None:  # called with the lock held
        if self._executor is None:
            return
        if self.low_water:
            if len(self._ready) < self._target // 2:
                self._filling = True
            if not self._filling:
                return
            if len(self._ready) + self._inflight >= self._target:
                self._filling = False
                return
        _, _, work, args = self._worker()
        while len(self._ready) + self._inflight < self._target and self._inflight < 2 * self._batch:
            try:
                fut = self._executor.submit(work, self._batch, *args)
            except RuntimeError:  # the executor is shutting down (close, interpreter exit)
                self._executor = None
                return
            self._inflight += self._batch
            fut.add_done_callback(self._collect)

    def _collect(self, fut: Any) -> None:
        try:
            values = fut.result()
        except Exception:
            values = []
        with self._lock:
            self._inflight -= self._batch
            self._ready.extend(self._convert(v) for v in values)
            if values:
                self._top_up()

    def wait_filled(self, minimum: int, timeout: float = 600.0) -> bool:
        """Block until at least ``minimum`` values are ready (or the timeout passes)."""
        deadline = time.monotonic() + timeout
        while len(self._ready) < minimum and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self._ready) >= minimum

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
