"""A Spark session with twofold's defaults: ``local[*]`` unless told otherwise, quiet, Arrow enabled."""

from __future__ import annotations

import os
import sys
from typing import Any

from twofold.spark import console


def get_spark(master: str | None = None, app_name: str = "twofold", java_options: str = "", *, quiet: bool = True,
              **conf: Any) -> Any:
    """Create or reuse a SparkSession; the Python workers use this interpreter (so twofold is importable).

    ``java_options`` are added to the driver JVM's options (in local mode the driver also runs the tasks).
    ``quiet`` keeps the JVM's start-up notices and Spark's logs off the console (:mod:`twofold.spark.console`);
    ``quiet=False`` (``twofold --debug``) leaves the console as Spark makes it. A session that already runs keeps
    the console it started with.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    master = master or "local[*]"
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    driver_options, executor_options = console.quiet_java_options(java_options) if quiet else (java_options, "")
    settings = {
        "spark.master": master,
        "spark.app.name": app_name,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.shuffle.partitions": "8",
        "spark.driver.memory": os.environ.get("TWOFOLD_SPARK_DRIVER_MEMORY", "4g"),
        "spark.python.worker.reuse": "true",
        **({"spark.driver.extraJavaOptions": driver_options} if driver_options else {}),
        **({"spark.executor.extraJavaOptions": executor_options} if executor_options else {}),
        **conf,
    }
    if quiet:
        console.start_quiet_jvm(settings)
    builder = SparkSession.builder
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    # Task failures are reported by twofold as typed one-line errors; Spark's own logs stay quiet unless asked.
    level = os.environ.get("TWOFOLD_SPARK_LOG_LEVEL") or ("OFF" if quiet else "")
    if level:
        spark.sparkContext.setLogLevel(level)
    return spark
