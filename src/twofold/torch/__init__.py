"""Encrypted PyTorch training: tensor datasets decrypted only on the device that trains.

``EncryptedTensorDataset`` opens a tensor dataset written by ``twofold encrypt-tensors`` (or
:func:`twofold.data.tensors.write_tensors`), gets its data key from a :class:`KeyProvider` (the owner's keystore,
or a key broker after attestation), checks every tag and decrypts on the device; ``EncryptedDataLoader`` yields
device batches identical to a plaintext ``DataLoader`` with the same seed. :func:`private` trains with DP-SGD
(opacus) over them, bounding what the trained model reveals about any one record. Needs ``torch`` and ``opacus``
(``twofold[torch]``; opacus is imported only when :func:`private` is called).
"""

from twofold.torch.dataset import EncryptedDataLoader, EncryptedTensorDataset
from twofold.torch.device import DeviceDecryptor
from twofold.torch.keys import DeviceKeyProvider, KeyProvider, KeystoreKeyProvider
from twofold.torch.measure import training_measurement
from twofold.torch.private import PrivateTraining, private

__all__ = [
    "DeviceDecryptor",
    "DeviceKeyProvider",
    "EncryptedDataLoader",
    "EncryptedTensorDataset",
    "KeyProvider",
    "KeystoreKeyProvider",
    "PrivateTraining",
    "private",
    "training_measurement",
]
