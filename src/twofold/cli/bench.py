"""``twofold bench``: benchmarks that measure twofold beside its baseline and write JSON."""

from __future__ import annotations

from pathlib import Path

import click

from twofold.bench.common import write_json
from twofold.cli.common import debug_requested, info
from twofold.spark import catalog

json_option = click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
                           default=None, help="Write results to this JSON file.")


@click.group()
def bench() -> None:
    """Run benchmarks (baseline and twofold side by side)."""


@bench.command("encrypt")
@click.option("--rows", type=click.IntRange(min=1), default=1_000_000, show_default=True)
@click.option("--cols", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--rows-per-file", type=click.IntRange(min=1), default=None)
@json_option
def bench_encrypt(rows: int, cols: int, rows_per_file: int | None, json_path: Path | None) -> None:
    """Plain Parquet vs encrypted dataset: write and read throughput."""
    from twofold.bench import encrypt

    result = encrypt.run(rows, cols, rows_per_file)
    for row in result["results"]:
        info(f"{row['mode']:<10} write {row['write_mb_per_s']:8.1f} MB/s   read {row['read_mb_per_s']:8.1f} MB/s")
    info(f"encrypted/plain read ratio {result['read_ratio']:.2f} (target >= 0.80)")
    write_json(json_path, result)


@bench.command("dp-sgd")
@click.option("--device", default="cpu", show_default=True)
@click.option("--epsilon", type=click.FloatRange(min=0, min_open=True), default=3.0, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=40, show_default=True)
@click.option("--seeds", type=click.IntRange(min=1), default=5, show_default=True)
@json_option
def bench_dp_sgd(device: str, epsilon: float, epochs: int, seeds: int, json_path: Path | None) -> None:
    """DP-SGD (opacus) on encrypted digits beside the same model trained without DP: accuracy and its ratio."""
    from twofold.bench import dp_sgd

    result = dp_sgd.run(device, epsilon=epsilon, epochs=epochs, seeds=seeds)
    for name in ("non_private", "dp_sgd"):
        s = result[name]
        info(f"{name:<12} accuracy {s['accuracy_mean']:.4f} (min {s['accuracy_min']:.4f}, max "
             f"{s['accuracy_max']:.4f})  {s['seconds_mean']:.2f} s/run")
    info(f"ratio {result['accuracy_ratio']:.3f}, spent epsilon {result['dp_sgd']['spent_epsilon']:.3f} "
         f"(target {epsilon}), noise multiplier {result['dp_sgd']['noise_multiplier']:.3f}")
    write_json(json_path, result)


@bench.command("kbs")
@click.option("--attestations", type=click.IntRange(min=10), default=300, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True)
@json_option
def bench_kbs(attestations: int, concurrency: int, json_path: Path | None) -> None:
    """Attestation + key-release latency (median, p99) and grants per second on loopback."""
    from twofold.bench import kbs

    result = kbs.run(attestations, concurrency)
    info(f"simulation backend: median {result['median_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms "
         f"(target <= 50), {result['grants_per_s']:.0f} grants/s (target >= 100)")
    write_json(json_path, result)


@bench.command("servers")
@click.option("--key-bits", type=int, default=2048, show_default=True)
@click.option("--levels", default="1,10,25,50,64,80", show_default=True, help="Concurrent clients per round.")
@click.option("--heartbeat", type=float, default=5.0, show_default=True)
@click.option("--peer-timeout", type=float, default=15.0, show_default=True)
@click.option("--max-connections", type=click.IntRange(1), default=64, show_default=True)
@json_option
def bench_servers(key_bits: int, levels: str, heartbeat: float, peer_timeout: float, max_connections: int,
                  json_path: Path | None) -> None:
    """MU and SU under concurrent encrypted queries, and the time to find a frozen SU or MU."""
    from twofold.bench import servers

    result = servers.run(key_bits, tuple(int(x) for x in levels.split(",") if x.strip()), heartbeat, peer_timeout,
                         max_connections, log=info)
    info(f"held {result['held_without_error']} concurrent queries without error; frozen SU found in "
         f"{result['frozen_su']['detected_s']:.1f} s, frozen MU in {result['frozen_mu_detected_s']:.1f} s "
         f"(peer timeout {peer_timeout:.0f} s)")
    write_json(json_path, result)


from twofold.cli.he import bench_he  # noqa: E402

bench.add_command(bench_he, "he")


@bench.command("torch")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--synthetic-rows", type=click.IntRange(min=1000), default=200_000, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=2, show_default=True,
              help="Epochs on the synthetic set (digits trains 20).")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Best of this many runs per mode (at least 7 for the short digits job).")
