"""DP-SGD over encrypted tensor datasets: Poisson batches of the right rows, clipped and noised steps, the
accountant's epsilon at the target, refused inputs, and workers still kept away from decrypted rows."""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from opacus.data_loader import DPDataLoader  # noqa: E402
from opacus.utils.uniform_sampler import UniformWithReplacementSampler  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from twofold.data.tensors import write_tensors  # noqa: E402
from twofold.errors import ConfigError  # noqa: E402
from twofold.torch import EncryptedDataLoader, EncryptedTensorDataset, PrivateTraining, private  # noqa: E402

pytestmark = pytest.mark.torch
ROWS, FEATURES, CLASSES, BATCH = 256, 16, 4, 32


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():  # torch's full-backward-hook note and RDP's alpha-range note, on every run
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield


@pytest.fixture
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((ROWS, FEATURES)).astype(np.float32)
    y = (x @ rng.standard_normal((FEATURES, CLASSES))).argmax(1).astype(np.int64)
    return {"x": x, "y": y}


@pytest.fixture
def encrypted(data, keystore, tmp_path) -> EncryptedTensorDataset:
    written = write_tensors(data, tmp_path / "dp.tfds", keystore, rows_per_shard=64, segment_bytes=256)
    return EncryptedTensorDataset(written.path, keystore, "cpu")


def make(encrypted, *, seed=0, epsilon=2.0, delta=1e-3, max_grad_norm=1.0, epochs=2, lr=0.5, workers=0,
         plain_loader=False) -> PrivateTraining:
    torch.manual_seed(seed)
    model = nn.Linear(FEATURES, CLASSES)
    gen = torch.Generator().manual_seed(seed)
    loader = (DataLoader(encrypted, batch_size=BATCH, generator=gen) if plain_loader
              else EncryptedDataLoader(encrypted, batch_size=BATCH, generator=gen, num_workers=workers))
    return private(model, torch.optim.SGD(model.parameters(), lr=lr), loader, epsilon=epsilon, delta=delta,
                   max_grad_norm=max_grad_norm, epochs=epochs)


def train_epoch(dp: PrivateTraining) -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches = []
    for x, y in dp.loader:
        batches.append((x, y))
        dp.optimizer.zero_grad()
        nn.functional.cross_entropy(dp.model(x), y).backward()
        dp.optimizer.step()
    return batches


def test_spent_epsilon_reaches_but_stays_within_the_target(encrypted):
    dp = make(encrypted, epsilon=2.0, epochs=2)
    assert dp.spent() == 0.0 and dp.epsilon == 2.0 and dp.delta == 1e-3 and dp.max_grad_norm == 1.0
    train_epoch(dp)
    half = dp.spent()
    train_epoch(dp)
    full = dp.spent()
    assert 0 < half < full
    assert 2.0 - 0.05 <= full <= 2.0 + 1e-9  # opacus calibrates the noise to within 0.01 below the target
    assert dp.spent(delta=1e-2) < full  # a larger delta buys a smaller epsilon for the same steps
    train_epoch(dp)  # training past the planned epochs overspends, and spent() says so
    assert dp.spent() > 2.0


@pytest.mark.parametrize("plain_loader", [False, True], ids=["EncryptedDataLoader", "DataLoader"])
def test_batches_are_poisson_samples_of_the_decrypted_rows(encrypted, data, plain_loader):
    dp = make(encrypted, epochs=1, plain_loader=plain_loader)
    dp_loader = dp.loader if plain_loader else dp.loader.index_loader
    assert isinstance(dp_loader, DPDataLoader)
    assert isinstance(dp_loader.batch_sampler, UniformWithReplacementSampler)
    assert dp.sample_rate == pytest.approx(BATCH / ROWS) == dp_loader.sample_rate
    row_of = {row.tobytes(): i for i, row in enumerate(data["x"])}
    sizes = []
    for x, y in train_epoch(dp):
        index = [row_of[r.numpy().tobytes()] for r in x]  # every row is a real row of the dataset ...
        assert len(set(index)) == len(index)  # ... at most once per batch (each row joins independently)
        assert torch.equal(y, torch.from_numpy(data["y"][index]))  # ... with its own label
        sizes.append(len(index))
    assert len(sizes) == ROWS // BATCH
    assert len(set(sizes)) > 1  # Poisson batch sizes vary; a fixed-size shuffled batch would not


