"""Per-algorithm kernels; importing this package registers the algorithms and their ecalls."""

from twofold.enclave.kernels import bayes, clustering, ecalls, glm  # noqa: F401
