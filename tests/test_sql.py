"""Athena SQL in sql/: it parses as Athena SQL, the DDL matches the contract and the Parquet the transformer
writes, and every query, run on DuckDB over data made by the real handlers, returns the numbers an
independent pandas computation over the same files gives."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlglot
from moto import mock_aws
from sqlglot import exp

from local import catalog
from local.events import s3_put_event, scheduled_event
from local.pipeline import download_bucket
from tests.conftest import REGION, load_lambda

BUCKET = "sql-test-bucket"
ALL_SQL = sorted(catalog.SQL_DIR.rglob("*.sql"))
QUERIES = {p.stem: p for p in catalog.query_files()}

# docs/contract.md, "Processed table": column -> Athena type, in order.
CONTRACT_COLUMNS = {
    "transaction_id": "string",
    "timestamp": "timestamp",
    "customer_id": "string",
    "product_id": "string",
    "product_name": "string",
    "category": "string",
    "quantity": "int",
    "price": "decimal(10,2)",
    "total_amount": "decimal(10,2)",
    "hour": "int",
    "day_of_week": "int",
}
CONTRACT_PARQUET = {
    "transaction_id": pa.string(),
    "timestamp": pa.timestamp("ms", tz="UTC"),
    "customer_id": pa.string(),
    "product_id": pa.string(),
    "product_name": pa.string(),
    "category": pa.string(),
    "quantity": pa.int32(),
    "price": pa.decimal128(10, 2),
    "total_amount": pa.decimal128(10, 2),
    "hour": pa.int32(),
    "day_of_week": pa.int32(),
}
PARQUET_TO_ATHENA = {
    pa.string(): "string",
    pa.timestamp("ms", tz="UTC"): "timestamp",
    pa.int32(): "int",
    pa.decimal128(10, 2): "decimal(10,2)",
}
QUARANTINE_FIELDS = ["source_key", "line", "reason", "detail", "record"]
PARTITIONS = {"year": "int", "month": "int", "day": "int"}

# Ticks that cross midnight (rows of one raw file land in two partitions) and a second, later day.
TICKS = [datetime(2026, 11, 24, 23, 0, tzinfo=UTC) + timedelta(minutes=5 * i) for i in range(25)] + [
    datetime(2026, 11, 27, 10, 0, tzinfo=UTC) + timedelta(minutes=5 * i) for i in range(7)
]
BAD_KEY = "raw/year=2026/month=11/day=25/hand upload 20261125T003000Z.json"


def _bad_lines(valid: dict[str, Any], earlier: dict[str, Any]) -> str:
    """One line per quarantine reason, one good line, and a copy of a record from another file."""
    other = dict(valid, transaction_id="5f0c1b2a-9d8e-4c7b-a6f5-e4d3c2b1a098")
    lines = [
        json.dumps(valid),
        '{"transaction_id": "broken',
        "[1, 2, 3]",
        json.dumps({k: v for k, v in other.items() if k != "customer_id"}),
        json.dumps(dict(other, transaction_id="0b6f6c1e-1111-4c1a-9d1e-aaaaaaaaaaa1", quantity="two")),
        json.dumps(dict(other, transaction_id="0b6f6c1e-2222-4c1a-9d1e-aaaaaaaaaaa2", quantity=0)),
        json.dumps(dict(other, transaction_id="0b6f6c1e-3333-4c1a-9d1e-aaaaaaaaaaa3", price=-24.99)),
        json.dumps(dict(other, transaction_id="0b6f6c1e-4444-4c1a-9d1e-aaaaaaaaaaa4", total_amount=50.0)),
        json.dumps(dict(other, transaction_id="0b6f6c1e-5555-4c1a-9d1e-aaaaaaaaaaa5", timestamp="yesterday")),
        json.dumps(valid),
        "",
        json.dumps(earlier),
    ]
    return "\n".join(lines) + "\n"


def _invoke_transformer(transformer: Any, s3: Any, key: str, at: datetime) -> None:
    head = s3.head_object(Bucket=BUCKET, Key=key)
    event = s3_put_event(
        BUCKET,
        key=key,
        size=head["ContentLength"],
        etag=head["ETag"],
        sequencer="0055AED6DCD90281E5",
        event_time=at,
    )
    transformer.lambda_handler(event, None)


@pytest.fixture(scope="module")
def bucket_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the real generator and transformer over moto once, keep only the downloaded bucket."""
    generator = load_lambda("generator")
    transformer = load_lambda("transformer")
    dest = tmp_path_factory.mktemp("bucket")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            mp.delenv(var, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.setenv("BUCKET_NAME", BUCKET)
        mp.setenv("TRANSACTIONS_PER_RUN", "6")
        mp.setenv("RANDOM_SEED", "20261125")
        generator.s3_client.cache_clear()
        transformer.s3_client.cache_clear()
        try:
            with mock_aws():
                s3 = boto3.client("s3", region_name=REGION)
                s3.create_bucket(Bucket=BUCKET)
                first_key = ""
                for tick in TICKS:
                    key = generator.lambda_handler(scheduled_event(tick), None)["key"]
                    first_key = first_key or key
                    _invoke_transformer(transformer, s3, key, tick)
                body = s3.get_object(Bucket=BUCKET, Key=first_key)["Body"].read().decode()
                earlier = json.loads(body.splitlines()[0])
                valid = dict(earlier, transaction_id="9a8b7c6d-0000-4e5f-8a9b-0c1d2e3f4a5b")
                valid["timestamp"] = "2026-11-25T00:28:00.000Z"
                s3.put_object(Bucket=BUCKET, Key=BAD_KEY, Body=_bad_lines(valid, earlier).encode())
                _invoke_transformer(transformer, s3, BAD_KEY, TICKS[6])
                download_bucket(s3, BUCKET, dest)
        finally:
            generator.s3_client.cache_clear()
            transformer.s3_client.cache_clear()
    return dest


@pytest.fixture(scope="module")
def con(bucket_copy: Path) -> Any:
    return catalog.connect(bucket_copy, BUCKET)


# --- An independent reading of the same files: pyarrow and plain Python, no SQL. ---------------------


@dataclass
class Files:
    processed: pd.DataFrame  # one row per processed row, with the file's stem and partition
    raw_lines: pd.DataFrame  # one row per non-blank raw line: stem, date of the raw partition
    quarantine: pd.DataFrame


def _partition(relative: str) -> tuple[int, int, int]:
    parts = dict(p.split("=", 1) for p in relative.split("/") if "=" in p)
    return int(parts["year"]), int(parts["month"]), int(parts["day"])


@pytest.fixture(scope="module")
def files(bucket_copy: Path) -> Files:
    frames = []
    for path in sorted((bucket_copy / "processed").rglob("*.parquet")):
        frame = pq.read_table(path).to_pandas()
        year, month, day = _partition(path.relative_to(bucket_copy).as_posix())
        frame = frame.assign(year=year, month=month, day=day, stem=path.stem, file=str(path))
        frames.append(frame)
    processed = pd.concat(frames, ignore_index=True)
    raw_rows = []
    for path in sorted((bucket_copy / "raw").rglob("*.json")):
        year, month, day = _partition(path.relative_to(bucket_copy).as_posix())
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                raw_rows.append({"year": year, "month": month, "day": day, "stem": path.stem, "line": line})
    quarantine_rows = []
    for path in sorted((bucket_copy / "quarantine").rglob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                quarantine_rows.append(json.loads(line))
    return Files(processed, pd.DataFrame(raw_rows), pd.DataFrame(quarantine_rows))


def _rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Result rows as plain Python values (pandas' NA, numpy ints and floats unwrapped)."""
    rows = []
    for record in frame.to_dict(orient="records"):
        row: dict[str, Any] = {}
        for key, value in record.items():
            if value is pd.NA or (isinstance(value, float) and math.isnan(value)):
                row[key] = None
            elif hasattr(value, "item"):
                row[key] = value.item()
            elif isinstance(value, pd.Timestamp):
                row[key] = value.to_pydatetime()
            else:
                row[key] = value
        rows.append(row)
    return rows


def assert_rows_equal(actual: pd.DataFrame, expected: list[dict[str, Any]], close: dict[str, float]) -> None:
    """Same columns, same rows in the same order; exact except the columns in `close` (within tolerance)."""
    got = _rows(actual)
    if expected:
        assert list(actual.columns) == list(expected[0])
    assert len(got) == len(expected), f"{len(got)} rows, expected {len(expected)}"
    for index, (g, e) in enumerate(zip(got, expected, strict=True)):
        for column, want in e.items():
            have = g[column]
            if column in close:
                assert abs(float(have) - float(want)) <= close[column], (
                    f"row {index} {column}: {have} != {want}"
                )
            else:
                assert have == want, f"row {index} {column}: {have!r} != {want!r}"


def _mean(values: pd.Series) -> Decimal:
    total = sum(values, Decimal(0))
    return total / len(values)


HALF_CENT = 0.005 + 1e-9  # a 2-decimal rounding of the exact mean, whatever the rounding mode


# --- Parsing ------------------------------------------------------------------------------------------


def test_the_sql_library_has_the_ddl_and_every_query_the_issue_asks_for():
    assert [p.name for p in catalog.ddl_files()] == [
        "01_create_database.sql",
        "02_create_table_transactions.sql",
        "03_create_table_raw_transactions.sql",
        "04_create_table_quarantine.sql",
    ]
    assert set(QUERIES) == {
        "sales_by_category",
        "revenue_by_hour",
        "daily_revenue",
        "top_products_by_revenue",
        "top_products_by_units",
        "revenue_by_day_of_week",
        "basket_and_repeat_customers",
        "dq_duplicate_transaction_ids",
        "dq_quarantine_by_reason",
        "dq_reconciliation_by_day",
        "dq_latest_partition",
    }


@pytest.mark.parametrize("path", ALL_SQL, ids=lambda p: p.name)
def test_every_sql_file_is_one_statement_of_athena_sql(path: Path):
    statements = sqlglot.parse(path.read_text(encoding="utf-8"), read="athena")
    assert len([s for s in statements if s is not None]) == 1


@pytest.mark.parametrize("path", ALL_SQL, ids=lambda p: p.name)
def test_every_sql_file_opens_with_a_comment_saying_what_it_is_for(path: Path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("-- ")
    if path.parent.name == "queries":
        assert first.startswith(("-- Question: ", "-- Question (data quality): "))


def test_a_file_that_is_not_athena_sql_is_reported_with_its_name():
    with pytest.raises(catalog.SqlFileError, match=r"broken\.sql: not valid Athena SQL"):
        catalog.parse_athena("SELECT category, FROM WHERE ORDER", "broken.sql")
    with pytest.raises(catalog.SqlFileError, match="exactly one statement"):
        catalog.parse_athena("SELECT 1; SELECT 2", "two.sql")


@pytest.mark.parametrize("path", catalog.query_files(), ids=lambda p: p.name)
def test_queries_read_only_the_tables_the_ddl_creates(path: Path):
    tables = {f"{t.database}.{t.name}" for t in catalog.table_defs()}
    statement = catalog.parse_athena(path.read_text(encoding="utf-8"), path.name)
    ctes = {c.alias for c in statement.find_all(exp.CTE)}
    used = {f"{t.db}.{t.name}" if t.db else t.name for t in statement.find_all(exp.Table)}
    assert used - ctes <= tables
    assert used & tables


# --- DDL ----------------------------------------------------------------------------------------------


def _table(name: str) -> catalog.TableDef:
    return next(t for t in catalog.table_defs() if t.name == name)


def test_transactions_ddl_has_the_contract_columns_and_types_in_order():
    table = _table("transactions")
    assert (table.database, table.storage) == ("ecommerce_db", "parquet")
    assert {c.name: c.athena_type for c in table.columns} == CONTRACT_COLUMNS
    assert [c.name for c in table.columns] == list(CONTRACT_COLUMNS)
    assert {c.name: c.athena_type for c in table.partitions} == PARTITIONS


def test_transactions_ddl_matches_the_transformers_schema_and_the_parquet_it_wrote(bucket_copy: Path):
    table = _table("transactions")
    declared = {c.name: c.athena_type for c in table.columns}
    transformer_schema = load_lambda("transformer").PROCESSED_SCHEMA
    assert {f.name: f.type for f in transformer_schema} == CONTRACT_PARQUET
    written = list((bucket_copy / "processed").rglob("*.parquet"))
    assert len(written) > len(TICKS)  # one per raw file, two for those crossing midnight
    for path in written:
        schema = pq.read_schema(path)
        assert [f.name for f in schema] == list(declared)  # no year/month/day inside the files
        assert {f.name: PARQUET_TO_ATHENA[f.type] for f in schema} == declared


def test_raw_ddl_has_the_generators_fields_and_quarantine_ddl_the_contracts_line():
    raw = _table("raw_transactions")
    assert [c.name for c in raw.columns] == list(load_lambda("generator").RAW_FIELDS)
    assert raw.storage == "jsonl"
    quarantine = _table("quarantine")
    assert [c.name for c in quarantine.columns] == QUARANTINE_FIELDS
    assert {c.name: c.athena_type for c in quarantine.columns}["line"] == "int"
    for table in (raw, quarantine):
        assert {c.name: c.athena_type for c in table.partitions} == PARTITIONS


def test_quarantine_lines_written_by_the_transformer_have_exactly_the_ddls_columns(files: Files):
    assert not files.quarantine.empty
    assert list(files.quarantine.columns) == QUARANTINE_FIELDS


@pytest.mark.parametrize("name", ["transactions", "raw_transactions", "quarantine"])
def test_partition_projection_covers_the_keys_the_handlers_write(name: str, bucket_copy: Path):
    path = next(p for p in catalog.ddl_files() if name in p.name and "create_table" in p.name)
    statement = catalog.parse_athena(path.read_text(encoding="utf-8"), path.name)
    props = {
        p.name: p.text("value")
        for p in statement.find_all(exp.Property)
        if isinstance(p.this, exp.Literal) and p.this.is_string
    }
    table = _table(name)
    assert props["projection.enabled"] == "true"
    for part in ("year", "month", "day"):
        assert props[f"projection.{part}.type"] == "integer"
    assert props["projection.month.digits"] == props["projection.day.digits"] == "2"
    assert props["projection.month.range"] == "1,12"
    assert props["projection.day.range"] == "1,31"
    template = props["storage.location.template"]
    assert template == table.location + "year=${year}/month=${month}/day=${day}"
    assert table.location.startswith(f"s3://{catalog.BUCKET_PLACEHOLDER}/")
    low, high = (int(v) for v in props["projection.year.range"].split(","))
    # Every folder the handlers wrote is one the template produces.
    for key in (p.relative_to(bucket_copy).as_posix() for p in bucket_copy.rglob("*") if p.is_file()):
        if key.startswith(table.prefix()):
            year, month, day = _partition(key)
            assert low <= year <= high
            folder = template.replace("${year}", str(year))
            folder = folder.replace("${month}", f"{month:02d}").replace("${day}", f"{day:02d}")
            assert f"s3://{catalog.BUCKET_PLACEHOLDER}/{key}".startswith(folder + "/")


def test_the_bucket_placeholder_is_the_only_bucket_named_in_the_sql():
    for path in ALL_SQL:
        text = path.read_text(encoding="utf-8")
        for url in [w for w in text.replace("'", " ").split() if w.startswith("s3://")]:
            assert url.startswith(f"s3://{catalog.BUCKET_PLACEHOLDER}/"), (path.name, url)
    assert "s3://my-bucket/" in catalog.read_sql(catalog.ddl_files()[1], "my-bucket")


# --- The local catalog behaves as Athena's tables --------------------------------------------------


def test_local_tables_have_the_ddl_columns_partitions_and_path(con: Any):
    for table in catalog.table_defs():
        described = con.sql(f"DESCRIBE {table.database}.{table.name}").fetchall()
        names = [row[0] for row in described]
        assert names == [c.name for c in table.columns] + ["year", "month", "day", "$path"]


def test_raw_table_has_one_row_per_raw_line_even_when_the_line_is_not_json(con: Any, files: Files):
    count = con.execute("SELECT COUNT(*) FROM ecommerce_db.raw_transactions").fetchall()[0][0]
    assert count == len(files.raw_lines)
    nulls = con.execute(
        "SELECT COUNT(*) FROM ecommerce_db.raw_transactions WHERE transaction_id IS NULL"
    ).fetchall()[0][0]
    assert nulls == 2  # the malformed line and the array


def test_the_dataset_exercises_quarantine_duplicates_and_midnight(files: Files):
    reasons = Counter(files.quarantine["reason"])
    assert set(reasons) >= {
        "malformed_json",
        "not_an_object",
        "missing_field",
        "invalid_type",
        "invalid_quantity",
        "invalid_price",
        "total_mismatch",
        "invalid_timestamp",
        "duplicate_transaction_id",
    }
    days = files.processed[["year", "month", "day"]].drop_duplicates()
    assert len(days) == 3
    assert files.processed.groupby("stem")["day"].nunique().max() == 2  # a file that crossed midnight


# --- Every query against an independent computation -------------------------------------------------


def test_sales_by_category(con: Any, files: Files):
    p = files.processed
    expected = [
        {
            "category": category,
            "transaction_count": len(group),
            "total_sales": sum(group["total_amount"], Decimal(0)),
            "avg_order": _mean(group["total_amount"]),
        }
        for category, group in p.groupby("category")
    ]
    expected.sort(key=lambda r: (-r["total_sales"], r["category"]))
    actual = catalog.run_query(con, QUERIES["sales_by_category"])
    assert_rows_equal(actual, expected, close={"avg_order": HALF_CENT})


def test_revenue_by_hour(con: Any, files: Files):
    p = files.processed
    hours = p["timestamp"].dt.hour  # from the timestamp itself, not the hour column
    expected = [
        {"hour": int(hour), "orders": len(group), "revenue": sum(group["total_amount"], Decimal(0))}
        for hour, group in p.groupby(hours)
    ]
    assert len(expected) >= 4
    assert_rows_equal(catalog.run_query(con, QUERIES["revenue_by_hour"]), expected, close={})


def test_daily_revenue(con: Any, files: Files):
    p = files.processed
    dates = p["timestamp"].dt.date  # the UTC date of each row, independent of the partition path
    expected = [
        {
            "year": d.year,
            "month": d.month,
            "day": d.day,
            "orders": len(group),
            "revenue": sum(group["total_amount"], Decimal(0)),
            "units": int(group["quantity"].sum()),
        }
        for d, group in p.groupby(dates)
    ]
    assert len(expected) == 3
    assert_rows_equal(catalog.run_query(con, QUERIES["daily_revenue"]), expected, close={})


def _products(p: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {
            "product_id": pid,
            "product_name": group["product_name"].iloc[0],
            "category": group["category"].iloc[0],
            "revenue": sum(group["total_amount"], Decimal(0)),
            "units": int(group["quantity"].sum()),
            "orders": len(group),
        }
        for pid, group in p.groupby("product_id")
    ]


def test_top_products_by_revenue(con: Any, files: Files):
    products = sorted(_products(files.processed), key=lambda r: (-r["revenue"], r["product_id"]))[:10]
    expected = [
        {k: r[k] for k in ("product_id", "product_name", "category", "revenue", "units", "orders")}
        for r in products
    ]
    assert_rows_equal(catalog.run_query(con, QUERIES["top_products_by_revenue"]), expected, close={})


def test_top_products_by_units(con: Any, files: Files):
    products = sorted(_products(files.processed), key=lambda r: (-r["units"], r["product_id"]))[:10]
    expected = [
        {k: r[k] for k in ("product_id", "product_name", "category", "units", "revenue", "orders")}
        for r in products
    ]
    assert_rows_equal(catalog.run_query(con, QUERIES["top_products_by_units"]), expected, close={})


def test_revenue_by_day_of_week(con: Any, files: Files):
    p = files.processed
    names = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
    weekday = p["timestamp"].dt.dayofweek  # pandas: Monday = 0, as the contract
    expected = [
        {
            "day_of_week": int(dow),
            "day_name": names[int(dow)],
            "orders": len(group),
            "revenue": sum(group["total_amount"], Decimal(0)),
        }
        for dow, group in p.groupby(weekday)
    ]
    assert [r["day_name"] for r in expected] == ["Tuesday", "Wednesday", "Friday"]
    assert_rows_equal(catalog.run_query(con, QUERIES["revenue_by_day_of_week"]), expected, close={})


def test_basket_and_repeat_customers(con: Any, files: Files):
    p = files.processed
    per_customer = p.groupby("customer_id").size()
    repeat = int((per_customer > 1).sum())
    expected = [
        {
            "orders": len(p),
            "avg_basket_value": _mean(p["total_amount"]),
            "avg_units_per_order": p["quantity"].mean(),
            "customers": len(per_customer),
            "repeat_customers": repeat,
            "repeat_customer_rate": repeat / len(per_customer),
        }
    ]
    assert 0 < repeat < len(per_customer)
    actual = catalog.run_query(con, QUERIES["basket_and_repeat_customers"])
    assert_rows_equal(
        actual,
        expected,
        close={
            "avg_basket_value": HALF_CENT,
            "avg_units_per_order": HALF_CENT,
            "repeat_customer_rate": 0.00005 + 1e-12,
        },
    )


def test_duplicate_transaction_ids_across_files(con: Any, files: Files):
    p = files.processed
    expected = []
    for tid, group in p.groupby("transaction_id"):
        if len(group) > 1:
            expected.append(
                {
                    "transaction_id": tid,
                    "copies": len(group),
                    "files": group["file"].nunique(),
                    "first_timestamp": group["timestamp"].min().tz_localize(None).to_pydatetime(),
                    "last_timestamp": group["timestamp"].max().tz_localize(None).to_pydatetime(),
                }
            )
    expected.sort(key=lambda r: (-r["copies"], r["transaction_id"]))
    assert len(expected) == 1  # the hand-uploaded copy of the first generated record
    assert expected[0]["files"] == 2
    assert_rows_equal(catalog.run_query(con, QUERIES["dq_duplicate_transaction_ids"]), expected, close={})


def test_quarantine_counts_by_reason(con: Any, files: Files):
    q = files.quarantine
    expected = [
        {"reason": reason, "records": len(group), "files": group["source_key"].nunique()}
        for reason, group in q.groupby("reason")
    ]
    expected.sort(key=lambda r: (-r["records"], r["reason"]))
    assert_rows_equal(catalog.run_query(con, QUERIES["dq_quarantine_by_reason"]), expected, close={})


def _expected_reconciliation(files: Files) -> list[dict[str, Any]]:
    """raw lines per raw day; processed rows matched to them by transaction id, one row per line at most."""
    copies = Counter(files.processed["transaction_id"])
    raw = files.raw_lines.assign(
        transaction_id=[_raw_id(line) for line in files.raw_lines["line"]],
        key=[
            f"raw/year={y}/month={m:02d}/day={d:02d}/{s}.json"
            for y, m, d, s in zip(
                files.raw_lines["year"],
                files.raw_lines["month"],
                files.raw_lines["day"],
                files.raw_lines["stem"],
                strict=True,
            )
        ],
    )
    quarantine_keys = set(files.quarantine["source_key"])
    expected = []
    for (year, month, day), group in raw.groupby(["year", "month", "day"]):
        lines_per_id = Counter(t for t in group["transaction_id"] if t is not None)
        rows = sum(min(n, copies.get(t, 0)) for t, n in lines_per_id.items())
        bad = sum(_partition(k) == (year, month, day) for k in files.quarantine["source_key"])
        unprocessed = 0
        for key, lines in group.groupby("key"):
            if key not in quarantine_keys and not any(copies.get(t, 0) for t in lines["transaction_id"] if t):
                unprocessed += 1
        expected.append(
            {
                "year": year,
                "month": month,
                "day": day,
                "raw_files": group["key"].nunique(),
                "raw_records": len(group),
                "processed_rows": rows,
                "quarantined_records": bad,
                "difference": len(group) - rows - bad,
                "unprocessed_files": unprocessed,
                "status": "OK" if len(group) == rows + bad else "MISMATCH",
            }
        )
    return expected


def _raw_id(line: str) -> str | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record.get("transaction_id") if isinstance(record, dict) else None


def test_reconciliation_accounts_for_every_raw_record(con: Any, files: Files):
    expected = _expected_reconciliation(files)
    assert [r["status"] for r in expected] == ["OK", "OK", "OK"]
    assert sum(r["quarantined_records"] for r in expected) == len(files.quarantine) > 0
    assert_rows_equal(catalog.run_query(con, QUERIES["dq_reconciliation_by_day"]), expected, close={})


def test_reconciliation_reports_the_day_whose_output_went_missing(bucket_copy: Path, tmp_path: Path):
    copy = tmp_path / "bucket"
    shutil.copytree(bucket_copy, copy)
    parquet = sorted((copy / "processed").rglob("*.parquet"))
    stems = Counter(p.stem for p in parquet)
    quarantined = {p.stem for p in (copy / "quarantine").rglob("*.jsonl")}
    # the newest file: none of its transactions was delivered again by another file
    lost = next(p for p in reversed(parquet) if stems[p.stem] == 1 and p.stem not in quarantined)
    lost_rows = pq.read_metadata(lost).num_rows
    raw = copy / pq.read_schema(lost).metadata[b"source_key"].decode()  # the transformer's lineage
    lost.unlink()
    year, month, day = _partition(raw.relative_to(copy).as_posix())
    result = catalog.run_query(catalog.connect(copy, BUCKET), QUERIES["dq_reconciliation_by_day"])
    bad = result[result["status"] == "MISMATCH"]
    assert _rows(bad[["year", "month", "day", "difference", "unprocessed_files"]]) == [
        {"year": year, "month": month, "day": day, "difference": lost_rows, "unprocessed_files": 1}
    ]


def test_reconciliation_still_holds_after_a_days_files_are_compacted_into_one(
    bucket_copy: Path, tmp_path: Path
):
    copy = tmp_path / "bucket"
    shutil.copytree(bucket_copy, copy)
    for folder in {p.parent for p in (copy / "processed").rglob("*.parquet")}:
        sources = sorted(folder.glob("*.parquet"))
        merged = pa.concat_tables([pq.read_table(p) for p in sources])
        for path in sources:
            path.unlink()
        pq.write_table(merged, folder / "compacted-day.parquet")
    result = catalog.run_query(catalog.connect(copy, BUCKET), QUERIES["dq_reconciliation_by_day"])
    assert list(result["status"]) == ["OK", "OK", "OK"]
    assert list(result["unprocessed_files"]) == [0, 0, 0]


def test_latest_partition_and_its_lag(con: Any, files: Files):
    p = files.processed
    newest = p.sort_values(["year", "month", "day"]).iloc[-1]
    part = p[(p["year"] == newest["year"]) & (p["month"] == newest["month"]) & (p["day"] == newest["day"])]
    latest = part["timestamp"].max().to_pydatetime()
    before = datetime.now(UTC)
    actual = catalog.run_query(con, QUERIES["dq_latest_partition"])
    after = datetime.now(UTC)
    expected = [
        {
            "year": int(newest["year"]),
            "month": int(newest["month"]),
            "day": int(newest["day"]),
            "row_count": len(part),
            "latest_transaction": latest.replace(tzinfo=None),
        }
    ]
    assert_rows_equal(actual.drop(columns=["lag_minutes"]), expected, close={})
    lag = float(actual["lag_minutes"].iloc[0])
    low = (before - latest).total_seconds() / 60 - 0.05
    high = (after - latest).total_seconds() / 60 + 0.05
    assert low <= lag <= high