def test_every_per_sample_gradient_is_clipped(encrypted, data):
    clip = 0.05
    dp = make(encrypted, max_grad_norm=clip, lr=1.0)
    assert dp.optimizer.max_grad_norm == clip
    x, y = next(iter(dp.loader))
    plain = nn.Linear(FEATURES, CLASSES)
    plain.load_state_dict(dp.model._module.state_dict())
    clipped, unclipped = [torch.zeros_like(p) for p in plain.parameters()], [torch.zeros_like(p)
                                                                             for p in plain.parameters()]
    for xi, yi in zip(x, y, strict=True):  # per-sample gradients, one backward each
        grads = torch.autograd.grad(nn.functional.cross_entropy(plain(xi[None]), yi[None]), list(plain.parameters()))
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        assert norm > clip  # the bound bites for this sample
        for c, u, g in zip(clipped, unclipped, grads, strict=True):
            c += g * min(1.0, clip / (norm.item() + 1e-6))
            u += g
    before = [p.detach().clone() for p in dp.model.parameters()]
    dp.optimizer.noise_multiplier = 0.0  # isolate the clipping: the next test measures the noise
    dp.optimizer.zero_grad()
    nn.functional.cross_entropy(dp.model(x), y).backward()
    dp.optimizer.step()
    scale = dp.optimizer.expected_batch_size  # mean reduction divides by the *expected* batch size
    update = [(b - p.detach()) * scale for b, p in zip(before, dp.model.parameters(), strict=True)]  # lr 1
    for got, want, raw in zip(update, clipped, unclipped, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
        assert not torch.allclose(got, raw, rtol=1e-2)


def test_gaussian_noise_has_the_calibrated_scale(encrypted):
    dp = make(encrypted, epsilon=1.0, max_grad_norm=0.5, lr=1.0)
    assert dp.noise_multiplier > 1.0  # a smaller epsilon needs more noise than the epsilon-2 runs above
    noise = []
    x, y = next(iter(dp.loader))
    for _ in range(10):
        dp.optimizer.zero_grad()
        nn.functional.cross_entropy(dp.model(x), y).backward()
        dp.optimizer.clip_and_accumulate()
        dp.optimizer.add_noise()
        noise += [(p.grad - p.summed_grad).flatten() for p in dp.model.parameters()]
        for p in dp.model.parameters():
            p.summed_grad = None
            p.grad_sample = None
    std = torch.cat(noise).std().item()
    assert std == pytest.approx(dp.noise_multiplier * 0.5, rel=0.15)


@pytest.mark.parametrize("kwargs", [
    {"epsilon": 0.0}, {"epsilon": -1.0}, {"epsilon": math.inf}, {"epsilon": math.nan}, {"epsilon": True},
    {"delta": 0.0}, {"delta": 1.0}, {"delta": 1.5}, {"delta": 1 / ROWS}, {"delta": 0.01},  # 0.01 >= 1/256
    {"max_grad_norm": 0.0}, {"max_grad_norm": math.inf}, {"epochs": 0}, {"epochs": 1.5},
], ids=str)
def test_invalid_privacy_parameters_are_refused(encrypted, kwargs):
    with pytest.raises(ConfigError):
        make(encrypted, **kwargs)


def test_just_below_one_over_n_is_accepted(encrypted):
    assert make(encrypted, delta=0.99 / ROWS, epochs=1).delta == pytest.approx(0.99 / ROWS)


def test_models_without_per_sample_gradients_are_refused(encrypted):
    model = nn.Sequential(nn.Linear(FEATURES, 8), nn.BatchNorm1d(8), nn.Linear(8, CLASSES))  # mixes samples
    loader = EncryptedDataLoader(encrypted, batch_size=BATCH)
    with pytest.raises(ConfigError, match="BatchNorm"):
        private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, epsilon=1.0, delta=1e-3,
                max_grad_norm=1.0, epochs=1)


def test_missing_opacus_is_a_config_error(encrypted, monkeypatch):
    monkeypatch.setitem(sys.modules, "opacus", None)  # import opacus now raises ImportError
    with pytest.raises(ConfigError, match=r"twofold\[torch\]"):
        make(encrypted)


def test_secure_rng_without_torchcsprng_is_a_config_error(encrypted):
    try:
        import torchcsprng  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torchcsprng is installed")
    model = nn.Linear(FEATURES, CLASSES)
    with pytest.raises(ConfigError, match="torchcsprng"):
        private(model, torch.optim.SGD(model.parameters(), lr=0.1), EncryptedDataLoader(encrypted, batch_size=BATCH),
                epsilon=1.0, delta=1e-3, max_grad_norm=1.0, epochs=1, secure_rng=True)


def test_decrypted_rows_still_never_reach_dataloader_workers(encrypted):
    model = nn.Linear(FEATURES, CLASSES)
    workers = DataLoader(encrypted, batch_size=BATCH, num_workers=1, multiprocessing_context="fork")
    with pytest.raises(ConfigError, match="EncryptedDataLoader"):  # refused before training starts
        private(model, torch.optim.SGD(model.parameters(), lr=0.1), workers, epsilon=1.0, delta=1e-3,
                max_grad_norm=1.0, epochs=1)
    batches = iter(DPDataLoader.from_data_loader(workers))  # opacus's own wrapping of that loader ...
    try:
        with pytest.raises(ConfigError, match="must not leave the training process"):
            next(batches)  # ... still meets the dataset's refusal in the worker
    finally:
        batches._shutdown_workers()


def test_index_only_workers_still_work(encrypted):
    dp = make(encrypted, epochs=1, workers=1)  # workers draw Poisson index batches; rows are gathered here
    assert dp.loader.index_loader.num_workers == 1
    assert sum(len(x) for x, _ in train_epoch(dp)) > 0 and dp.spent() > 0
