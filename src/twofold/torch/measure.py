"""The measurement of the training-side code that holds a tensor dataset's key and sees its plaintext.

It is the SHA-256 (``twofold.enclave.measure.measure``) over the import closure of the ``twofold.torch``
package: on-device decryption (``device``), the dataset and loader (``dataset``), the key provider (``keys``)
and every twofold module they import, transitively. A key broker's policy lists this measurement for the tensor
datasets it may open (``write_policy(path, [dataset_id], measurement=training_measurement())``). The user's own
training script is not part of it: in simulation nothing is; a hardware deployment measures the whole
confidential VM image that runs the script.
"""

from __future__ import annotations

from pathlib import Path

from twofold.enclave.measure import PACKAGE_ROOT, measure, twofold_imports

ROOTS = ("torch",)


def _module_path(module: str) -> Path | None:
    candidate = PACKAGE_ROOT.joinpath(*module.split(".")[1:])
    if (candidate / "__init__.py").is_file():
        return candidate / "__init__.py"
    if candidate.with_suffix(".py").is_file():
        return candidate.with_suffix(".py")
    return None


def training_files() -> list[Path]:
    """The ``twofold.torch`` package files plus every twofold module they import, in canonical order."""
    pending = [p for root in ROOTS for p in (PACKAGE_ROOT / root).rglob("*.py")]
    pending.append(PACKAGE_ROOT / "__init__.py")
    seen: set[Path] = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in twofold_imports(path):
            parts = module.split(".")
            for depth in range(2, len(parts) + 1):  # a submodule import loads its packages too
                resolved = _module_path(".".join(parts[:depth]))
                if resolved is not None and resolved not in seen:
                    pending.append(resolved)
    return sorted(seen, key=lambda p: p.relative_to(PACKAGE_ROOT).as_posix())


def training_measurement() -> str:
    """The measurement a policy lists to release tensor-dataset keys to the training process."""
    return measure(training_files())
