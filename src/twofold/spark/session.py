"""A Spark session with twofold's defaults: ``local[*]`` unless told otherwise, quiet, Arrow enabled."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def get_spark(master: str | None = None, app_name: str = "twofold", java_options: str = "", **conf: Any):
    """Create or reuse a SparkSession; the Python workers use this interpreter (so twofold is importable).

    ``java_options`` are added to the driver JVM's options (in local mode the driver also runs the tasks).
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if (master or "local").startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    log_config = Path(__file__).with_name("log4j2.properties")
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name).master(master or "local[*]")
    defaults = {
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.shuffle.partitions": "8",
        "spark.driver.memory": os.environ.get("TWOFOLD_SPARK_DRIVER_MEMORY", "4g"),
        "spark.python.worker.reuse": "true",
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={log_config} {java_options}".strip(),
        "spark.executor.extraJavaOptions": f"-Dlog4j2.configurationFile={log_config}",
    }
    for key, value in {**defaults, **conf}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    # Task failures are reported by twofold as typed one-line errors; Spark's own logs stay quiet unless asked.
    spark.sparkContext.setLogLevel(os.environ.get("TWOFOLD_SPARK_LOG_LEVEL", "OFF"))
    return spark
