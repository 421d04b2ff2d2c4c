"""One measurement in a fresh process (run by bench.run), reporting its own CPU seconds and peak RSS.

Imports of boto3, pyarrow and duckdb happen inside the measured functions, never at module level, so
the import figures start from a bare interpreter. CPU seconds are this process's user + system time
(getrusage RUSAGE_SELF: every thread, pyarrow's included) over the measured call only; the parent also
takes the whole process's from wait4.
"""

# ruff: noqa: PLC0415 - imports inside functions are what this file measures
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote_plus

ROOT = Path(__file__).resolve().parent.parent
RESULT_MARK = "BENCH_RESULT "
LOOP_MARK = "BENCH_LOOP "
# The contract's types for DuckDB's reader (CONTRACT.md, processed table): the yardstick converts only.
DUCKDB_COLUMNS = (
    "{'transaction_id': 'VARCHAR', 'timestamp': 'TIMESTAMPTZ', 'customer_id': 'VARCHAR', "
    "'product_id': 'VARCHAR', 'product_name': 'VARCHAR', 'category': 'VARCHAR', "
    "'quantity': 'INTEGER', 'price': 'DECIMAL(10,2)', 'total_amount': 'DECIMAL(10,2)'}"
)


def load_handler(name: str) -> ModuleType:
    """lambda/<name>/lambda_function.py imported as the console does: module name lambda_function.

    BENCH_TRANSFORMER_PATH (set by `bench.run --transformer FILE`) measures a candidate file instead.
    """
    path = ROOT / "lambda" / name / "lambda_function.py"
    if name == "transformer" and os.environ.get("BENCH_TRANSFORMER_PATH"):
        path = Path(os.environ["BENCH_TRANSFORMER_PATH"]).resolve()
    spec = importlib.util.spec_from_file_location("lambda_function", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["lambda_function"] = module
    spec.loader.exec_module(module)
    return module


def s3_event(bucket: str, key: str, *, force: bool = False) -> dict[str, Any]:
    """An ObjectCreated:Put notification for one key, URL-encoded as S3 sends it; `force` is a replay."""
    event: dict[str, Any] = {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(key, safe="/")}},
            }
        ]
    }
    if force:
        event["force"] = True
    return event


