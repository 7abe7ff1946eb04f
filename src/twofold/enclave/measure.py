"""The TCB's identity: which files the enclave loads, their measurement, and their size."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # src/twofold
ENTRY_PACKAGE = "twofold.enclave"
MEASUREMENT_DOMAIN = b"twofold-tcb-measurement-v1\x00"


@dataclass(frozen=True)
class TcbReport:
    measurement: str
    files: list[str]
    tcb_lines: int
    total_lines: int


def _module_path(module: str) -> Path | None:
    parts = module.split(".")[1:]
    candidate = PACKAGE_ROOT.joinpath(*parts)
    if (candidate / "__init__.py").is_file():
        return candidate / "__init__.py"
    if candidate.with_suffix(".py").is_file():
        return candidate.with_suffix(".py")
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_ROOT).with_suffix("")
    parts = ["twofold", *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_guards(tree: ast.Module) -> tuple[set[str], set[str]]:
    """Names this module binds to ``typing.TYPE_CHECKING`` and to the ``typing`` module itself."""
    flags, modules = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "typing" and not node.level:
            flags |= {alias.asname or alias.name for alias in node.names if alias.name == "TYPE_CHECKING"}
        elif isinstance(node, ast.Import):
            modules |= {alias.asname or alias.name for alias in node.names if alias.name == "typing"}
    return flags, modules


def _runtime_nodes(tree: ast.Module) -> Iterator[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` blocks, which never run.

    Only a ``TYPE_CHECKING`` imported from ``typing`` counts (a module's own variable of that name may be true);
    the ``else`` branch of such a block runs, so it is kept. Imports inside functions are kept: they run when
    the function is called.
    """
    flags, modules = _type_checking_guards(tree)

    def never_runs(test: ast.expr) -> bool:
        if isinstance(test, ast.Name):
            return test.id in flags
        return (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
                and isinstance(test.value, ast.Name) and test.value.id in modules)

    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        yield node
        if isinstance(node, ast.If) and never_runs(node.test):
            pending.extend(node.orelse)
        else:
            pending.extend(ast.iter_child_nodes(node))


def imports_in_source(source: str, package: str) -> set[str]:
    """The ``twofold.*`` modules that ``source`` imports when it runs, absolute or relative to ``package``."""
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("twofold")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.startswith("twofold"):
                found.add(base)
                found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def twofold_imports(path: Path) -> set[str]:
    """The ``twofold.*`` modules a source file imports (absolute or relative)."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    return imports_in_source(path.read_text("utf-8"), package)


def import_closure(seeds: list[Path]) -> list[Path]:
    """``seeds`` plus every twofold module they import, transitively, in canonical (path) order."""
    pending = [*seeds, PACKAGE_ROOT / "__init__.py"]
    seen: set[Path] = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in twofold_imports(path):
            parents = module.split(".")
            for depth in range(2, len(parents) + 1):  # a submodule import loads its packages too
                resolved = _module_path(".".join(parents[:depth]))
                if resolved is not None and resolved not in seen:
                    pending.append(resolved)
    return sorted(seen, key=lambda p: p.relative_to(PACKAGE_ROOT).as_posix())


def tcb_files() -> list[Path]:
    """The partitioned-mode TCB: the enclave package and every twofold module it imports."""
    return import_closure(list((PACKAGE_ROOT / "enclave").rglob("*.py")))


def whole_files() -> list[Path]:
    """What a whole-mode executor loads from twofold to decrypt: ``spark/whole.py`` and its imports."""
    return import_closure([PACKAGE_ROOT / "spark" / "__init__.py", PACKAGE_ROOT / "spark" / "whole.py"])


def measure(files: list[Path]) -> str:
    """SHA-256 over (relative path, content) of each file, length-prefixed, in the given order."""
    digest = sha256(MEASUREMENT_DOMAIN)
    for path in files:
        name = path.relative_to(PACKAGE_ROOT).as_posix().encode()
        content = path.read_bytes()
        digest.update(len(name).to_bytes(4, "big") + name + len(content).to_bytes(8, "big") + content)
    return digest.hexdigest()


def count_lines(path: Path) -> int:
    """Lines of code: non-blank lines that are not only a comment."""
    return sum(1 for line in path.read_text("utf-8").splitlines() if line.strip() and not line.strip().startswith("#"))


def tcb_report() -> TcbReport:
    files = tcb_files()
    return TcbReport(
        measurement=measure(files),
        files=[p.relative_to(PACKAGE_ROOT).as_posix() for p in files],
        tcb_lines=sum(count_lines(p) for p in files),
        total_lines=sum(count_lines(p) for p in PACKAGE_ROOT.rglob("*.py")),
    )


@functools.cache
def current_measurement() -> str:
    """The partitioned-mode TCB's measurement (the enclave package and what it imports)."""
    return measure(tcb_files())


@functools.cache
def whole_measurement() -> str:
    """Whole mode's measurement: the twofold code an executor runs on plaintext (see :func:`whole_files`)."""
    return measure(whole_files())
