"""Micro-measurements behind the bench's suggestions for the transformer: `python -m bench.micro`.

Each measurement names the cost it isolates; none is a goal. Uses the 1M-record file of `make bench`
(bench/out/data/, generated if missing) and the transformer in lambda/transformer/ (or
BENCH_TRANSFORMER_PATH).
"""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from bench import data, reference
from bench._child import load_handler

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "out" / "data"

# Each statement runs in a fresh interpreter after pyarrow is imported and a table is read.
PANDAS_TRIGGERS = (
    "pc.equal(c, '')",
    "pc.greater_equal(q, 1)",
    "pa.scalar('', pa.string())",
    "pa.array(np.arange(3))",
    "pc.fill_null(pc.equal(c, c), False)",
    "pq.ParquetWriter(io.BytesIO(), t.schema).write_table(t)",
    "pc.hour(pc.cast(ts, pa.timestamp('ms', tz='UTC')))",
    "pc.equal(c, pa.Array.from_buffers(pa.string(), 1, [None, pa.py_buffer(bytes(8)), pa.py_buffer(b'')])[0])",  # noqa: E501
)
_TRIGGER_SCRIPT = """
import io, sys, time
import numpy as np
import pyarrow as pa, pyarrow.compute as pc, pyarrow.json as pj, pyarrow.parquet as pq
t = pj.read_json(io.BytesIO(b'{"a": "x", "q": 1, "ts": "2026-01-01T00:00:00Z"}\\n'))
c, q, ts = t["a"], t["q"], t["ts"]
assert "pandas" not in sys.modules
start = time.perf_counter()
STATEMENT
print("pandas" in sys.modules, time.perf_counter() - start)
"""


def best_of(repeat: int, work: Callable[[], Any]) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def pandas_triggers() -> None:
    print("\n1. Which pyarrow calls import pandas on first use (fresh interpreter each):")
    for statement in PANDAS_TRIGGERS:
        script = _TRIGGER_SCRIPT.replace("STATEMENT", statement)
        out = subprocess.run(  # noqa: S603 - our interpreter, our script
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout.split()
        print(f"   {statement:<100} pandas imported: {out[0]:<5} {float(out[1]) * 1000:6.0f} ms")


def table_1m(raw: Path) -> pa.Table:
    table = pa_json.read_json(
        pa.BufferReader(raw.read_bytes()),
        parse_options=pa_json.ParseOptions(explicit_schema=reference.READ_SCHEMA),
    )
    ts = table["timestamp"]
    table = table.append_column("hour", pc.cast(pc.hour(ts), pa.int32())).append_column(
        "day_of_week", pc.cast(pc.day_of_week(ts, count_from_zero=True, week_start=1), pa.int32())
    )
    return table.combine_chunks()


def writer_options(table: pa.Table) -> None:
    print("\n2. ParquetWriter, 1M rows in 30,000-row groups, snappy (best of 3):")
    blocks = [table.slice(i, 30_000) for i in range(0, table.num_rows, 30_000)]
    options: dict[str, dict[str, Any]] = {
        "dictionary on every column (default)": {},
        "no dictionary for transaction_id": {
            "use_dictionary": ["customer_id", "product_id", "product_name", "category"]
        },
    }
    writer_class: Any = pq.ParquetWriter
    for label, extra in options.items():
        sink = io.BytesIO()

        def write(extra: dict[str, Any] = extra, sink: io.BytesIO = sink) -> None:
            sink.seek(0)
            sink.truncate()
            with writer_class(sink, table.schema, compression="snappy", **extra) as writer:
                for block in blocks:
                    writer.write_table(block)

        seconds = best_of(3, write)
        print(f"   {label:<40} {seconds:.3f} s, {len(sink.getvalue()) / 2**20:.1f} MiB")


def blank_checks(raw: Path) -> None:
    print("\n3. Blank-string checks on 6 string columns x 1M rows (best of 3):")
    table = pa_json.read_json(pa.BufferReader(raw.read_bytes())).combine_chunks()
    columns = ["transaction_id", "customer_id", "product_id", "product_name", "category", "timestamp"]
    pc.equal(table["quantity"], 1)  # pay pyarrow's lazy pandas import outside the timing
    checks: dict[str, Callable[[Any], Any]] = {
        "invert(equal(utf8_trim_whitespace(c), ''))": lambda c: pc.invert(
            pc.equal(pc.utf8_trim_whitespace(c), "")
        ),
        "and_(binary_length(c) > 0, invert(utf8_is_space(c)))": lambda c: pc.and_(
            pc.greater(pc.binary_length(c), 0), pc.invert(pc.utf8_is_space(c))
        ),
        "aggregates: min_max(binary_length(c)), any(utf8_is_space(c))": lambda c: (
            pc.min_max(pc.binary_length(c)),
            pc.any(pc.utf8_is_space(c)),
        ),
    }
    for label, check in checks.items():

        def run_check(check: Callable[[Any], Any] = check) -> None:
            for name in columns:
                check(table[name])

        seconds = best_of(3, run_check)
        print(f"   {label:<62} {seconds * 1000:5.0f} ms")


def small_blocks(raw: Path) -> None:
    print("\n4. Transformer fast path vs exact path on small blocks (mean per block):")
    transformer = load_handler("transformer")
    with raw.open("rb") as f:
        lines = [f.readline() for _ in range(300)]
    transformer.fast_block(b"".join(lines[:5]), 1)
    for count in (1, 3, 10, 30, 100, 300):
        block = b"".join(lines[:count])
        reps = max(20, 3_000 // count)
        timings = {}
        for name in ("fast_block", "exact_block"):
            function = getattr(transformer, name)

            def run_block(function: Any = function, block: bytes = block, reps: int = reps) -> None:
                for _ in range(reps):
                    function(block, 1)

            timings[name] = best_of(3, run_block) / reps
        print(
            f"   {count:4d} lines: fast {timings['fast_block'] * 1e6:7.0f} us, "
            f"exact {timings['exact_block'] * 1e6:7.0f} us"
        )

    def temp_dir() -> None:
        for _ in range(200):
            with tempfile.TemporaryDirectory() as directory:
                (Path(directory) / "x.parquet").write_bytes(b"x")

    print(f"   TemporaryDirectory + one file + cleanup: {best_of(3, temp_dir) / 200 * 1e6:.0f} us")


def main() -> None:
    raw = data.clean_file(DATA, 1_000_000, 20261125, workers=2)
    pandas_triggers()
    writer_options(table_1m(raw))
    blank_checks(raw)
    small_blocks(raw)


if __name__ == "__main__":
    main()
