"""The key broker service (KBS) that the data owner runs: attestation-gated release of dataset keys."""
