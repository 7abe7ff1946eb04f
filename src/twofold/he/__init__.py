"""Two-server homomorphic learning (PrivML done for real): MU and SU servers over DT-PKC.

Layout: ``keys`` (system key material and certificates), ``protocol`` (framed msgpack messages),
``transport`` (mutually authenticated TLS and an in-process link), ``randomness`` (precomputed encryption
pairs), ``codec`` (ciphertext and slot encodings), ``su`` (the secondary unit), ``blocks`` (MU side of the
interactive building blocks), ``fastexp`` (T1-only randomness and multi-exponentiation), ``models``
(Priv-NB, Priv-LR), ``mu`` (the master unit) and ``client`` (owners, clients, operators).
"""
