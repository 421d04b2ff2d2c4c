"""Two figures on what the processed table buys, apart from the transformer's speed: the sample queries on
the raw JSON against the processed Parquet, and a day of small files against the compacted one.

Both run on DuckDB on this machine (moto's S3 server for the files read through S3); Athena is not here.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow.dataset as ds
from pyarrow import fs

from bench._child import s3_event
from bench.harness import BUCKET, REGION, TMP_ROOT, BenchError, aws_env, load_lambda, median
from local import catalog

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

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


# --- A day of small files against the compacted one ------------------------------------------------


@contextlib.contextmanager
def handlers_on(endpoint: str) -> Iterator[tuple[ModuleType, ModuleType, ModuleType]]:
    """The generator, transformer and compactor in this process, pointed at moto's server, with a /tmp of
    their own as in a Lambda container: the compactor removes every compactor directory it finds in /tmp
    (one a killed invocation left), which on a shared machine may be another process's live one."""
    saved = {k: os.environ.get(k) for k in aws_env(endpoint)}
    os.environ.update(aws_env(endpoint))
    TMP_ROOT.mkdir(parents=True, exist_ok=True)
    saved_tempdir, tempfile.tempdir = tempfile.tempdir, tempfile.mkdtemp(prefix="handlers-", dir=TMP_ROOT)
    modules = (load_lambda("generator"), load_lambda("transformer"), load_lambda("compactor"))
    for module in modules:
        module.s3_client.cache_clear()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield modules
    finally:
        for module in modules:
            module.s3_client.cache_clear()
        shutil.rmtree(tempfile.tempdir, ignore_errors=True)
        tempfile.tempdir = saved_tempdir
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
