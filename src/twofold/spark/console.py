"""A quiet JVM console: what twofold configures so that Spark's start-up notices stay off the user's terminal.

Everything here is configuration except one line. Spark's launcher always adds ``--add-modules=jdk.incubator.vector``
(its vectorized BLAS), and the JDK then prints "WARNING: Using incubator modules: ..." before anything else runs; no
JVM option turns that notice off. So the driver JVM's stderr goes through a relay that drops that one notice, when
it is the notice exactly, during start-up, and copies everything else, byte for byte. ``quiet=False`` in
:func:`twofold.spark.get_spark` (``twofold --debug``) uses none of this: the console is what Spark makes it.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

LOG_CONFIG = Path(__file__).with_name("log4j2.properties")
# netlib's JNI loaders dlopen these and print to stderr when they cannot; MLlib then uses the Java implementations.
NETLIB_LIBRARIES = {"blas": "libblas.so.3", "lapack": "liblapack.so.3", "arpack": "libarpack.so.2"}
_INCUBATOR_NOTICE = re.compile(rb"WARNING: Using incubator modules: jdk\.incubator\.\w+(, jdk\.incubator\.\w+)*\r?\n")
_STANDARD_LIBRARY_DIRS = ("/lib", "/usr/lib", "/lib64", "/usr/lib64")


def _loadable(soname: str) -> bool:
    """Whether the dynamic loader can find ``soname``; True when unsure, so that netlib still tries."""
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]
    if any((Path(d) / soname).exists() for d in [*dirs, *_STANDARD_LIBRARY_DIRS]):
        return True
    try:
        cache = Path("/etc/ld.so.cache").read_bytes()
    except OSError:
        return True
    return soname.encode() + b"\0" in cache


def netlib_options(java_options: str = "") -> list[str]:
    """``allowNative=false`` for each netlib library that is not installed (the outcome netlib reaches anyway).

    Left alone: other platforms, and a library the caller configures in ``java_options``.
    """
    if not sys.platform.startswith("linux"):
        return []
    return [f"-Ddev.ludovic.netlib.{name}.allowNative=false" for name, soname in NETLIB_LIBRARIES.items()
            if f"dev.ludovic.netlib.{name}." not in java_options and not _loadable(soname)]


def quiet_java_options(java_options: str = "") -> tuple[str, str]:
    """The driver's and the executors' extra JVM options for a quiet console."""
    log = f"-Dlog4j2.configurationFile={LOG_CONFIG}"
    return " ".join([log, *netlib_options(java_options), java_options]).strip(), log


def _write(data: bytes) -> None:
    try:
        while data:
            data = data[os.write(2, data):]
    except OSError:  # our stderr is gone; keep draining the pipe so that the JVM never blocks on it
        pass


def _relay(source: int, started: threading.Event) -> None:
    """Copy the JVM's stderr to ours, less the JDK's incubator notice while the JVM starts."""
    with open(source, "rb") as pipe:
        for line in iter(pipe.readline, b""):  # whole lines until the notice, or until the JVM has started
            if _INCUBATOR_NOTICE.fullmatch(line):
                break
            _write(line)
            if started.is_set():
                break
        while chunk := pipe.read1(1 << 16):
            _write(chunk)


def start_quiet_jvm(settings: dict[str, Any]) -> None:
    """Start this process's Spark JVM with its stderr relayed (no-op when one runs already).

    ``settings`` are the Spark settings (``spark.master`` included) that the session builder would pass on.
    """
    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway

    if SparkContext._gateway is not None:
        return
    read_end, write_end = os.pipe()
    started = threading.Event()
    threading.Thread(target=_relay, args=(read_end, started), name="twofold-jvm-stderr", daemon=True).start()
    try:
        gateway = launch_gateway(SparkConf().setAll(list(settings.items())), popen_kwargs={"stderr": write_end})
    finally:
        os.close(write_end)
        started.set()
    SparkContext._ensure_initialized(gateway=gateway)
