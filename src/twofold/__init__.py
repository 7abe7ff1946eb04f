"""twofold: privacy-preserving machine learning on infrastructure you do not trust."""

__version__ = "0.1.0"
