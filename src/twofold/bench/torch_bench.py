"""``twofold bench torch``: the same model, same seed, trained from plaintext and from encrypted tensor datasets.

Both modes run in one process on one device and go through the same loader code: ``plaintext`` loads ``.npy``
files into a ``TensorDataset`` on the device; ``encrypted`` opens the encrypted dataset (key unwrap, header and
every tag checked, decrypted on the device). ``seconds`` covers loading, training and evaluation; each mode's
best of ``repeats`` runs is reported (runs alternate the order of the modes). Same seed and bit-identical batches
mean identical trained weights, which the JSON records (``identical_weights``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from twofold.bench.common import machine
from twofold.crypto.chacha20_tensor import keystream, xor_keystream_cpu_fast
from twofold.crypto.kdf import Argon2Params
from twofold.data.tensors import write_tensors
from twofold.keys.keystore import Keystore
from twofold.torch import EncryptedDataLoader, EncryptedTensorDataset, KeystoreKeyProvider

PASSPHRASE = "benchmark passphrase"


def digits(seed: int) -> dict[str, np.ndarray]:
    """scikit-learn's 8x8 digits (shipped with the package), split 1400 / 397."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.target))
    x = (data.images[order] / 16.0).astype(np.float32)[:, None]  # (n, 1, 8, 8)
    y = data.target[order].astype(np.int64)
    return {"x_train": x[:1400], "y_train": y[:1400], "x_test": x[1400:], "y_test": y[1400:]}


