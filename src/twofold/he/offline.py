"""Values that depend only on fresh randomness, precomputed by a background worker process and used once.

:class:`OfflineValues` keeps a deque near a target size with one worker process (the offline phase); each
value is popped exactly once, and a caller that finds the deque empty computes a fresh value itself (counted in
``made_online``). Subclasses say what the worker computes (:meth:`_worker`) and how a raw result is stored
(:meth:`_convert`); ``low_water`` makes the worker wait until half the target is used before it refills, so
that online work has the cores meanwhile.

The lock guards the deque and the counters only: no submission, callback or conversion runs while it is held
(a finished future runs its callback in the thread that attaches it, which would take the lock again).
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
                batches = self._plan()
            else:
                self.made_online += 1
                return None
        self._submit(batches)
        return value

    def _push(self, value: Any) -> None:
        with self._lock:
            self._ready.append(value)

    def start_background(self, target: int, batch: int = 64) -> None:
        """Keep about ``target`` values ready, computed by one worker process."""
        if target <= 0 or self._executor is not None:
            return
        if batch < 1:
            raise ValueError("batch must be >= 1")
        initializer, initargs, _, _ = self._worker()
        executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=initializer, initargs=initargs)
        with self._lock:
            self._target, self._batch, self._executor = target, batch, executor
            batches = self._plan()
        self._submit(batches)

    def _plan(self) -> int:
        """How many batches to submit now; reserves them in ``_inflight``. Called with the lock held, and does
        nothing but arithmetic: the submissions (and any callback they run) happen after the lock is released."""
        if self._executor is None:
            return 0
        if self.low_water:
            if len(self._ready) < self._target // 2:
                self._filling = True
            if not self._filling:
                return 0
            if len(self._ready) + self._inflight >= self._target:
                self._filling = False
                return 0
        batches = 0
        while len(self._ready) + self._inflight < self._target and self._inflight < 2 * self._batch:
            self._inflight += self._batch
            batches += 1
        return batches

    def _submit(self, batches: int) -> None:
        """Submit reserved batches to the worker; never called with the lock held (``add_done_callback`` runs
        ``_collect`` at once, in this thread, when a batch has already finished)."""
        if not batches:
            return
        executor = self._executor
        _, _, work, args = self._worker()
        for submitted in range(batches):
            try:
                if executor is None:
                    raise RuntimeError("closed")
                fut = executor.submit(work, self._batch, *args)
            except RuntimeError:  # the executor is shutting down (close, interpreter exit)
                with self._lock:
                    self._inflight -= (batches - submitted) * self._batch
                    self._executor = None
                return
            fut.add_done_callback(self._collect)

    def _collect(self, fut: Any) -> None:
        try:
            values = [self._convert(v) for v in fut.result()]
        except Exception:  # a failed or cancelled batch: the pool refills on the next pop
            values = []
        with self._lock:
            self._inflight -= self._batch
            self._ready.extend(values)
            batches = self._plan() if values else 0
        self._submit(batches)

    def wait_filled(self, minimum: int, timeout: float = 600.0) -> bool:
        """Block until at least ``minimum`` values are ready (or the timeout passes)."""
        deadline = time.monotonic() + timeout
        while len(self._ready) < minimum and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self._ready) >= minimum

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
