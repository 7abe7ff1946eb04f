"""Bring twofold's typed errors back from Spark task failures (they arrive wrapped in JVM exceptions)."""

from __future__ import annotations

import re

from twofold import errors
from twofold.errors import ServiceError, TwofoldError

_TYPED = re.compile(r"twofold\.errors\.(\w+): ([^\n]*)")


def translate(exc: BaseException) -> TwofoldError:
    """The twofold error a Spark task finally raised (the last one named: chained tracebacks list causes first)."""
    matches = list(_TYPED.finditer(str(exc)))
    match = matches[-1] if matches else None
    if match:
        cls = getattr(errors, match.group(1), None)
        if isinstance(cls, type) and issubclass(cls, TwofoldError):
            return cls() if cls is errors.IntegrityError else cls(match.group(2).strip())
    return ServiceError(f"the Spark job failed ({type(exc).__name__})")