@json_option
def bench_torch(device: str, synthetic_rows: int, epochs: int, repeats: int, json_path: Path | None) -> None:
    """Training from plaintext vs encrypted tensor datasets (same model, same seed): time and accuracy."""
    from twofold.bench import torch_bench

    result = torch_bench.run(device, synthetic_rows=synthetic_rows, epochs=epochs, repeats=repeats)
    for row in result["results"]:
        info(f"{row['dataset']:<10} {row['mode']:<10} {row['seconds']:8.2f} s   accuracy {row['accuracy']:.4f}")
    info(f"overhead ratio {result['overhead_ratio']:.3f} (target <= 1.02), keystream "
         f"{result['keystream_gb_per_s']:.2f} GB/s ({result['keystream_gb_per_s_impl']}), "
         f"decryption via {result['keystream_impl']}")
    write_json(json_path, result)


@bench.command("spark")
@click.option("--rows", type=click.IntRange(min=1000), default=500_000, show_default=True)
@click.option("--cols", type=click.IntRange(min=2), default=50, show_default=True)
@click.option("--algorithms", default=",".join(catalog.ALGORITHMS), show_default=True)
@click.option("--partitions", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--master", default=None, help="Spark master (default local[*]).")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Rounds of every mode (twice that for fits under 5 s); each mode reports its fastest.")
@click.option("--warmup-rounds", type=click.IntRange(min=0), default=1, show_default=True,
              help="Untimed full-size rounds first, so that no mode pays the JVM's compilation.")
@json_option
def bench_spark(rows: int, cols: int, algorithms: str, partitions: int, master: str | None, repeats: int,
                warmup_rounds: int, json_path: Path | None) -> None:
    """Vanilla MLlib vs whole vs partitioned (statistics, sealed) on synthetic encrypted data."""
    from twofold.bench import spark_bench

    chosen = [a.strip() for a in algorithms.split(",") if a.strip()]
    unknown = sorted(set(chosen) - set(catalog.ALGORITHMS))
    if unknown:
        raise click.BadParameter(f"unknown algorithms {unknown}", param_hint="--algorithms")
    result = spark_bench.run(rows, cols, chosen, partitions, master, log=info, repeats=repeats,
                             warmup_rounds=warmup_rounds, quiet=not debug_requested())
    for row in result["results"]:
        if row["mode"] != "vanilla":
            info(f"{row['algorithm']:<12} {row['mode']:<24} {row['ratio_to_vanilla']:.2f}x vanilla")
    write_json(json_path, result)


@bench.command("all")
@click.option("--quick", is_flag=True, help="Smaller sizes (a few minutes).")
@click.option("--only", default=None, help="Comma-separated subset: encrypt,kbs,spark,he,servers,torch.")
@json_option
def bench_all(quick: bool, only: str | None, json_path: Path | None) -> None:
    """Run every benchmark (encrypt, kbs, spark, he, torch) and record the machine."""
    from twofold.bench import suite

    result = suite.run(quick, only.split(",") if only else None, log=info, quiet=not debug_requested())
    write_json(json_path, result)
    if result["errors"]:
        info(f"finished with problems: {result['errors']}")


@click.command()
@click.argument("source", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
def report(source: Path, out: Path) -> None:
    """Write benchmarks.md and PNG plots from a benchmark JSON file."""
    from twofold.bench.report import write_report

    info(f"wrote {write_report(source, out)}")
