from __future__ import annotations

import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from twofold.data.sources import _last_record_end, open_table_source
from twofold.errors import InputError


def test_blocks_end_outside_quotes():
    assert _last_record_end(b'a,b\n1,"x\ny"\n2,"z') == len(b'a,b\n1,"x\ny"\n')
    assert _last_record_end(b'1,"open\nstill open') == 0
    assert _last_record_end(b"") == 0


def test_quoted_newlines_survive_small_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr("twofold.data.sources.CSV_BLOCK_BYTES", 16)
    data = pa.table({"id": list(range(40)), "text": [f"line {i}\nnext, \"quoted\"" for i in range(40)]})
    pacsv.write_csv(data, tmp_path / "q.csv")
    reader, _ = open_table_source(tmp_path / "q.csv")
    assert reader.read_all().equals(data)


def test_unsupported_and_missing_inputs(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(InputError, match="unsupported"):
        open_table_source(tmp_path / "x.json")
    with pytest.raises(InputError, match="does not exist"):
        open_table_source(tmp_path / "nope.csv")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="Parquet"):
        open_table_source(tmp_path / "bad.parquet")


_WRITE_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np, pyarrow as pa, pyarrow.csv as pacsv
    path, rows = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(0)
    with pacsv.CSVWriter(path, pa.schema([(f"f{i}", pa.float64()) for i in range(8)])) as writer:
        for _ in range(rows // 100_000):
            writer.write_table(pa.table({f"f{i}": rng.standard_normal(100_000) for i in range(8)}))
""")

_PEAK_SCRIPT = textwrap.dedent("""
    import resource, sys
    import twofold.data.sources as sources
    from twofold.data.sources import open_table_source
    sources.CSV_BLOCK_BYTES = 1 << 20  # reach the steady state within the small file too
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reader, size = open_table_source(sys.argv[1])
    count = sum(batch.num_rows for batch in reader)
    print(size, count, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
""")


@pytest.mark.slow
def test_csv_is_streamed_in_bounded_memory(tmp_path):
    """Peak memory does not grow with the input: a CSV 4x larger costs (almost) no more memory."""
    peaks = []
    for rows in (300_000, 1_200_000):
        path = str(tmp_path / f"{rows}.csv")
        subprocess.run([sys.executable, "-c", _WRITE_SCRIPT, path, str(rows)], check=True, timeout=300)
        out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, path], capture_output=True, text=True,
                             check=True, timeout=300)
        size, count, growth = map(int, out.stdout.split())
        assert count == rows
        peaks.append((size, growth))
        (tmp_path / f"{rows}.csv").unlink()
    (small_size, small_growth), (big_size, big_growth) = peaks
    assert big_size > 3 * small_size
    assert big_growth - small_growth < 0.25 * (big_size - small_size), peaks
