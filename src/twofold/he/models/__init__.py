"""Privacy-preserving models trained and served by MU and SU; importing this package registers the built-in
plug-ins (:mod:`twofold.he.models.base`)."""

from twofold.he.models import dt_plugin, lr_plugin, nb_plugin

__all__ = ["dt_plugin", "lr_plugin", "nb_plugin"]
