"""EncryptedTensorDataset / EncryptedDataLoader: the same batches as plaintext torch, on CPU and (if present) CUDA."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from twofold.errors import ConfigError  # noqa: E402
from twofold.torch import EncryptedDataLoader, EncryptedTensorDataset, KeystoreKeyProvider  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")


def plain_batches(arrays, device="cpu", seed=3, **kwargs):
    tensors = [torch.from_numpy(np.ascontiguousarray(a.astype(a.dtype.newbyteorder("="))))
               for a in arrays.values()]
    torch.manual_seed(11)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    batches = [tuple(t.to(device) for t in b) for b in DataLoader(TensorDataset(*tensors), generator=gen, **kwargs)]
    return batches, torch.rand(3)


def encrypted_batches(dataset, seed=3, **kwargs):
    torch.manual_seed(11)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    batches = list(EncryptedDataLoader(dataset, generator=gen, **kwargs))
    return batches, torch.rand(3)


def assert_same(a, b):
    (ba, ra), (bb, rb) = a, b
    assert len(ba) == len(bb)
    for x, y in zip(ba, bb, strict=True):
        for p, q in zip(x, y, strict=True):
            assert p.dtype == q.dtype and p.shape == q.shape
            assert torch.equal(p.cpu(), q.cpu())
    assert torch.equal(ra, rb)  # the global RNG was consumed identically too


@pytest.mark.parametrize("decrypt", ["once", "per-batch"])
@pytest.mark.parametrize("workers", [0, 2])
def test_shuffled_batches_are_bit_identical_to_plaintext(arrays, dataset, keystore, decrypt, workers):
    ds = EncryptedTensorDataset(dataset.path, keystore, "cpu", decrypt=decrypt)
    kwargs = {"batch_size": 17, "shuffle": True, "drop_last": False}
    assert_same(plain_batches(arrays, **kwargs), encrypted_batches(ds, num_workers=workers, **kwargs))


@pytest.mark.parametrize("seed", [None, 5])
def test_unseeded_and_unshuffled_orders_match_too(arrays, dataset, keystore, seed):
    ds = EncryptedTensorDataset(dataset.path, KeystoreKeyProvider(keystore), "cpu")
    for kwargs in ({"batch_size": 32, "shuffle": True, "drop_last": True}, {"batch_size": 50}):
        assert_same(plain_batches(arrays, seed=seed, **kwargs), encrypted_batches(ds, seed=seed, prefetch=0, **kwargs))


def test_torch_keystream_path_equals_native_path(arrays, dataset, keystore):
    native = EncryptedTensorDataset(dataset.path, keystore, "cpu", impl="cryptography")
    tensor = EncryptedTensorDataset(dataset.path, keystore, "cpu", impl="torch")
    assert native.keystream_impl == "cryptography" and tensor.keystream_impl == "torch"
    for a, b, value in zip(native.tensors, tensor.tensors, arrays.values(), strict=True):
        assert torch.equal(a, b)
        assert np.array_equal(a.numpy(), value)


def test_subset_of_arrays_and_item_access(arrays, dataset, keystore):
    ds = EncryptedTensorDataset(dataset.path, keystore, arrays=["y", "x"])
    assert len(ds) == 203 and ds.names == ["y", "x"]
    y, x = ds[150]
    assert int(y) == arrays["y"][150] and np.array_equal(x.numpy(), arrays["x"][150])


def test_dataset_refuses_to_run_inside_dataloader_workers(dataset, keystore):
    ds = EncryptedTensorDataset(dataset.path, keystore)
    with pytest.raises(ConfigError):
        next(iter(DataLoader(ds, batch_size=4, num_workers=1, multiprocessing_context="fork")))
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(ds)


def test_early_break_stops_the_prefetch_thread(dataset, keystore):
    import threading

    ds = EncryptedTensorDataset(dataset.path, keystore, decrypt="per-batch")
    for _ in EncryptedDataLoader(ds, batch_size=4, shuffle=True, prefetch=1):
        break
    assert not [t for t in threading.enumerate() if t.name in ("twofold-batch-prefetch", "twofold-shard-reader")]


@CUDA
@pytest.mark.parametrize("decrypt", ["once", "per-batch"])
def test_cuda_batches_are_bit_identical_to_plaintext(arrays, dataset, keystore, decrypt):
    ds = EncryptedTensorDataset(dataset.path, keystore, "cuda", decrypt=decrypt)
    assert ds.keystream_impl.startswith("torch")
    kwargs = {"batch_size": 17, "shuffle": True}
    assert_same(plain_batches(arrays, device="cuda", **kwargs), encrypted_batches(ds, **kwargs))
    assert all(t.is_cuda for b in encrypted_batches(ds, **kwargs)[0] for t in b)