def synthetic(rows: int, features: int, seed: int) -> dict[str, np.ndarray]:
    """Gaussian features, 10 classes from a random linear teacher: learnable, and big enough that loading shows."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, features), dtype=np.float32)
    teacher = rng.standard_normal((features, 10), dtype=np.float32)
    y = (x @ teacher + rng.standard_normal((rows, 10), dtype=np.float32)).argmax(1).astype(np.int64)
    split = rows - rows // 10
    return {"x_train": x[:split], "y_train": y[:split], "x_test": x[split:], "y_test": y[split:]}


def _model(name: str, features: int) -> nn.Module:
    if name == "digits":
        return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 64, 10))
    return nn.Sequential(nn.Linear(features, 256), nn.ReLU(), nn.Linear(256, 10))


def _train(name: str, train: Any, test: tuple[torch.Tensor, torch.Tensor], device: torch.device, seed: int,
           epochs: int, batch_size: int) -> tuple[float, list[torch.Tensor]]:
    torch.manual_seed(seed)
    features = test[0][0].numel()
    model = _model(name, features).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = EncryptedDataLoader(train, batch_size=batch_size, shuffle=True,
                                 generator=torch.Generator().manual_seed(seed))
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
    with torch.no_grad():
        accuracy = (model(test[0]).argmax(1) == test[1]).float().mean().item()
    return accuracy, [p.detach().cpu().clone() for p in model.parameters()]


def _run_mode(mode: str, name: str, root: Path, store: Keystore, device: torch.device, seed: int, epochs: int,
              batch_size: int) -> dict[str, Any]:
    _sync(device)
    start = time.perf_counter()
    if mode == "plaintext":
        load = {k: torch.from_numpy(np.load(root / f"{name}-{k}.npy")).to(device)
                for k in ("x_train", "y_train", "x_test", "y_test")}
        train = TensorDataset(load["x_train"], load["y_train"])
        test = (load["x_test"], load["y_test"])
        impl = "none"
    else:
        keys = KeystoreKeyProvider(store)
        train = EncryptedTensorDataset(root / f"{name}-train.tfds", keys, device)
        test_ds = EncryptedTensorDataset(root / f"{name}-test.tfds", keys, device)
        test = test_ds.tensors
        impl = train.keystream_impl
    accuracy, weights = _train(name, train, test, device, seed, epochs, batch_size)
    _sync(device)
    seconds = time.perf_counter() - start
    return {"dataset": name, "mode": mode, "seconds": seconds, "accuracy": accuracy, "keystream_impl": impl,
            "_weights": weights}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def keystream_speed(device: torch.device, mib: int) -> float:
    """GB/s of the torch tensor keystream on ``device`` (fused on CUDA), best of 3 after a warm-up."""
    fused = device.type == "cuda"
    keystream(bytes(32), bytes(12), 1, 1 << 20, device, fused=fused)
    best = float("inf")
    for _ in range(3):
        _sync(device)
        start = time.perf_counter()
        keystream(bytes(32), bytes(12), 1, mib << 20, device, fused=fused)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return (mib << 20) / best / 1e9


def cpu_fast_speed(mib: int = 64) -> float:
    data = torch.zeros(mib << 20, dtype=torch.uint8)
    start = time.perf_counter()
    xor_keystream_cpu_fast(data, bytes(32), bytes(12), 1, out=data)
    return (mib << 20) / (time.perf_counter() - start) / 1e9


SHORT_JOB_REPEATS = 7  # digits trains in well under a second: take the best of more runs to see through noise


def run(device: str = "cpu", *, synthetic_rows: int = 200_000, features: int = 256, epochs: int = 2,
        repeats: int = 3, seed: int = 0, batch_size: int = 256, digits_epochs: int = 20,
        keystream_mib: int | None = None) -> dict[str, Any]:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from twofold.errors import ConfigError

        raise ConfigError("--device cuda: no CUDA device is available")
    with tempfile.TemporaryDirectory(prefix="twofold-bench-torch-") as tmp:
        root = Path(tmp)
        store = Keystore.create(root / "ks", PASSPHRASE, Argon2Params(memory_kib=8192, iterations=1))
        sets = {"digits": digits(seed), "synthetic": synthetic(synthetic_rows, features, seed)}
        sizes = {}
        for name, arrays in sets.items():
            for key, value in arrays.items():
                np.save(root / f"{name}-{key}.npy", value)
            for part in ("train", "test"):
                write_tensors({"x": arrays[f"x_{part}"], "y": arrays[f"y_{part}"]}, root / f"{name}-{part}.tfds",
                              store)
            sizes[name] = int(sum(a.nbytes for a in arrays.values()))
        del sets
        _run_mode("encrypted", "digits", root, store, dev, seed, 1, batch_size)  # warm-up: threads, allocator
        results, identical = [], {}
        for name in ("digits", "synthetic"):
            best: dict[str, dict[str, Any]] = {}
            runs = repeats if name == "synthetic" else max(repeats, SHORT_JOB_REPEATS)
            for r in range(runs):
                for mode in (("plaintext", "encrypted") if r % 2 == 0 else ("encrypted", "plaintext")):
                    synthetic_set = name == "synthetic"
                    row = _run_mode(mode, name, root, store, dev, seed, epochs if synthetic_set else digits_epochs,
                                    batch_size if synthetic_set else 64)
                    if mode not in best or row["seconds"] < best[mode]["seconds"]:
                        best[mode] = row
            identical[name] = all(torch.equal(a, b) for a, b in zip(best["plaintext"].pop("_weights"),
                                                                    best["encrypted"].pop("_weights"), strict=True))
            results += [best["plaintext"], best["encrypted"]]
    ratios = {name: next(r["seconds"] for r in results if r["dataset"] == name and r["mode"] == "encrypted")
              / next(r["seconds"] for r in results if r["dataset"] == name and r["mode"] == "plaintext")
              for name in identical}
    return {
        "benchmark": "torch",
        "device": str(dev),
        "results": results,
        "overhead_ratio": max(ratios.values()),
        "overhead_ratios": ratios,
        "identical_weights": identical,
        "accuracy_difference": {name: abs(results[2 * i]["accuracy"] - results[2 * i + 1]["accuracy"])
                                for i, name in enumerate(identical)},
        "dataset_bytes": sizes,
        "keystream_impl": results[1]["keystream_impl"],
        "keystream_gb_per_s": keystream_speed(dev, keystream_mib or (256 if dev.type == "cuda" else 32)),
        "keystream_gb_per_s_impl": "torch-fused" if dev.type == "cuda" else "torch (eager)",
        "cpu_fast_keystream_gb_per_s": cpu_fast_speed(keystream_mib or 64),
        "config": {"synthetic_rows": synthetic_rows, "features": features, "epochs_synthetic": epochs,
                   "epochs_digits": digits_epochs, "repeats": repeats, "seed": seed,
                   "threads": torch.get_num_threads()},
        "machine": machine(),
    }
