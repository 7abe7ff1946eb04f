"""DP-SGD (opacus) over encrypted tensor datasets: a bound on what the trained model reveals about one record.

Usage::

    dataset = EncryptedTensorDataset("train.tfds", keys, device)
    loader = EncryptedDataLoader(dataset, batch_size=64, generator=torch.Generator().manual_seed(0))
    dp = private(model, optimizer, loader, epsilon=3.0, delta=1e-5, max_grad_norm=1.0, epochs=20)
    for _ in range(20):
        for x, y in dp.loader:            # Poisson-sampled batches, decrypted on the device
            dp.optimizer.zero_grad()
            loss_fn(dp.model(x), y).backward()
            dp.optimizer.step()           # per-sample clipping to max_grad_norm, Gaussian noise, accounting
    dp.spent()                            # epsilon spent so far at delta (<= epsilon after `epochs` epochs)

**What it bounds.** Differential privacy of the *trained model*: the weights after every step (so every
checkpoint, and anything computed from them: predictions, a released model) change in distribution by at most
(epsilon, delta) when one record (one row) is added to or removed from the training set. This bounds
membership inference and reconstruction of any one record from the model.

**Whose code.** The training script that calls :func:`private` is the data owner's code; the threat model
trusts it (it is outside :func:`~twofold.torch.training_measurement`). The guarantee holds only if that script
trains through the returned ``model``, ``optimizer`` and ``loader``, for at most ``epochs`` epochs, and releases
nothing else computed from the data. Nothing here enforces that.

**Not covered.** Confidentiality of the data during training (that is the encryption and the attested
process); data used outside the accounted steps (evaluation, hyperparameter search, repeated runs, each of which
spends privacy too); records that share a person (the unit is a row, not a person); what the host can observe
of the training itself, such as per-step timing, which follows the Poisson batch sizes. With
``secure_rng=False`` the sampling and noise come from torch's pseudo-random generator, and the guarantee is
then only against an adversary who cannot predict it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from twofold.errors import ConfigError
from twofold.torch.dataset import Batch, EncryptedDataLoader, EncryptedTensorDataset

__all__ = ["ACCOUNTANT", "PoissonEncryptedLoader", "PrivateTraining", "private"]

ACCOUNTANT = "prv"  # opacus's default; see PrivateTraining.spent
INSTALL_HINT = "DP-SGD needs opacus: pip install 'twofold[torch]'"


@dataclass(frozen=True)
class PrivateTraining:
    """The private ``model``, ``optimizer`` and Poisson ``loader`` to train with, and the privacy they target."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loader: Any  # opacus DPDataLoader, or PoissonEncryptedLoader for an EncryptedDataLoader
    epsilon: float
    delta: float
    max_grad_norm: float
    noise_multiplier: float
    sample_rate: float
    _engine: Any = field(repr=False, compare=False)

    def spent(self, delta: float | None = None) -> float:
        """The epsilon spent so far, at ``delta`` (default: the target delta); 0.0 before the first step.

        The accountant is opacus's PRV accountant (privacy loss random variables, Gopi et al. 2021). It is
        tighter than RDP for the same noise, so it needs less noise for the same target, and opacus returns its
        upper bound, which includes the numerical error of the estimate (0.01 in epsilon), not a point
        estimate.
        """
        accountant = self._engine.accountant
        if len(accountant) == 0:
            return 0.0
        d = self.delta if delta is None else _delta(delta, None)
        return float(accountant.get_epsilon(delta=d))


