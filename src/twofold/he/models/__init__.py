"""Privacy-preserving models trained and served by MU and SU."""
