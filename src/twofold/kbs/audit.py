"""Append-only, hash-chained audit log of the key broker: one JSON line per grant or denial; never key bytes.

Every entry carries ``seq`` (0, 1, 2, ...), ``prev`` (the previous entry's ``hash``, or :data:`GENESIS` for the
first) and its own ``hash``: SHA-256 over :data:`DOMAIN` followed by the canonical JSON (sorted keys, compact
separators, ASCII) of the entry without ``hash``, so ``prev`` is covered. A line is stored in exactly that canonical
form plus ``"hash"``, so :func:`verify_chain` can insist on byte equality.

What the chain shows, and what it cannot: any edit, deletion, insertion, reordering or truncation *in the middle*
breaks it. It is not keyed, so whoever can write the file can still append well-formed entries at its end, cut
entries off its end, or rewrite everything after some point. The owner detects the last two by recording the
head (``twofold audit verify``) now and then and checking later that the log still extends it (``--expect-head``);
that the entries after the recorded head are genuine rests on the broker's host.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from twofold.errors import ConfigError, IntegrityError

DOMAIN = b"twofold kbs audit entry v1\x00"
GENESIS = "0" * 64
RESERVED = frozenset({"seq", "prev", "hash", "time", "event", "action"})


@dataclass(frozen=True)
class ChainHead:
    """A verified log: how many entries it holds and the hash of its last (:data:`GENESIS` when empty).

    ``earlier_entries``: when :func:`verify_chain` was given an ``earlier_head``, how many entries the log held
    when that was its head.
    """

    entries: int
    head: str
    earlier_entries: int | None = None


def canonical(entry: dict[str, Any]) -> bytes:
    """The one byte form of an entry that is hashed and stored."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    """The hex SHA-256 of ``entry`` (without its ``hash`` field), domain-separated."""
    return hashlib.sha256(DOMAIN + canonical(entry)).hexdigest()


def _line(entry: dict[str, Any], digest: str) -> bytes:
    return canonical({**entry, "hash": digest}) + b"\n"


class AuditLog:
    """The broker's writer. Opening verifies the existing log and resumes its chain (an :class:`IntegrityError`
    if it does not verify) and takes an exclusive lock on the file for as long as it is open, so that a second
    writer (another broker with the same log) fails with a :class:`ConfigError` instead of forking the chain."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"audit log {self.path} is open in another writer (a second key broker?); "
                                  "give each broker its own --audit-log") from None
            head = verify_chain(self.path)  # under the lock: nothing is appended while it is read
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise
        self._seq, self._prev = head.entries, head.head
        self._torn = False

    @property
    def head(self) -> ChainHead:
        """The chain's state after the last entry written."""
        with self._lock:
            return ChainHead(self._seq, self._prev)

    def record(self, event: str, action: str, **fields: Any) -> None:
        """Append ``{"seq", "prev", "time", "event": grant|deny, "action", ..., "hash"}``; values must be ids and
        reasons only. Safe to call from several threads."""
        clash = RESERVED & fields.keys()
        if clash:
            raise ValueError(f"audit fields {sorted(clash)} are set by the log itself")
        # One small lock around taking (seq, prev), hashing and the one os.write: entries must reach the file in
        # chain order, so the write cannot move out of it. That write is the only I/O under the lock, and it is
        # acceptable: an append of one short line to a local file (no callback, no network, no second lock), so
        # the lock is held for microseconds. The key broker calls this from its one event-loop thread anyway.
        with self._lock:
            if self._fd is None:
                raise ValueError(f"audit log {self.path} is closed")
            if self._torn:
                raise OSError(errno.EIO, f"audit log {self.path} has a torn last line; nothing more is appended")
            entry = {"seq": self._seq, "prev": self._prev, "time": time.time(), "event": event, "action": action,
                     **fields}
            digest = entry_hash(entry)
            line = _line(entry, digest)
            # With O_APPEND the kernel moves to the end and writes as one step, so one os.write of a whole line
            # never interleaves with another writer's line (and the file lock keeps other writers out anyway).
            written = os.write(self._fd, line)
            if written != len(line):  # a full disk: the chain ends in a torn line that verification will name
                self._torn = True
                raise OSError(errno.ENOSPC, f"short write to audit log {self.path} ({written} of {len(line)} bytes)")
            self._seq, self._prev = self._seq + 1, digest

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)  # releases the file lock
                self._fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _broken(path: Path, number: int, why: str) -> IntegrityError:
    # The owner verifies her own log: naming the line and the check helps her and gives no oracle to anyone.
    return IntegrityError(f"audit log {path} does not verify at line {number}: {why}")


def _verified(path: Path) -> Iterator[str]:
    """The hash of each entry of the log at ``path``, in order, each after its line has been checked."""
    prev = GENESIS
    with open(path, "rb") as lines:
        for seq, raw in enumerate(lines):
            number = seq + 1
            if not raw.endswith(b"\n"):
                raise _broken(path, number, "the last line is incomplete (a torn write or a cut file)")
            try:
                entry = json.loads(raw)
            except ValueError:
                raise _broken(path, number, "not a JSON line") from None
            if not isinstance(entry, dict) or not {"seq", "prev", "hash"} <= entry.keys():
                raise _broken(path, number, "not a chained entry (a line inserted, or a log written before the "
                                            "hash chain: move it aside to start a new one)")
            digest = entry.pop("hash")
            if type(entry["seq"]) is not int or entry["seq"] != seq:
                raise _broken(path, number, f"sequence number {entry['seq']!r} where {seq} was due (a line was "
                                            "deleted, inserted or moved)")
            if entry["prev"] != prev:
                raise _broken(path, number, "it does not follow the previous entry (a line was deleted, inserted "
                                            "or moved)")
            try:
                expected = entry_hash(entry)
            except ValueError:
                raise _broken(path, number, "not canonical JSON (the entry was edited)") from None
            if digest != expected:
                raise _broken(path, number, "its hash does not match its content (the entry was edited)")
            if raw != _line(entry, digest):
                raise _broken(path, number, "not in canonical form (the entry was edited)")
            prev = digest
            yield digest


def verify_chain(path: Path | str, earlier_head: str | None = None) -> ChainHead:
    """Check the whole chain of the log at ``path`` and return its :class:`ChainHead`.

    Raises :class:`IntegrityError` (naming the first bad line) on any edit, deletion, insertion, reordering or
    truncation in the middle of the log, and on a torn last line. A log cut cleanly after some entry is still a
    valid chain, as are well-formed entries appended at its end: a chain alone cannot show either. The owner
    detects a cut tail by comparing with a head she recorded earlier: pass it as ``earlier_head``, and the log must
    still reach it (as its head now, or as an earlier entry's hash; :data:`GENESIS` for a log recorded empty),
    else :class:`IntegrityError`. ``earlier_entries`` of the result then says how long the log was at that head.
    """
    path = Path(path)
    wanted = earlier_head.lower() if earlier_head is not None else None
    earlier_entries = 0 if wanted == GENESIS else None
    entries, head = 0, GENESIS
    for head in _verified(path):
        entries += 1
        if head == wanted:
            earlier_entries = entries
    if wanted is not None and earlier_entries is None:
        raise IntegrityError(f"audit log {path} no longer reaches the head {wanted} recorded earlier: entries were "
                             f"cut off or rewritten (it now holds {entries} entries, head {head})")
    return ChainHead(entries, head, earlier_entries)


def read_audit(path: Path | str) -> list[dict[str, Any]]:
    """The entries of the log at ``path`` as dicts, unverified (see :func:`verify_chain`)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]