def private(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader | EncryptedDataLoader, *,
            epsilon: float, delta: float, max_grad_norm: float, epochs: int,
            secure_rng: bool = False) -> PrivateTraining:
    """Make ``model`` train with DP-SGD to reach (``epsilon``, ``delta``) after ``epochs`` epochs of ``loader``.

    ``loader`` is an :class:`EncryptedDataLoader` (batches gathered on the device, workers produce indices only)
    or a ``torch.utils.data.DataLoader`` (over an :class:`EncryptedTensorDataset` only without workers). Its
    ``batch_size`` becomes the *expected* batch size: every record joins each batch independently with
    probability ``batch_size / len(dataset)`` (Poisson sampling, which the accounting assumes), drawn from the
    loader's ``generator`` (or torch's global RNG), or from ``/dev/urandom`` with ``secure_rng=True`` (needs
    ``torchcsprng``). Each step clips every per-sample gradient to L2 norm ``max_grad_norm`` and adds Gaussian
    noise of standard deviation ``noise_multiplier * max_grad_norm``, the multiplier chosen by opacus so that
    ``epochs`` epochs spend ``epsilon``.

    Refuses (``ConfigError``) epsilon not finite and > 0, delta not in (0, 1/len(dataset)) (a delta of
    1/n or more allows a mechanism that publishes a record outright), max_grad_norm not finite and > 0, epochs
    < 1, models opacus cannot compute per-sample gradients for (e.g. BatchNorm), and a missing opacus.
    """
    _positive("epsilon", epsilon)
    _positive("max_grad_norm", max_grad_norm)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError("epochs must be an integer >= 1")
    try:
        from opacus import PrivacyEngine
        from opacus.validators import ModuleValidator
    except ImportError as exc:
        raise ConfigError(INSTALL_HINT) from exc

    if isinstance(loader, EncryptedDataLoader):
        dataset, index_loader = loader.dataset, _index_loader(loader)
    elif isinstance(loader, DataLoader):
        dataset, index_loader = loader.dataset, None
        if isinstance(dataset, EncryptedTensorDataset) and loader.num_workers > 0:
            raise ConfigError("decrypted rows must not leave the training process: pass an EncryptedDataLoader "
                              "(its workers produce indices only), not a DataLoader with workers over the dataset")
    else:
        raise TypeError("loader must be an EncryptedDataLoader or a torch DataLoader")
    delta = _delta(delta, len(dataset))  # type: ignore[arg-type]
    problems = ModuleValidator.validate(model, strict=False)
    if problems:
        raise ConfigError("opacus cannot train this model with per-sample gradients: "
                          + "; ".join(str(p) for p in problems) + " (ModuleValidator.fix replaces BatchNorm)")

    try:
        with warnings.catch_warnings():
            if not secure_rng:  # opacus warns on every engine; the docstring says what the opt-out gives up
                warnings.filterwarnings("ignore", message="Secure RNG turned off")
            engine = PrivacyEngine(accountant=ACCOUNTANT, secure_mode=secure_rng)
    except ImportError as exc:
        raise ConfigError("secure_rng=True needs torchcsprng (https://github.com/pytorch/csprng)") from exc
    dp_model, dp_optimizer, dp_loader = engine.make_private_with_epsilon(
        module=model, optimizer=optimizer, data_loader=index_loader if index_loader is not None else loader,
        target_epsilon=float(epsilon), target_delta=delta, epochs=epochs, max_grad_norm=float(max_grad_norm),
        poisson_sampling=True)
    sample_rate = float(dp_loader.sample_rate)
    if index_loader is not None:
        dp_loader = PoissonEncryptedLoader(loader, dp_loader)
    return PrivateTraining(model=dp_model, optimizer=dp_optimizer, loader=dp_loader, epsilon=float(epsilon),
                           delta=delta, max_grad_norm=float(max_grad_norm),
                           noise_multiplier=float(dp_optimizer.noise_multiplier),
                           sample_rate=sample_rate, _engine=engine)


class PoissonEncryptedLoader(EncryptedDataLoader):
    """An :class:`EncryptedDataLoader` whose index batches come from opacus's Poisson ``DPDataLoader``.

    Only row indices are sampled (in the DataLoader, or its workers); rows are gathered (or decrypted) on the
    device by the dataset, and batches are prefetched, exactly as for the loader it replaces.
    """

    def __init__(self, loader: EncryptedDataLoader, index_loader: DataLoader) -> None:
        self.dataset = loader.dataset
        self.prefetch = loader.prefetch
        self._device = loader._device
        fetch = loader._fetch
        self._fetch: Callable[[torch.Tensor], Batch] = lambda index: fetch(_as_index(index))
        self._indices = index_loader

    @property
    def index_loader(self) -> DataLoader:
        """The opacus ``DPDataLoader`` that draws each batch's row indices."""
        return self._indices


class _Rows(Dataset):
    """Row indices, shaped for opacus (``dataset[0]`` is a tuple), fetched a whole batch at a time."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[int]:
        return (index,)

    def __getitems__(self, indices: list[int]) -> list[int]:
        return indices


def _collate_indices(indices: list[int]) -> torch.Tensor:
    return torch.tensor(indices, dtype=torch.int64)


def _as_index(index: Any) -> torch.Tensor:
    # opacus's collate gives [tensor of shape (0,)] when the very first Poisson batch is empty
    if torch.is_tensor(index):
        return index
    return torch.empty(0, dtype=torch.int64)


def _index_loader(loader: EncryptedDataLoader) -> DataLoader:
    """A DataLoader over row indices with the loader's batch size, generator and workers, for opacus to wrap."""
    old = loader._indices
    return DataLoader(_Rows(len(loader.dataset)), batch_size=old.batch_size, generator=old.generator,  # type: ignore[arg-type]
                      num_workers=old.num_workers, collate_fn=_collate_indices)


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a finite number > 0")


def _delta(delta: float, n: int | None) -> float:
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 < delta < 1:
        raise ConfigError("delta must be in (0, 1)")
    if n is not None and delta >= 1 / n:
        raise ConfigError(f"delta must be below 1/len(dataset) = {1 / n:.3g}: a larger delta allows publishing "
                          "a record outright (the usual choice is well below 1/n, e.g. 1e-5)")
    return float(delta)
