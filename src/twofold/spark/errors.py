"""Bring twofold's typed errors back from Spark task failures (they arrive wrapped in JVM exceptions)."""

from __future__ import annotations

import re

from twofold import errors
from twofold.errors import ServiceError, TwofoldError

_TYPED = re.compile(r"twofold\.[\w.]+\.(\w+): ([^\n]*)")


def translate(exc: BaseException) -> TwofoldError:
    """The twofold error a Spark task finally raised (the last one named: chained tracebacks list causes first),
    as the class of its code (:func:`twofold.errors.from_code`)."""
    for match in reversed(list(_TYPED.finditer(str(exc)))):
        code = errors.code_of_class_name(match.group(1))
        if code is not None:
            return errors.from_code(code, match.group(2).strip())
    return ServiceError(f"the Spark job failed ({type(exc).__name__})")
