"""The trusted code base (TCB): everything that may see plaintext of a partitioned job.

This package imports only ``twofold.crypto``, ``twofold.errors``, the standard library and numeric/data
libraries (numpy, pyarrow, msgpack, cryptography); a test enforces it. Its measurement, the SHA-256 over the
files it loads in a canonical order, is what a key broker's policy allows (``twofold tcb``).
"""
