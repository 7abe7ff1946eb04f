"""Ecalls every enclave offers: identity, opening datasets, loading partitions."""

from __future__ import annotations

from typing import Any

from twofold.enclave.registry import describe, ecall
from twofold.enclave.state import EnclaveState


@ecall("info", args={}, result={"backend": str, "measurement": str, "ecalls": dict, "cache": dict,
                                "attestations": int})
def info(state: EnclaveState) -> dict[str, Any]:
    """Identity, interface and cache statistics (no data)."""
    return {"backend": state.backend, "measurement": state.measurement, "ecalls": describe(),
            "cache": state.cache.stats(), "attestations": state.broker.attestations}


@ecall("open_dataset", args={"manifest": bytes}, result={"dataset_id": str, "num_files": int, "num_rows": int})
def open_dataset(state: EnclaveState, manifest: bytes) -> dict[str, Any]:
    """Authenticate a dataset manifest with the MAC key released by the key broker."""
    opened = state.open_dataset(manifest)
    return {"dataset_id": opened.dataset_id, "num_files": len(opened.manifest.files),
            "num_rows": opened.manifest.num_rows}


@ecall("partition_cached", args={"dataset_id": str, "index": int}, result={"cached": bool})
def partition_cached(state: EnclaveState, dataset_id: str, index: int) -> dict[str, Any]:
    """Whether a partition is already decrypted in the cache (so its ciphertext need not be sent)."""
    return {"cached": state.cache.get((dataset_id, index)) is not None}


@ecall("load_partition", args={"dataset_id": str, "index": int, "data": bytes, "key_material": bytes},
       result={"rows": int})
def load_partition(state: EnclaveState, dataset_id: str, index: int, data: bytes,
                   key_material: bytes) -> dict[str, Any]:
    """Authenticate and decrypt one partition of an open dataset into the enclave's cache."""
    return {"rows": state.load_partition(dataset_id, index, data, key_material).num_rows}


@ecall("load_partition_from", args={"dataset_id": str, "index": int, "directory": str}, result={"rows": int})
def load_partition_from(state: EnclaveState, dataset_id: str, index: int, directory: str) -> dict[str, Any]:
    """Read, authenticate and decrypt one partition from storage into the enclave's cache."""
    return {"rows": state.load_partition_from(dataset_id, index, directory).num_rows}


@ecall("close_dataset", args={"dataset_id": str}, result={"evicted": int})
def close_dataset(state: EnclaveState, dataset_id: str) -> dict[str, Any]:
    """Forget a dataset and drop its plaintext (partitions and derived feature matrices) from memory."""
    state.datasets.pop(dataset_id, None)
    if state.derived is not None:
        state.derived.drop(dataset_id)
    return {"evicted": state.cache.drop(dataset_id)}
