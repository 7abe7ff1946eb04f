"""Bring twofold's typed errors back from Spark task failures (they arrive wrapped in JVM exceptions)."""

from __future__ import annotations

import importlib
import importlib.util
import re

from twofold import errors
from twofold.errors import ServiceError, TwofoldError

_TYPED = re.compile(r"(twofold(?:\.\w+)*)\.(\w+): ([^\n]*)")


def _code(module: str, name: str) -> str | None:
    """The code of the error class ``module.name``, importing that twofold module if it defines errors not yet
    loaded here (only modules of the installed package are ever imported)."""
    code = errors.code_of_class_name(name)
    if code is None and importlib.util.find_spec(module) is not None:
        importlib.import_module(module)
        code = errors.code_of_class_name(name)
    return code


def translate(exc: BaseException) -> TwofoldError:
    """The twofold error a Spark task finally raised (the last one named: chained tracebacks list causes first),
    as the class of its code (:func:`twofold.errors.from_code`)."""
    for match in reversed(list(_TYPED.finditer(str(exc)))):
        try:
            code = _code(match.group(1), match.group(2))
        except (ImportError, ValueError):
            code = None
        if code is not None:
            return errors.from_code(code, match.group(3).strip())
    return ServiceError(f"the Spark job failed ({type(exc).__name__})")
