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

from twofold.enclave.measure import PACKAGE_ROOT, import_closure, measure


def training_files() -> list[Path]:
    """The ``twofold.torch`` package files plus every twofold module they import, in canonical order."""
    return import_closure(list((PACKAGE_ROOT / "torch").rglob("*.py")))


def training_measurement() -> str:
    """The measurement a policy lists to release tensor-dataset keys to the training process."""
    return measure(training_files())
