"""Confidential Spark MLlib: whole mode (``read_encrypted``) and partitioned mode (the estimators)."""

from twofold.spark.estimators import PCA, KMeans, LinearRegression, LogisticRegression, NaiveBayes, PartitionedModel
from twofold.spark.files import encrypted_files
from twofold.spark.session import get_spark
from twofold.spark.whole import read_encrypted

__all__ = ["PCA", "KMeans", "LinearRegression", "LogisticRegression", "NaiveBayes", "PartitionedModel",
           "encrypted_files", "get_spark", "read_encrypted"]
