"""Background randomness pools under contention: no deadlock, no value handed out twice."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest

from twofold.he.fastexp import T1Source
from twofold.he.offline import OfflineValues
from twofold.he.randomness import KeyPools, PairPool


class _DoneAtOnce:
    """An executor whose futures have finished before ``submit`` returns: ``add_done_callback`` then runs the
    callback in the submitting thread, the case that deadlocked a pool that submitted under its own lock."""

    def __init__(self) -> None:
        self.submitted = 0

    def submit(self, fn, *args):
        self.submitted += 1
        future: Future = Future()
        future.set_result(fn(*args))
        return future

    def shutdown(self, **kwargs) -> None:
        pass


class _Counter(OfflineValues):
    """Values 0, 1, 2, ... from a 'worker' that runs inline."""

    def __init__(self) -> None:
        super().__init__()
        self._next = 0
        self._next_lock = threading.Lock()

    def _make(self, count: int) -> list[int]:
        with self._next_lock:
            start, self._next = self._next, self._next + count
        return list(range(start, start + count))

    def _worker(self) -> tuple:
        return (None, (), self._make, ())


def _in_threads(fn, threads: int, timeout: float) -> None:
    """Run ``fn`` in ``threads`` threads; fail (instead of hanging) if any is still running after ``timeout``."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + timeout
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))
    assert not any(w.is_alive() for w in workers), "a pool user is stuck (deadlock?)"
    assert not errors, errors


@pytest.mark.timeout(60)
@pytest.mark.parametrize("low_water", [False, True])
def test_a_batch_that_finishes_at_once_does_not_deadlock(low_water):
    pool = _Counter()
    pool.low_water = low_water
    executor = _DoneAtOnce()
    with pool._lock:  # what start_background sets up, with a worker that answers before submit returns
        pool._executor, pool._target, pool._batch = executor, 4, 1  # type: ignore[assignment]
    popped: list[int] = []
    lock = threading.Lock()

    def pop_many() -> None:
        for _ in range(200):
            value = pool._pop()
            if value is not None:
                with lock:
                    popped.append(value)

    pool._push(-1)  # the first pop finds a value and tops the pool up from inside _pop
    _in_threads(pop_many, 8, 30)
    assert executor.submitted > 0
    assert len(popped) == len(set(popped)), "a value was handed out twice"
    assert -1 in popped


@pytest.mark.timeout(120)
def test_t1_source_batch_one_tiny_target_from_many_threads(crypto):
    source = T1Source(crypto.system.public)
    source.start_background(2, batch=1)
    try:
        assert source.wait_filled(1, timeout=60)
        seen: list[int] = []
        lock = threading.Lock()

        def use() -> None:
            for _ in range(25):
                value = int(source._hr())
                with lock:
                    seen.append(value)

        _in_threads(use, 12, 90)
        assert len(seen) == 300
        assert len(set(seen)) == 300, "randomness was reused"
        assert source.made_online < 300  # the worker did contribute
    finally:
        source.close()


@pytest.mark.timeout(120)
def test_pair_pool_encrypts_correctly_from_many_threads(crypto):
    from twofold.crypto import dtpkc

    pool = PairPool(crypto.owner.public)
    pool.start_background(3, batch=1)
    try:
        results: list[tuple[int, dtpkc.Ciphertext]] = []
        lock = threading.Lock()

        def use() -> None:
            for m in range(10):
                ct = pool.encrypt(m)
                with lock:
                    results.append((m, ct))

        _in_threads(use, 10, 90)
        assert len({ct.t2 for _, ct in results}) == len(results), "an encryption pair was reused"
        for m, ct in results[:20]:
            assert int(dtpkc.weak_decrypt(crypto.owner.secret, ct)) == m
    finally:
        pool.close()


def test_key_pools_stay_bounded_under_concurrent_use(crypto):
    pools = KeyPools(limit=2)
    made: list[PairPool] = []
    lock = threading.Lock()

    def make() -> PairPool:
        pool = PairPool(crypto.owner.public)
        with lock:
            made.append(pool)
        return pool

    def use() -> None:
        for key in (b"a", b"b", b"c", b"a"):
            pools.get(key, make)

    _in_threads(use, 6, 60)
    assert len(pools) <= 2