def cpu_seconds() -> float:
    """User + system CPU of this process so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _import_impl(impl: str, *, warm_client: bool = True) -> tuple[Any, float, Any]:
    """The implementation's callable (bucket, key) -> rows, the seconds its import took, and its S3 client
    (None until the first invocation creates it). With `warm_client`, the transformer's S3 client is
    created here too (the reference always creates its own); without, its first invocation creates it, as
    on Lambda."""
    started = time.perf_counter()
    if impl == "transformer":
        module = load_handler("transformer")
        client = module.s3_client() if warm_client else None
        elapsed = time.perf_counter() - started

        def run(bucket: str, key: str) -> dict[str, int]:
            # "force": the benchmark processes one object many times; without it, the state under state/
            # would make every run after the first a redelivery, skipped.
            result = module.lambda_handler(s3_event(bucket, key, force=True), None)
            (summary,) = result["processed"]
            return {"rows": summary["rows_written"], "quarantined": summary["quarantined"]}

        return run, elapsed, client
    import boto3

    from bench import reference

    client = boto3.client("s3")
    elapsed = time.perf_counter() - started
    return (
        (lambda bucket, key: {"rows": reference.transform(client, bucket, key), "quarantined": 0}),
        elapsed,
        client,
    )


class RequestCounter:
    """Counts the HTTP requests a boto3 client sends, by operation (botocore's before-send event fires once
    per request sent, retries included: what S3 bills)."""

    def __init__(self, client: Any) -> None:
        self.counts: dict[str, int] = {}
        client.meta.events.register("before-send.s3", self._count)

    def _count(self, event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        self.counts[operation] = self.counts.get(operation, 0) + 1

    def total(self) -> int:
        return sum(self.counts.values())


def measure_imports(impl: str) -> dict[str, Any]:
    """Cold import of the handler module plus its S3 client, or of the bare dependencies plus a client."""
    started = time.perf_counter()
    if impl == "transformer":
        load_handler("transformer").s3_client()
    else:
        import boto3
        import pyarrow
        import pyarrow.compute
        import pyarrow.json
        import pyarrow.parquet

        boto3.client("s3")
        del pyarrow
    return {"import_s": time.perf_counter() - started, "pandas_loaded": "pandas" in sys.modules}


def measure_work(impl: str, bucket: str, keys: list[str], profile: str | None) -> dict[str, Any]:
    """Time and CPU of the last key; the ones before it are processed first, untimed (a warm function).

    With one key only, the measured call is a cold start's first invocation: it creates the S3 client.
    """
    *warmups, key = keys
    started_cpu = cpu_seconds()
    run, import_s, _ = _import_impl(impl, warm_client=bool(warmups))
    import_cpu_s = cpu_seconds() - started_cpu
    for warmup in warmups:
        run(bucket, warmup)
    profiler: Any = None
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.005)
        profiler.start()
    cpu_before, started = cpu_seconds(), time.perf_counter()
    counts = run(bucket, key)
    work_s, work_cpu_s = time.perf_counter() - started, cpu_seconds() - cpu_before
    if profiler is not None:
        profiler.stop()
        Path(str(profile)).write_text(profiler.output_text(unicode=True, color=False, show_all=False))
    return {
        "import_s": import_s,
        "import_cpu_s": import_cpu_s,
        "work_s": work_s,
        "work_cpu_s": work_cpu_s,
        **counts,
    }


def measure_duckdb(source: str, target: str) -> dict[str, Any]:
    """DuckDB's single-threaded JSON Lines -> Parquet conversion of a local file: the contract's types,
    no derived columns, no rules. The yardstick beside the transformer's figures."""
    started_cpu = cpu_seconds()
    import duckdb
    import pyarrow.parquet as pq

    con = duckdb.connect()
    con.execute("SET threads = 1")
    import_cpu_s = cpu_seconds() - started_cpu
    sql = (
        f"COPY (SELECT * FROM read_json('{source}', format = 'newline_delimited', "  # noqa: S608 - our paths
        f"columns = {DUCKDB_COLUMNS})) TO '{target}' (FORMAT parquet, COMPRESSION snappy)"
    )
    cpu_before, started = cpu_seconds(), time.perf_counter()
    con.execute(sql)
    work_s, work_cpu_s = time.perf_counter() - started, cpu_seconds() - cpu_before
    con.close()
    rows = pq.read_metadata(target).num_rows
    Path(target).unlink()
    return {"import_cpu_s": import_cpu_s, "work_s": work_s, "work_cpu_s": work_cpu_s, "rows": rows}


def measure_small(impl: str, bucket: str, keys: list[str]) -> dict[str, Any]:
    """Warm invocations: the first one is discarded, the rest give the median per invocation, and the S3
    requests each one sends (by operation, summed over the warm ones)."""
    run, import_s, client = _import_impl(impl)
    counter = RequestCounter(client)
    times, requests = [], []
    for index, key in enumerate(keys):
        if index == 1:
            counter.counts.clear()
        before = counter.total()
        started = time.perf_counter()
        run(bucket, key)
        times.append(time.perf_counter() - started)
        requests.append(counter.total() - before)
    warm = times[1:]
    return {
        "import_s": import_s,
        "first_s": times[0],
        "median_s": statistics.median(warm),
        "n": len(warm),
        "requests_per_invocation": statistics.median(requests[1:]),
        "requests_by_operation": dict(sorted(counter.counts.items())),
    }


def measure_mechanisms(spec: dict[str, Any]) -> dict[str, Any]:
    """bench/mechanisms.py on the files the parent made (spec: clean {records: path}, malformed path, names,
    rounds, call_rounds, calls, seed): the small objects are the generator's 1- and 3-record files."""
    from bench import data, mechanisms

    bodies = {1 + index % 3: body for index, (_, body) in enumerate(data.small_bodies(3, spec["seed"]))}
    return mechanisms.measure(
        load_handler("transformer"),
        clean={int(records): Path(path) for records, path in spec["clean"].items()},
        malformed=Path(spec["malformed"]),
        names=tuple(spec["names"]),
        rounds=spec["rounds"],
        call_rounds=spec["call_rounds"],
        calls=spec["calls"],
        small_bodies={records: bodies[records] for records in (1, 3)},
    )


