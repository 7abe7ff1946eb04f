"""Confidential Spark MLlib: whole mode (``read_encrypted``) and partitioned mode (the estimators).

Names load on first use (PEP 562), so an executor's Python worker that only decrypts (whole mode) does not
import ``pyspark.ml``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twofold.spark.estimators import PCA, KMeans, LinearRegression, LogisticRegression, NaiveBayes
    from twofold.spark.files import encrypted_files
    from twofold.spark.model import PartitionedModel
    from twofold.spark.predictions import open_predictions
    from twofold.spark.session import get_spark
    from twofold.spark.whole import read_encrypted

_HOME = {
    "PCA": "estimators", "KMeans": "estimators", "LinearRegression": "estimators",
    "LogisticRegression": "estimators", "NaiveBayes": "estimators", "PartitionedModel": "model",
    "encrypted_files": "files", "get_spark": "session", "open_predictions": "predictions", "read_encrypted": "whole",
}

__all__ = ["PCA", "KMeans", "LinearRegression", "LogisticRegression", "NaiveBayes", "PartitionedModel",
           "encrypted_files", "get_spark", "open_predictions", "read_encrypted"]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'twofold.spark' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"twofold.spark.{_HOME[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])
