"""Pure cryptographic primitives: no I/O, no module state. Randomness is injectable for known-answer tests."""
