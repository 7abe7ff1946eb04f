"""Append-only audit log of the key broker: one JSON line per grant or denial; never key bytes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class AuditLog:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def record(self, event: str, action: str, **fields: Any) -> None:
        """Append ``{"time", "event": grant|deny, "action", ...}``; values must be ids and reasons only."""
        entry = {"time": time.time(), "event": event, "action": action, **fields}
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        # No lock (so no I/O under one): with O_APPEND the kernel moves to the end and writes as one step, so
        # one os.write of a whole line never interleaves with another writer's line, in any thread or process
        # (on a local file system; a broker has one event-loop thread anyway).
        os.write(self._fd, line)

    def close(self) -> None:
        os.close(self._fd)


def read_audit(path: Path | str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
