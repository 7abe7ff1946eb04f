"""What this process has loaded from twofold, checked against what was measured.

A measurement (:mod:`twofold.enclave.measure`) describes source files on disk; it means something only if the
modules that run are those files. :func:`check_loaded` compares the ``twofold`` modules in ``sys.modules`` with a
measured set of files and refuses a process that runs anything else: a module found on another path than the
package's (a shadowing copy earlier on ``sys.path``), one loaded from bytecode alone, one under a name that is
not its file's, or a twofold file the measurement left out.

This guards against a wrong environment, not against code already running in the process (which could rewrite
``sys.modules`` as it likes). It cannot see bytecode that stood in for a source file: the source loader runs a
``__pycache__`` entry whose recorded size and modification time match the ``.py`` file, even under ``-B``; start
the enclave with ``-X pycache_prefix=`` an empty private directory so that no such entry is read. Resolved paths
are cached (the check runs after every ecall), so a symlink changed after a module's first check is not followed.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterable
from importlib.machinery import SourceFileLoader
from pathlib import Path
from typing import Any

from twofold.enclave.measure import PACKAGE_ROOT
from twofold.errors import AttestationError


def _twofold_name(key: str, module: Any) -> str | None:
    """The module's twofold name: its ``sys.modules`` key, or its spec's name (``__main__`` run with ``-m``)."""
    if key == "twofold" or key.startswith("twofold."):
        return key
    if key != "__main__":
        return None
    name = getattr(getattr(module, "__spec__", None), "name", None)
    return name if isinstance(name, str) and (name == "twofold" or name.startswith("twofold.")) else None


def _loaded_modules() -> list[tuple[str, str, Any]]:
    """(key in ``sys.modules``, twofold name, module) of every loaded twofold module."""
    found = []
    for key, module in sys.modules.copy().items():  # copy(): another thread may import meanwhile
        name = _twofold_name(key, module) if module is not None else None
        if name is not None:
            found.append((key, name, module))
    return found


@functools.lru_cache(maxsize=4096)
def _resolve(path: str) -> Path | None:
    """``path`` absolute, symlinks resolved; ``None`` if that fails. Cached: the check runs after every ecall."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def _file_of(module: Any) -> Path | None:
    """The resolved file a module was loaded from; ``None`` if it has none, or its spec and ``__file__`` differ."""
    spec = getattr(module, "__spec__", None)
    origins = [getattr(spec, "origin", None) if getattr(spec, "has_location", False) else None,
               getattr(module, "__file__", None)]
    paths = {_resolve(origin) for origin in origins if isinstance(origin, str)}
    return paths.pop() if len(paths) == 1 else None


def _from_source(module: Any, path: Path) -> bool:
    """Whether the import system loaded ``module`` from the ``.py`` file ``path`` (not bytecode alone)."""
    spec = getattr(module, "__spec__", None)
    return path.suffix == ".py" and type(getattr(spec, "loader", None)) is SourceFileLoader


@functools.lru_cache(maxsize=4096)
def _expected_files(name: str) -> frozenset[Path]:
    """Where module ``name`` lives in this package: ``a/b.py`` or ``a/b/__init__.py`` under PACKAGE_ROOT."""
    base = PACKAGE_ROOT.joinpath(*name.split(".")[1:])
    return frozenset({base / "__init__.py", base.with_name(base.name + ".py")})


def loaded_twofold_files() -> set[Path]:
    """The resolved source file of every loaded twofold module that has one (see :func:`unmeasured` for the rest)."""
    files = {_file_of(module) for _, _, module in _loaded_modules()}
    return {path for path in files if path is not None}


def unmeasured(measured: Iterable[Path]) -> list[str]:
    """Names of loaded twofold modules that do not run a measured source file of this package, sorted.

    A module counts as unmeasured if it has no file (a namespace package, a module built in memory), was not
    loaded from a ``.py`` source by the standard source loader, lives elsewhere than its name says under
    PACKAGE_ROOT (a copy shadowing twofold from another directory), or its file is not in ``measured``.
    """
    allowed = {_resolve(os.fspath(path)) for path in measured} - {None}
    bad = set()
    for key, name, module in _loaded_modules():
        path = _file_of(module)
        if path is None or not _from_source(module, path) or path not in _expected_files(name) or path not in allowed:
            bad.add(key)
    return sorted(bad)


def check_loaded(measured: Iterable[Path]) -> None:
    """Raise :class:`AttestationError` naming every loaded twofold module that :func:`unmeasured` reports.

    The measurement this process attests to would not describe the code it runs, so its evidence would be
    false. The error names modules only, never their contents.
    """
    bad = unmeasured(measured)
    if bad:
        raise AttestationError(f"{len(bad)} loaded twofold module(s) are not the measured code: {', '.join(bad)}")
