"""A Spark session with twofold's defaults: ``local[*]`` unless told otherwise, quiet, Arrow enabled; the owner's
passphrase kept out of Spark, and Spark's own encryption on for sessions that hold plaintext (whole mode)."""

from __future__ import annotations

import os
import sys
from types import MappingProxyType
from typing import Any

from twofold.errors import ConfigError
from twofold.keys.keystore import PASSPHRASE_ENV
from twofold.spark import console

# What whole mode sets: there the decrypted rows are Spark's, so Spark encrypts what it writes and sends. Local
# blocks (shuffle, spill, cached and broadcast data on disk) with AES under a key made per application; RPC and
# block transfer between the JVMs with AES-GCM (authenticated; Spark's default, CTR, is not) under a key agreed
# by the v2 handshake over the authentication secret, with no fall-back to SASL DIGEST-MD5. In local mode (and on
# YARN or Kubernetes) Spark creates that secret itself, per application; on a standalone cluster it must come from
# the cluster's own configuration (``spark.authenticate.secret``), as Spark requires. Not covered: the loopback
# sockets between a JVM and its Python workers (authenticated, not encrypted), and the driver's own memory.
WHOLE_MODE_CONF: MappingProxyType[str, str] = MappingProxyType({
    "spark.io.encryption.enabled": "true",
    "spark.network.crypto.enabled": "true",
    "spark.authenticate": "true",
    "spark.network.crypto.authEngineVersion": "2",
    "spark.network.crypto.cipher": "AES/GCM/NoPadding",
    "spark.network.crypto.saslFallback": "false",
})


def get_spark(master: str | None = None, app_name: str = "twofold", java_options: str = "", *, quiet: bool = True,
              whole_mode: bool = False, **conf: Any) -> Any:
    """Create or reuse a SparkSession; the Python workers use this interpreter (so twofold is importable).

    ``java_options`` are added to the driver JVM's options (in local mode the driver also runs the tasks).
    ``quiet`` keeps the JVM's start-up notices and Spark's logs off the console (:mod:`twofold.spark.console`);
    ``quiet=False`` (``twofold --debug``) leaves the console as Spark makes it. A session that already runs keeps
    the console it started with.

    ``whole_mode`` adds :data:`WHOLE_MODE_CONF` (over any ``conf`` that says otherwise). These settings are fixed
    when the session starts, and a session is shared by every job of its process: pass ``whole_mode=True`` whenever
    any whole-mode job may run in the session, or any other plaintext reaches it (a vanilla MLlib baseline beside
    partitioned jobs, as in the demo and the benchmark). Asking for whole mode from a session that started without
    it is a :class:`ConfigError`.

    The owner's passphrase (``TWOFOLD_PASSPHRASE``) is removed from this process's environment before Spark starts,
    so neither the JVM nor its Python workers inherit it; a caller that needs it reads it first (the CLI does). A
    JVM started earlier in this process, not by this function, keeps the environment it started with.
    """
    os.environ.pop(PASSPHRASE_ENV, None)
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
        **(WHOLE_MODE_CONF if whole_mode else {}),
    }
    if quiet:
        console.start_quiet_jvm(settings)
    builder = SparkSession.builder
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if whole_mode:
        running = spark.sparkContext.getConf()
        missing = sorted(key for key, value in WHOLE_MODE_CONF.items() if running.get(key, "").lower() != value.lower())
        if missing:
            raise ConfigError(f"this process's Spark session started without whole mode's encryption "
                              f"({', '.join(missing)}); run whole-mode jobs in a session started with whole_mode=True")
    # Task failures are reported by twofold as typed one-line errors; Spark's own logs stay quiet unless asked.
    level = os.environ.get("TWOFOLD_SPARK_LOG_LEVEL") or ("OFF" if quiet else "")
    if level:
        spark.sparkContext.setLogLevel(level)
    return spark
