"""Two-server homomorphic learning (PrivML done for real): MU and SU servers over DT-PKC.

Layout: ``keys`` (system key material and certificates), ``protocol`` (framed msgpack messages),
``transport`` (mutually authenticated TLS, heartbeats and deadlines, an in-process link), ``randomness`` and
``offline`` (precomputed encryption randomness), ``codec`` (ciphertext and slot encodings), ``su`` (the secondary
unit), ``blocks`` (MU side of the interactive building blocks), ``fastexp`` (T1-only randomness and
multi-exponentiation), ``models`` (the plug-ins Priv-NB, Priv-LR and Priv-DT and their registry), ``mu`` (the
master unit), ``client`` (owners, clients, operators) and ``api`` (one Python class per model:
:class:`PrivNB`, :class:`PrivLR`, :class:`PrivDT`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["PrivDT", "PrivLR", "PrivNB"]


def __getattr__(name: str) -> Any:  # the API classes load lazily, so server processes import only what they use
    if name in __all__:
        from twofold.he import api

        return getattr(api, name)
    raise AttributeError(f"module 'twofold.he' has no attribute {name!r}")
