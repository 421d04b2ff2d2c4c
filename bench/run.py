"""`make bench`: the issue's performance figures, each next to its goal, as a table and as JSON.

Everything runs on this machine against moto's S3 server on 127.0.0.1 (no AWS account, no network).
The data is generated here from a seed with the generator's own functions and cached in bench/out/data/.
Each transformer or reference run is a fresh child process, so its peak RSS (VmHWM) is the whole
process's, interpreter and imports included.

    .venv/bin/python -m bench.run                 # 1,000,000 records, 3 repetitions
    .venv/bin/python -m bench.run --quick         # a small smoke run (figures are not meaningful)
    .venv/bin/python -m bench.run --big           # adds the 10,000,000-record flat-memory run
    .venv/bin/python -m bench.run --profile       # adds a pyinstrument profile of the transformer
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import boto3
import duckdb
import pyarrow.dataset as ds
from boto3.s3.transfer import TransferConfig
from moto.server import ThreadedMotoServer
from pyarrow import fs

from bench import data
from bench._child import RESULT_MARK, s3_event
from local import catalog, lambdas

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
BUCKET = "bench-ecommerce-pipeline"
REGION = "us-east-1"
MIB = 1024 * 1024
BIG_KEY_DAY = "raw/year=2026/month=11/day=25/"
COMPACTION_DAY = date(2026, 11, 20)
# The sample queries that read only the processed table (no "$path", no other table).
QUERY_NAMES = (
    "daily_revenue",
    "sales_by_category",
    "revenue_by_hour",
    "revenue_by_day_of_week",
    "top_products_by_revenue",
    "top_products_by_units",
    "basket_and_repeat_customers",
)


class BenchError(RuntimeError):
    """A measurement could not be taken (a child failed, a result is missing)."""


@dataclass
class Figure:
    goal_id: str
    figure: str
    measured: str
    goal: str
    passed: bool | None  # None: reported, no pass/fail
    value: float | None = None


# --- Machine and moto ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError):
        match = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(encoding="utf-8"))
        memory = f"{int(match[1]) / 1024 / 1024:.1f} GiB" if match else memory
    versions = {}
    for package in ("pyarrow", "boto3", "moto", "duckdb"):
        with contextlib.suppress(ImportError):
            versions[package] = __import__(package).__version__
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": memory,
        "python": platform.python_version(),
        "os": platform.platform(),
        **versions,
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1, stopped on success and on error."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def aws_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "BUCKET_NAME": BUCKET,
        "LOG_LEVEL": "WARNING",
    }


def s3_for(endpoint: str) -> S3Client:
    client: S3Client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - moto's fake key
    )
    return client


# --- Child processes ----------------------------------------------------------------------------------


def run_child(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """`python -m bench._child ARGS` in a fresh process; its result (with its own peak RSS) and wall time."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    child_env.update(env)
    child_env["PYTHONPATH"] = str(ROOT)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed arguments
            [sys.executable, "-m", "bench._child", *args], stdout=out, stderr=err, env=child_env, cwd=ROOT
        )
        proc.wait()
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    if proc.returncode != 0:
        raise BenchError(f"bench child {args[:3]} exited with {proc.returncode}:\n{stderr[-3000:]}")
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_MARK)]
    if not lines:
        raise BenchError(f"bench child {args[:3]} printed no result:\n{stdout[-2000:]}\n{stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARK) :])
    result["wall_s"] = wall
    return result


def load_lambda(name: str) -> ModuleType:
    """A handler imported in this process; BENCH_TRANSFORMER_PATH swaps in a candidate transformer."""
    candidate = os.environ.get("BENCH_TRANSFORMER_PATH") if name == "transformer" else None
    return lambdas.load_lambda(name, Path(candidate) if candidate else None)


# A three-record object each big-object child processes first, untimed (see big_object_runs).
WARMUP_KEY = "raw/year=2026/month=11/day=24/transactions-20261124T000500Z-0000warm.json"


def upload(s3: S3Client, path: Path, key: str) -> None:
    s3.upload_file(
        str(path), BUCKET, key, Config=TransferConfig(multipart_chunksize=64 * MIB, max_concurrency=2)
    )


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def log(message: str) -> None:
    print(f"[bench {datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# --- Goals 1, 2, 4: the big object ----------------------------------------------------------------------


def big_object_runs(
    endpoint: str, key: str, impl: str, repeat: int, profile: Path | None = None
) -> dict[str, Any]:
    runs = []
    for index in range(repeat):
        # One small object first, untimed: the figure is the throughput of a warm function, for both
        # implementations alike; what a cold start costs is goal 3's.
        args = ["work", "--impl", impl, "--bucket", BUCKET, "--key", WARMUP_KEY, "--key", key]
        if profile is not None and index == 0:
            args += ["--profile", str(profile)]
        runs.append(run_child(args, aws_env(endpoint)))
    return {
        "work_s": median([r["work_s"] for r in runs]),
        "work_s_all": [round(r["work_s"], 3) for r in runs],
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "rows": runs[0]["rows"],
    }


def alternate(endpoint: str, key: str, repeat: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reference and transformer runs interleaved, so that drift in the machine hits both alike."""
    ref: list[dict[str, Any]] = []
    tra: list[dict[str, Any]] = []
    for _ in range(repeat):
        ref.append(big_object_runs(endpoint, key, "reference", 1))
        tra.append(big_object_runs(endpoint, key, "transformer", 1))

    def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "work_s": median([r["work_s"] for r in runs]),
            "work_s_all": [r["work_s_all"][0] for r in runs],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            "rows": runs[0]["rows"],
        }

    return merge(ref), merge(tra)


# --- Goal 3: small files --------------------------------------------------------------------------------


def imports(endpoint: str, repeat: int) -> dict[str, Any]:
    env = aws_env(endpoint)
    run_child(["imports", "--impl", "reference"], env)  # warms the page cache for both
    bare, handler = [], []
    pandas_loaded = False
    for _ in range(repeat):
        bare.append(run_child(["imports", "--impl", "reference"], env)["import_s"])
        result = run_child(["imports", "--impl", "transformer"], env)
        handler.append(result["import_s"])
        pandas_loaded = pandas_loaded or result["pandas_loaded"]
    return {"bare_s": median(bare), "handler_s": median(handler), "pandas_loaded": pandas_loaded}


def small_files(s3: S3Client, endpoint: str, count: int, seed: int) -> dict[str, Any]:
    keys = []
    for key, body in data.small_bodies(count, seed):
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        keys.append(key)
    args = ["small", "--bucket", BUCKET]
    for key in keys:
        args += ["--key", key]
    env = aws_env(endpoint)
    ref = run_child([*args, "--impl", "reference"], env)
    tra = run_child([*args, "--impl", "transformer"], env)
    return {"reference": ref, "transformer": tra}


# --- Goal 5: Parquet vs JSON on DuckDB --------------------------------------------------------------------


def read_bytes() -> int:
    """Bytes this process has read through read()/pread() so far (page cache included)."""
    match = re.search(r"rchar:\s+(\d+)", Path("/proc/self/io").read_text(encoding="utf-8"))
    return int(match[1]) if match else 0


def query_texts() -> dict[str, str]:
    texts = {}
    for name in QUERY_NAMES:
        path = catalog.QUERIES_DIR / f"{name}.sql"
        if path.exists():
            texts[name] = catalog.to_duckdb(catalog.read_sql(path), str(path))
    if not texts:
        raise BenchError(f"none of the sample queries {QUERY_NAMES} exists in sql/queries/")
    return texts


def time_query(con: Any, sql: str, repeat: int) -> tuple[float, int, Any]:
    rows = con.sql(sql).fetchall()  # warm-up, and the answer
    times, read = [], []
    for _ in range(repeat):
        before = read_bytes()
        started = time.perf_counter()
        con.sql(sql).fetchall()
        times.append(time.perf_counter() - started)
        read.append(read_bytes() - before)
    return median(times), int(median(read)), rows


def duckdb_views(con: Any, json_glob: str | None, parquet_source: str | None) -> None:
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE SCHEMA IF NOT EXISTS ecommerce_db")
    if json_glob is not None:
        # The raw JSON read with the processed table's types, the derived columns computed per query.
        columns = (
            "{'transaction_id': 'VARCHAR', 'timestamp': 'TIMESTAMPTZ', 'customer_id': 'VARCHAR', "
            "'product_id': 'VARCHAR', 'product_name': 'VARCHAR', 'category': 'VARCHAR', "
            "'quantity': 'INTEGER', 'price': 'DECIMAL(10,2)', 'total_amount': 'DECIMAL(10,2)'}"
        )
        con.execute(
            'CREATE OR REPLACE VIEW ecommerce_db.transactions AS SELECT transaction_id, "timestamp", '  # noqa: S608
            "customer_id, product_id, product_name, category, quantity, price, total_amount, "
            'CAST(hour("timestamp") AS INTEGER) AS hour, '
            'CAST(isodow("timestamp") - 1 AS INTEGER) AS day_of_week, '
            "CAST(year AS INTEGER) AS year, CAST(month AS INTEGER) AS month, CAST(day AS INTEGER) AS day "
            f"FROM read_json('{json_glob}', format = 'newline_delimited', columns = {columns}, "
            "hive_partitioning = true)"
        )
    if parquet_source is not None:
        con.execute(f"CREATE OR REPLACE VIEW ecommerce_db.transactions AS {parquet_source}")


def parquet_vs_json(
    s3: S3Client, raw: Path, processed_keys: list[str], work: Path, repeat: int
) -> dict[str, Any]:
    base = work / "formats"
    shutil.rmtree(base, ignore_errors=True)
    json_dir = base / "json" / "year=2026" / "month=11" / "day=25"
    json_dir.mkdir(parents=True)
    os.link(raw, json_dir / raw.name) if raw.stat().st_dev == json_dir.stat().st_dev else shutil.copy(
        raw, json_dir
    )
    parquet_dir = base / "parquet"
    for key in processed_keys:
        target = parquet_dir / key.split("processed/transactions/", 1)[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(BUCKET, key, str(target))
    texts = query_texts()
    results: dict[str, Any] = {"queries": {}}
    for fmt in ("json", "parquet"):
        con = duckdb.connect()
        con.execute("SET threads = 2")
        if fmt == "json":
            duckdb_views(con, f"{base / 'json'}/*/*/*/*.json", None)
        else:
            duckdb_views(
                con,
                None,
                f"SELECT * REPLACE (CAST(year AS INTEGER) AS year, CAST(month AS INTEGER) AS month, "  # noqa: S608
                f"CAST(day AS INTEGER) AS day) FROM read_parquet('{parquet_dir}/*/*/*/*.parquet', "
                "hive_partitioning = true)",
            )
        for name, sql in texts.items():
            seconds, nbytes, rows = time_query(con, sql, repeat)
            entry = results["queries"].setdefault(name, {})
            entry[fmt] = {"s": seconds, "bytes_read": nbytes, "answer": [list(map(str, r)) for r in rows]}
        con.close()
    for entry in results["queries"].values():
        entry["same_answer"] = entry["json"]["answer"] == entry["parquet"]["answer"]
        for fmt in ("json", "parquet"):
            del entry[fmt]["answer"]
    results["json_s"] = sum(e["json"]["s"] for e in results["queries"].values())
    results["parquet_s"] = sum(e["parquet"]["s"] for e in results["queries"].values())
    results["json_bytes"] = sum(e["json"]["bytes_read"] for e in results["queries"].values())
    results["parquet_bytes"] = sum(e["parquet"]["bytes_read"] for e in results["queries"].values())
    results["json_file_bytes"] = raw.stat().st_size
    results["parquet_file_bytes"] = sum(p.stat().st_size for p in parquet_dir.rglob("*.parquet"))
    results["all_same_answer"] = all(e["same_answer"] for e in results["queries"].values())
    return results


# --- Goal 6: compaction ---------------------------------------------------------------------------------


@contextlib.contextmanager
def handlers_on(endpoint: str) -> Iterator[tuple[ModuleType, ModuleType, ModuleType]]:
    """The generator, transformer and compactor in this process, pointed at moto's server."""
    saved = {k: os.environ.get(k) for k in aws_env(endpoint)}
    os.environ.update(aws_env(endpoint))
    modules = (load_lambda("generator"), load_lambda("transformer"), load_lambda("compactor"))
    for module in modules:
        module.s3_client.cache_clear()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield modules
    finally:
        for module in modules:
            module.s3_client.cache_clear()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def partition_query_times(endpoint: str, prefix: str, texts: dict[str, str], repeat: int) -> dict[str, Any]:
    """The sample queries over one partition read through S3 (moto), listing included, as Athena does."""
    host = endpoint.removeprefix("http://")
    s3fs = fs.S3FileSystem(
        access_key="testing",
        secret_key="testing",  # noqa: S106 - moto's fake key
        region=REGION,
        endpoint_override=host,
        scheme="http",
    )
    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE SCHEMA IF NOT EXISTS ecommerce_db")
    per_query: dict[str, float] = {}
    answers: dict[str, Any] = {}
    for name, sql in texts.items():
        times = []
        for attempt in range(repeat + 1):
            started = time.perf_counter()
            dataset = ds.dataset(f"{BUCKET}/{prefix}", filesystem=s3fs, format="parquet")
            con.register("partition_rows", dataset)
            con.execute(
                "CREATE OR REPLACE VIEW ecommerce_db.transactions AS SELECT *, 2026 AS year, "  # noqa: S608
                f"{COMPACTION_DAY.month} AS month, {COMPACTION_DAY.day} AS day FROM partition_rows"
            )
            rows = con.sql(sql).fetchall()
            if attempt:
                times.append(time.perf_counter() - started)
            answers[name] = [list(map(str, r)) for r in rows]
        per_query[name] = median(times)
    files = len(ds.dataset(f"{BUCKET}/{prefix}", filesystem=s3fs, format="parquet").files)
    check = con.execute(
        "SELECT COUNT(*), COUNT(DISTINCT transaction_id), SUM(total_amount) FROM ecommerce_db.transactions"
    ).fetchone()
    con.close()
    return {
        "files": files,
        "per_query_s": per_query,
        "total_s": sum(per_query.values()),
        "answers": answers,
        "rows": check[0] if check else 0,
        "distinct_ids": check[1] if check else 0,
        "revenue": str(check[2]) if check else "0",
    }


def local_query_times(
    s3: S3Client, prefix: str, directory: Path, texts: dict[str, str], repeat: int
) -> float:
    """The same queries on a local copy of the partition: the per-file cost without any network."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for item in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []):
        s3.download_file(BUCKET, item["Key"], str(directory / item["Key"].rsplit("/", 1)[1]))
    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE SCHEMA IF NOT EXISTS ecommerce_db")
    con.execute(
        "CREATE VIEW ecommerce_db.transactions AS SELECT *, 2026 AS year, "  # noqa: S608
        f"{COMPACTION_DAY.month} AS month, {COMPACTION_DAY.day} AS day "
        f"FROM read_parquet('{directory}/*.parquet')"
    )
    total = sum(time_query(con, sql, repeat)[0] for sql in texts.values())
    con.close()
    return total


def compaction(endpoint: str, s3: S3Client, seed: int, repeat: int, work: Path) -> dict[str, Any]:
    prefix = (
        f"processed/transactions/year={COMPACTION_DAY:%Y}/month={COMPACTION_DAY:%m}/day={COMPACTION_DAY:%d}/"
    )
    start = datetime(COMPACTION_DAY.year, COMPACTION_DAY.month, COMPACTION_DAY.day, tzinfo=UTC)
    ticks = [start + timedelta(minutes=5 * i) for i in range(1, 289)]
    with handlers_on(endpoint) as (generator, transformer, compactor):
        config = generator.Config(bucket=BUCKET, transactions_per_run=1, seed=seed)
        for tick in ticks:
            key, body, _ = generator.generate_run(config, tick)
            s3.put_object(Bucket=BUCKET, Key=key, Body=body)
            transformer.lambda_handler(s3_event(BUCKET, key), None)
        texts = query_texts()
        before = partition_query_times(endpoint, prefix, texts, repeat)
        before["local_s"] = local_query_times(s3, prefix, work / "compaction-before", texts, repeat)
        started = time.perf_counter()
        event = {
            "date": COMPACTION_DAY.isoformat(),
            "time": f"{COMPACTION_DAY + timedelta(days=1)}T03:00:00Z",
        }
        run = compactor.lambda_handler(event, None)
        compact_s = time.perf_counter() - started
        after = partition_query_times(endpoint, prefix, texts, repeat)
        after["local_s"] = local_query_times(s3, prefix, work / "compaction-after", texts, repeat)
        rerun = compactor.lambda_handler(event, None)
    same = all(before["answers"][n] == after["answers"][n] for n in texts)
    for side in (before, after):
        del side["answers"]
    return {
        "before": before,
        "after": after,
        "compactor_s": compact_s,
        "compactor_result": run["days"][0],
        "rerun_action": rerun["days"][0]["action"],
        "same_answers": same,
        "speedup": before["total_s"] / after["total_s"] if after["total_s"] else 0.0,
        "local_speedup": before["local_s"] / after["local_s"] if after["local_s"] else 0.0,
    }


# --- Table ----------------------------------------------------------------------------------------------


def figures(results: dict[str, Any], args: argparse.Namespace) -> list[Figure]:
    out: list[Figure] = []
    big = results.get("big_object")
    if big:
        ref, tra = big["reference"], big["transformer"]
        ratio = tra["work_s"] / ref["work_s"]
        out.append(
            Figure(
                "1",
                f"throughput, {args.records:,} records ({big['raw_mib']:.0f} MiB) via S3",
                f"transformer {tra['work_s']:.2f} s vs reference {ref['work_s']:.2f} s = {ratio:.2f}x",
                "<= 1.25x",
                ratio <= 1.25,
                ratio,
            )
        )
        out.append(
            Figure(
                "2",
                f"peak RSS, whole transformer process, {args.records:,} records",
                f"{tra['peak_rss_mib']:.0f} MiB (reference {ref['peak_rss_mib']:.0f} MiB)",
                "<= 256 MiB",
                tra["peak_rss_mib"] <= 256,
                tra["peak_rss_mib"],
            )
        )
    huge = results.get("huge_object")
    if huge and big:
        growth = huge["peak_rss_mib"] / big["transformer"]["peak_rss_mib"]
        out.append(
            Figure(
                "2",
                f"peak RSS at {args.big_records:,} records ({huge['raw_mib']:.0f} MiB), "
                f"{huge['work_s']:.1f} s",
                f"{huge['peak_rss_mib']:.0f} MiB = {growth:.2f}x the {args.records:,}-record peak",
                "<= 256 MiB and <= 1.2x (flat)",
                huge["peak_rss_mib"] <= 256 and growth <= 1.2,
                huge["peak_rss_mib"],
            )
        )
    imp = results.get("imports")
    if imp:
        ratio = imp["handler_s"] / imp["bare_s"]
        pandas = ", pandas imported" if imp["pandas_loaded"] else ", no pandas"
        out.append(
            Figure(
                "3",
                "cold import of the handler + S3 client",
                f"{imp['handler_s'] * 1000:.0f} ms vs bare boto3+pyarrow {imp['bare_s'] * 1000:.0f} ms = "
                f"{ratio:.2f}x{pandas}",
                "<= 1.25x",
                ratio <= 1.25,
                ratio,
            )
        )
    small = results.get("small_files")
    if small:
        tra, ref = small["transformer"]["median_s"], small["reference"]["median_s"]
        ratio = tra / ref
        out.append(
            Figure(
                "3",
                f"warm invocation, 1-3 record object (median of {small['transformer']['n']})",
                f"{tra * 1000:.1f} ms vs reference {ref * 1000:.1f} ms = {ratio:.2f}x",
                "<= 1.25x",
                ratio <= 1.25,
                ratio,
            )
        )
    if small:
        tra_first = small["transformer"]["first_s"]
        ref_first = small["reference"]["first_s"]
        pandas = small["transformer"].get("pandas_loaded_at_end")
        out.append(
            Figure(
                "3",
                "first invocation after the cold import, 1-3 record object",
                f"{tra_first * 1000:.0f} ms vs reference {ref_first * 1000:.0f} ms = "
                f"{tra_first / ref_first:.2f}x"
                + ("; pandas imported by pyarrow on first use" if pandas else ""),
                "report (part of every cold start)",
                None,
                tra_first / ref_first,
            )
        )
    bad = results.get("bad_object")
    if bad and big:
        ratio = bad["work_s"] / big["transformer"]["work_s"]
        out.append(
            Figure(
                "4",
                "1% malformed lines vs clean file",
                f"{bad['work_s']:.2f} s vs {big['transformer']['work_s']:.2f} s = {ratio:.2f}x "
                f"(peak {bad['peak_rss_mib']:.0f} MiB)",
                "<= 2x",
                ratio <= 2,
                ratio,
            )
        )
    fmt = results.get("parquet_vs_json")
    if fmt:
        speed = fmt["json_s"] / fmt["parquet_s"]
        less = fmt["json_bytes"] / max(fmt["parquet_bytes"], 1)
        out.append(
            Figure(
                "5",
                f"{len(fmt['queries'])} sample queries on DuckDB, raw JSON vs processed Parquet",
                f"{fmt['json_s']:.2f} s vs {fmt['parquet_s']:.2f} s = {speed:.1f}x faster; bytes read "
                f"{fmt['json_bytes'] / MIB:.0f} vs {fmt['parquet_bytes'] / MIB:.0f} MiB = {less:.0f}x less"
                + ("" if fmt["all_same_answer"] else "; ANSWERS DIFFER"),
                "report (seed claims 10x)",
                None if fmt["all_same_answer"] else False,
                speed,
            )
        )
    comp = results.get("compaction")
    if comp:
        b, a = comp["before"], comp["after"]
        exact = (
            comp["same_answers"]
            and b["rows"] == a["rows"] == a["distinct_ids"]
            and b["revenue"] == a["revenue"]
        )
        out.append(
            Figure(
                "6",
                f"a day of {b['files']} small files vs compacted ({a['files']} file), queries via S3",
                f"{b['total_s']:.2f} s vs {a['total_s']:.2f} s = {comp['speedup']:.1f}x faster "
                f"(local disk: {b['local_s']:.2f} s vs {a['local_s']:.2f} s = {comp['local_speedup']:.1f}x); "
                f"{a['rows']} rows {'identical' if exact else 'DIFFER'}; "
                f"compactor {comp['compactor_s']:.2f} s, "
                f"re-run {comp['rerun_action']}",
                "speed-up shown, no row lost or doubled, re-run no-op",
                exact and a["files"] == 1 and comp["rerun_action"] == "noop" and comp["speedup"] > 1,
                comp["speedup"],
            )
        )
    return out


def render(rows: list[Figure]) -> str:
    header = ("goal", "figure", "measured", "target", "result")
    body = [
        (
            f.goal_id,
            f.figure,
            f.measured,
            f.goal,
            "report" if f.passed is None else "PASS" if f.passed else "FAIL",
        )
        for f in rows
    ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    rows_text = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in body]
    return "\n".join([line, rule, *rows_text])


# --- Main -----------------------------------------------------------------------------------------------


def use_candidate(path: Path | None) -> None:
    """Children (and the in-process handlers) load this transformer file instead of the repository's."""
    if path is None:
        return
    if not path.is_file():
        raise BenchError(f"--transformer {path}: no such file")
    os.environ["BENCH_TRANSFORMER_PATH"] = str(path.resolve())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="records in the big object")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of each timed run (median)")
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--quick", action="store_true", help="small smoke run: 50,000 records, 1 repetition")
    parser.add_argument("--big", action="store_true", help="also the flat-memory run at --big-records")
    parser.add_argument("--big-records", type=int, default=10_000_000)
    parser.add_argument("--profile", action="store_true", help="pyinstrument profiles in bench/out/")
    parser.add_argument("--only", default="1,2,3,4,5,6", help="comma-separated goals to run")
    parser.add_argument("--out", type=Path, default=OUT / "results.json")
    parser.add_argument(
        "--transformer", type=Path, default=None, help="measure this candidate transformer file instead"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.records = min(args.records, 50_000)
        args.repeat = 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    goals = set(args.only.split(","))
    use_candidate(args.transformer)
    work = OUT / "data"
    work.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict[str, Any] = {
        "command": command.strip(),
        "machine": machine(),
        "started": f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}",
    }
    workers = os.cpu_count() or 1
    log(f"machine: {results['machine']['cpu']}, {workers} cores, {results['machine']['memory']}")
    load = os.getloadavg()[0]
    results["load_average_1min_at_start"] = load
    if load > 0.5 * workers:
        log(f"warning: load average {load:.1f} on {workers} cores: other work here skews the figures")
    with moto_server() as endpoint:
        s3 = s3_for(endpoint)
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key=WARMUP_KEY, Body=data.small_bodies(1, args.seed)[0][1])
        raw = data.clean_file(work, args.records, args.seed, workers)
        raw_mib = raw.stat().st_size / MIB
        key = f"{BIG_KEY_DAY}transactions-20261125T120000Z-{args.records:08x}.json"
        if goals & {"1", "2", "4", "5"}:
            log(f"uploading {raw.name} ({raw_mib:.0f} MiB)")
            upload(s3, raw, key)
        if goals & {"1", "2", "5"}:
            log(f"goals 1-2: reference and transformer on {args.records:,} records, {args.repeat}x each")
            ref, tra = alternate(endpoint, key, args.repeat)
            results["big_object"] = {"reference": ref, "transformer": tra, "raw_mib": raw_mib}
            if ref["rows"] != tra["rows"]:
                raise BenchError(f"reference wrote {ref['rows']} rows, the transformer {tra['rows']}")
        if args.profile:
            profile = OUT / "profile-transformer.txt"
            big_object_runs(endpoint, key, "transformer", 1, profile)
            log(f"profile written to {profile}")
        if "4" in goals:
            bad = data.malformed_file(raw)
            bad_key = f"{BIG_KEY_DAY}transactions-20261125T130000Z-{args.records:08x}.json"
            upload(s3, bad, bad_key)
            log("goal 4: transformer on the file with 1% malformed lines")
            results["bad_object"] = big_object_runs(endpoint, bad_key, "transformer", args.repeat)
            if "big_object" not in results:
                results["big_object"] = {
                    "transformer": big_object_runs(endpoint, key, "transformer", args.repeat),
                    "raw_mib": raw_mib,
                }
            if args.profile:
                big_object_runs(endpoint, bad_key, "transformer", 1, OUT / "profile-transformer-bad.txt")
        if args.big and "2" in goals:
            huge = data.clean_file(work, args.big_records, args.seed, workers)
            huge_key = f"{BIG_KEY_DAY}transactions-20261125T140000Z-{args.big_records:08x}.json"
            log(f"goal 2 (flat): uploading {huge.name} ({huge.stat().st_size / MIB:.0f} MiB)")
            upload(s3, huge, huge_key)
            results["huge_object"] = {
                **big_object_runs(endpoint, huge_key, "transformer", 1),
                "raw_mib": huge.stat().st_size / MIB,
            }
            s3.delete_object(Bucket=BUCKET, Key=huge_key)
        if "3" in goals:
            log("goal 3: cold imports and warm small-file invocations")
            results["imports"] = imports(endpoint, 3 if args.quick else 7)
            results["small_files"] = small_files(s3, endpoint, 12 if args.quick else 41, args.seed)
        if "5" in goals:
            log("goal 5: sample queries on DuckDB, raw JSON vs processed Parquet")
            listing = s3.list_objects_v2(
                Bucket=BUCKET, Prefix="processed/transactions/year=2026/month=11/day=25/"
            )
            stem = key.rsplit("/", 1)[1].removesuffix(".json")
            processed = [o["Key"] for o in listing.get("Contents", []) if stem in o["Key"]]
            results["parquet_vs_json"] = parquet_vs_json(s3, raw, processed, work, args.repeat)
        if "6" in goals:
            log("goal 6: 288 small files through the real handlers, then the compactor")
            results["compaction"] = compaction(endpoint, s3, args.seed, args.repeat, work)
    results["load_average_1min_at_end"] = os.getloadavg()[0]
    rows = figures(results, args)
    results["figures"] = [asdict(f) for f in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    m = results["machine"]
    print(f"\nMachine: {m['cpu']}, {m['cores']} cores, {m['memory']}, Python {m['python']}", end="")
    print(f", pyarrow {m.get('pyarrow')}")
    print(f"Command: {results['command']}")
    print(
        f"Load average (1 min) at start {results['load_average_1min_at_start']:.2f}, "
        f"at end {results['load_average_1min_at_end']:.2f}\n"
    )
    print(render(rows))
    print(f"\nJSON: {args.out}")
    return 0 if all(f.passed is not False for f in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