def check_outputs(s3: Any, bucket: str, summary: dict[str, Any]) -> None:
    """Every Parquet output of one invocation reads back whole and valid, with the rows it reported."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 0
    for key in summary["outputs"]:
        if not key.endswith(".parquet"):
            continue
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        table = pq.read_table(pa.BufferReader(body))
        table.validate(full=True)
        rows += table.num_rows
    if rows != summary["rows_written"]:
        raise AssertionError(
            f"the Parquet outputs hold {rows} rows, the handler reported {summary['rows_written']}"
        )


def reliability_loop(bucket: str, keys: list[str], expected: list[int], runs: int) -> dict[str, Any]:
    """`runs` rounds, each invoking the handler once per key with "force": true, in this one process (a
    warm container: one module, one client). One line per invocation, flushed, so that a crash still
    leaves the runs before it; each output is read back and checked after the timed call."""
    import boto3

    module = load_handler("transformer")
    s3 = boto3.client("s3")
    failures = 0
    for round_ in range(runs):
        for key, records in zip(keys, expected, strict=True):
            entry: dict[str, Any] = {"round": round_, "key": key}
            started = time.perf_counter()
            try:
                result = module.lambda_handler(s3_event(bucket, key, force=True), None)
                entry["s"] = time.perf_counter() - started
                (summary,) = result["processed"]
                if summary["records_read"] != records or summary["rows_written"] != records:
                    raise AssertionError(
                        f"{records} records expected; read {summary['records_read']}, "
                        f"written {summary['rows_written']}, quarantined {summary['quarantined']}"
                    )
                check_outputs(s3, bucket, summary)
                entry["ok"] = True
            except Exception as e:  # every failure is the figure: counted and shown
                entry.setdefault("s", time.perf_counter() - started)
                entry["ok"] = False
                entry["error"] = f"{type(e).__name__}: {e}"[:500]
                failures += 1
            sys.stdout.write(LOOP_MARK + json.dumps(entry) + "\n")
            sys.stdout.flush()
    return {"failures": failures}


def peak_rss_mib() -> float:
    """This process's RSS high-water mark (VmHWM), in MiB.

    Not the parent's wait4 ru_maxrss: Linux carries the pre-exec high-water mark of the forked parent
    (here the one holding moto's server and its objects) into the child's figure.
    """
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status: the memory figures need Linux")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["imports", "work", "small", "duckdb", "loop", "mechanisms"])
    parser.add_argument("--impl", choices=["transformer", "reference"], default="transformer")
    parser.add_argument("--bucket", default="")
    parser.add_argument("--key", action="append", default=[])
    parser.add_argument("--expect", action="append", type=int, default=[], help="loop: records per key")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--source", default="", help="duckdb: the JSON Lines file")
    parser.add_argument("--target", default="", help="duckdb: the Parquet file to write (deleted after)")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--spec", default="{}", help="mechanisms: what to measure, as JSON")
    args = parser.parse_args(argv)
    if args.mode == "imports":
        result = measure_imports(args.impl)
    elif args.mode == "work":
        result = measure_work(args.impl, args.bucket, args.key, args.profile)
    elif args.mode == "duckdb":
        result = measure_duckdb(args.source, args.target)
    elif args.mode == "mechanisms":
        result = measure_mechanisms(json.loads(args.spec))
    elif args.mode == "loop":
        result = reliability_loop(args.bucket, args.key, args.expect, args.runs)
    else:
        result = measure_small(args.impl, args.bucket, args.key)
    result["peak_rss_mib"] = peak_rss_mib()
    result["pandas_loaded_at_end"] = "pandas" in sys.modules
    sys.stdout.write(RESULT_MARK + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
