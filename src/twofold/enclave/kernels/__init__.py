"""Per-algorithm kernels; importing this package registers their ecalls."""
