"""make cost: the S3 request counter, the Athena bytes-scanned estimate and the bill's arithmetic."""

from __future__ import annotations

import io
import json
import logging
import math
from datetime import date

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError

from local.catalog import query_files, read_sql, table_defs
from local.events import s3_put_event
from tests.conftest import BUCKET, REGION, load_event, load_lambda
from tests.infra.cfn import load_template
from tools import athena_scan, bill, metering, simulate, stack
from tools import prices as p

generator = load_lambda("generator")
transformer = load_lambda("transformer")


# --- The S3 request counter ------------------------------------------------------------------------------


@pytest.fixture
def counter(s3, monkeypatch):
    """A counter attached to the session every boto3.client() of the test (and the handlers) comes from."""
    session = boto3.session.Session(region_name=REGION)
    meter = metering.S3RequestCounter()
    meter.attach(session.events)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", session)
    for handler in (generator, transformer):
        handler.s3_client.cache_clear()
    root = logging.getLogger()
    level = root.level
    yield meter
    for handler in (generator, transformer):
        handler.s3_client.cache_clear()
    root.setLevel(level)


def test_counter_counts_each_call_by_api_and_prefix_failed_calls_included(counter):
    client = boto3.client("s3")
    with counter.labelled("me"):
        client.put_object(Bucket=BUCKET, Key="raw/year=2026/a.json", Body=b"{}\n")
        client.put_object(Bucket=BUCKET, Key="raw/year=2026/b.json", Body=b"{}\n")
        client.get_object(Bucket=BUCKET, Key="raw/year=2026/a.json")["Body"].read()
        with pytest.raises(ClientError):
            client.head_object(Bucket=BUCKET, Key="processed/missing.parquet")
        client.list_objects_v2(Bucket=BUCKET, Prefix="raw/year=2026/")
        client.list_objects_v2(Bucket=BUCKET)
        client.delete_object(Bucket=BUCKET, Key="raw/year=2026/b.json")
    assert counter.by("operation", "prefix", "status") == {
        ("PutObject", "raw/", 200): 2,
        ("GetObject", "raw/", 200): 1,
        ("HeadObject", "processed/", 404): 1,
        ("ListObjectsV2", "raw/", 200): 1,
        ("ListObjectsV2", metering.BUCKET_LEVEL, 200): 1,
        ("DeleteObject", "raw/", 204): 1,
    }
    assert counter.total(function="me") == 7
    assert counter.total(function="someone else") == 0


def test_counter_sees_every_request_a_handler_makes(counter, monkeypatch):
    monkeypatch.setenv("BUCKET_NAME", BUCKET)
    with counter.labelled("generator"):
        result = generator.lambda_handler(load_event("scheduled_event.json"), None)
    raw_key = result["key"]
    assert counter.by("operation", "prefix", function="generator") == {("PutObject", "raw/"): 1}

    uncounted = boto3.session.Session(region_name=REGION).client("s3")
    head = uncounted.head_object(Bucket=BUCKET, Key=raw_key)
    event = s3_put_event(
        BUCKET,
        key=raw_key,
        size=head["ContentLength"],
        etag=head["ETag"],
        sequencer="0A",
        event_time=head["LastModified"],
    )
    with counter.labelled("transformer"):
        transformer.lambda_handler(event, None)
    # Independently: the objects the transformer left, read back from S3 without the counter.
    listing = uncounted.list_objects_v2(Bucket=BUCKET)
    written = [item["Key"] for item in listing["Contents"]]
    puts = counter.by("operation", "prefix", function="transformer")
    assert puts[("PutObject", "processed/")] == sum(k.startswith("processed/") for k in written) == 1
    assert puts.get(("PutObject", "quarantine/"), 0) == sum(k.startswith("quarantine/") for k in written)
    assert puts[("PutObject", "state/")] >= sum(k.startswith("state/") for k in written) >= 1
    assert puts[("GetObject", "raw/")] >= 1
    assert {prefix for _, prefix in puts} <= {"raw/", "processed/", "quarantine/", "state/"}
    assert counter.total() == counter.total(function="generator") + counter.total(function="transformer")


@pytest.mark.parametrize(
    ("operation", "expected"),
    [
        ("PutObject", metering.TIER1),
        ("CopyObject", metering.TIER1),
        ("ListObjectsV2", metering.TIER1),
        ("CompleteMultipartUpload", metering.TIER1),
        ("GetObject", metering.TIER2),
        ("HeadObject", metering.TIER2),
        ("DeleteObject", metering.FREE),
        ("DeleteObjects", metering.FREE),
        ("AbortMultipartUpload", metering.FREE),
    ],
)
def test_request_classes_follow_the_s3_price_list(operation, expected):
    assert metering.request_class(operation) == expected


def test_metered_captures_log_lines_as_lambda_json_and_stdout():
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with metering.metered("f") as invocation:
            logger.info("hello", extra={"key": "raw/x.json"})
            print('{"_aws": {"CloudWatchMetrics": [{"Namespace": "N", "Dimensions": [[]], "Metrics": []}]}}')
    finally:
        logger.setLevel(level)
    first = json.loads(invocation.log_lines[0])
    assert (first["level"], first["message"], first["key"]) == ("INFO", "hello", "raw/x.json")
    assert len(invocation.log_lines) == 2
    assert invocation.log_bytes == sum(len(line.encode()) for line in invocation.log_lines)
    assert invocation.cpu_seconds >= 0


def test_emf_metrics_are_names_times_dimension_values():
    line = json.dumps(
        {
            "_aws": {
                "CloudWatchMetrics": [
                    {"Namespace": "N", "Dimensions": [[], ["Fn"]], "Metrics": [{"Name": "A"}, {"Name": "B"}]}
                ]
            },
            "Fn": "gen",
        }
    )
    assert metering.emf_metrics(line) == {
        metering.Metric("N", "A", ()),
        metering.Metric("N", "B", ()),
        metering.Metric("N", "A", (("Fn", "gen"),)),
        metering.Metric("N", "B", (("Fn", "gen"),)),
    }
    assert metering.emf_metrics("not json") == set()


@pytest.mark.parametrize(
    ("cpu", "memory", "billed"),
    [(0.0101, 1769, 11), (0.0101, 3538, 11), (0.001, 128, 14), (0.0, 512, 1), (0.1, 512, 346)],
)
def test_billed_duration_is_cpu_over_the_vcpu_share_rounded_up_to_a_millisecond(cpu, memory, billed):
    assert metering.billed_ms(cpu, memory) == billed == max(1, math.ceil(cpu / min(1, memory / 1769) * 1000))


# --- Bytes scanned by Athena -------------------------------------------------------------------------------

TABLES = table_defs()


def _parquet(rows: int, day: int) -> athena_scan.DataFile:
    schema = pa.schema(
        [(c.name, pa.string()) for c in next(t for t in TABLES if t.name == "transactions").columns]
    )
    table = pa.table(
        {name: [f"{name}-{i}" * 20 for i in range(rows)] for name in schema.names}, schema=schema
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="snappy")
    data = sink.getvalue()
    key = f"processed/transactions/year=2026/month=11/day={day:02d}/f.parquet"
    return athena_scan.parquet_file(key, ("year", "month", "day"), len(data), data)


def _columns_bytes(f: athena_scan.DataFile, names: list[str]) -> int:
    assert f.column_bytes is not None
    return f.footer_bytes + sum(f.column_bytes[n] for n in names)


def test_a_query_reading_two_columns_scans_just_those_columns_and_the_footer():
    files = {"ecommerce_db.transactions": [_parquet(500, 24)]}
    two = athena_scan.table_scans(
        "SELECT category, SUM(quantity) FROM ecommerce_db.transactions GROUP BY category", TABLES
    )
    everything = athena_scan.table_scans("SELECT * FROM ecommerce_db.transactions", TABLES)
    two_bytes = athena_scan.bytes_scanned(two, files)
    all_bytes = athena_scan.bytes_scanned(everything, files)
    f = files["ecommerce_db.transactions"][0]
    assert two_bytes == _columns_bytes(f, ["category", "quantity"])
    assert all_bytes == _columns_bytes(f, list(f.column_bytes or {}))
    assert two_bytes < all_bytes <= f.size


def test_partition_filters_prune_files_and_a_cte_read_twice_is_scanned_twice():
    files = {"ecommerce_db.transactions": [_parquet(100, 23), _parquet(300, 24)]}
    day23, day24 = files["ecommerce_db.transactions"]
    sql = "SELECT hour FROM ecommerce_db.transactions WHERE year = 2026 AND month = 11 AND day {}"
    assert athena_scan.bytes_scanned(
        athena_scan.table_scans(sql.format("= 24"), TABLES), files
    ) == _columns_bytes(day24, ["hour"])
    assert athena_scan.bytes_scanned(athena_scan.table_scans(sql.format("IN (22, 23)"), TABLES), files) == (
        _columns_bytes(day23, ["hour"])
    )
    assert athena_scan.bytes_scanned(athena_scan.table_scans(sql.format(">= 1"), TABLES), files) == (
        _columns_bytes(day23, ["hour"]) + _columns_bytes(day24, ["hour"])
    )
    twice = athena_scan.table_scans(
        "WITH t AS (SELECT hour FROM ecommerce_db.transactions WHERE day = 24) "
        "SELECT * FROM t AS a JOIN t AS b ON a.hour = b.hour",
        TABLES,
    )
    assert athena_scan.bytes_scanned(twice, files) == 2 * _columns_bytes(day24, ["hour"])


def test_json_tables_are_read_whole_and_partition_keys_and_path_cost_nothing():
    raw = athena_scan.text_file("raw/year=2026/month=11/day=24/a.json", ("year", "month", "day"), 12345)
    scans = athena_scan.table_scans('SELECT day, "$path" FROM ecommerce_db.raw_transactions', TABLES)
    assert scans[0].columns == frozenset()
    assert athena_scan.bytes_scanned(scans, {"ecommerce_db.raw_transactions": [raw]}) == 12345
    parquet = _parquet(10, 24)
    no_columns = athena_scan.table_scans(
        "SELECT COUNT(*), year FROM ecommerce_db.transactions GROUP BY year", TABLES
    )
    assert (
        athena_scan.bytes_scanned(no_columns, {"ecommerce_db.transactions": [parquet]})
        == parquet.footer_bytes
    )


def test_every_sample_query_resolves_against_the_catalog():
    for path in query_files():
        scans = athena_scan.table_scans(read_sql(path), TABLES, str(path))
        assert scans, path
        for scan in scans:
            assert scan.columns <= {c.name for c in scan.table.columns}


def test_a_query_on_an_unknown_table_is_a_named_error():
    with pytest.raises(athena_scan.QueryScanError, match="cannot resolve"):
        athena_scan.table_scans("SELECT a FROM ecommerce_db.nope", TABLES, "q.sql")


def test_athena_bills_whole_megabytes_and_at_least_ten():
    assert athena_scan.billed_bytes(0) == athena_scan.billed_bytes(1) == 10 * p.MB
    assert athena_scan.billed_bytes(10 * p.MB + 1) == 11 * p.MB
    assert athena_scan.billed_bytes(3 * p.GB) == 3 * p.GB


# --- The bill --------------------------------------------------------------------------------------------


def test_pricing_a_small_month_by_hand():
    usage = bill.Usage(
        s3_tier1_requests=3000,
        s3_tier2_requests=50_000,
        s3_delete_requests=700,
        s3_gb_months=2,
        lambda_requests=10_000,
        lambda_gb_seconds=1000,
        cw_metric_months=6,
        cw_alarm_metrics=7,
        cw_dashboards=1,
        logs_ingested_gb=0.5,
        logs_stored_gb_months=0.1,
        athena_billed_bytes=p.TB / 2,
    )
    expected = (
        3 * p.S3_TIER1_REQUESTS.usd
        + 50 * p.S3_TIER2_REQUESTS.usd
        + 2 * p.S3_STORAGE.usd
        + 0.01 * p.LAMBDA_REQUESTS.usd
        + 1000 * p.LAMBDA_DURATION_X86.usd
        + 6 * p.CW_CUSTOM_METRICS.usd
        + 7 * p.CW_ALARM_METRICS.usd
        + p.CW_DASHBOARDS.usd
        + 0.5 * p.CW_LOGS_INGESTION.usd
        + 0.1 * p.CW_LOGS_STORAGE.usd
        + 0.5 * p.ATHENA_SCANNED.usd
    )
    assert bill.total(bill.price(usage, free_tier=False)) == pytest.approx(expected, rel=1e-12)
    arm = bill.price(bill.Usage(lambda_gb_seconds=1000, lambda_architecture="arm64"), free_tier=False)
    assert bill.total(arm) == pytest.approx(1000 * p.LAMBDA_DURATION_ARM.usd)


def test_the_free_tier_is_subtracted_before_pricing_and_never_below_zero():
    usage = bill.Usage(
        s3_tier1_requests=3000,
        lambda_requests=1_500_000,
        lambda_gb_seconds=500_000,
        cw_metric_months=12,
        cw_alarm_metrics=7,
        cw_dashboards=1,
        logs_ingested_gb=3,
        logs_stored_gb_months=4,
        sqs_requests=10,
    )
    lines = {(line.service, line.item.split(" (")[0]): line.usd for line in bill.price(usage, free_tier=True)}
    assert lines[("S3", "PUT, COPY, POST, LIST requests")] == pytest.approx(3 * p.S3_TIER1_REQUESTS.usd)
    assert lines[("Lambda", "requests")] == pytest.approx(0.5 * p.LAMBDA_REQUESTS.usd)
    assert lines[("Lambda", "duration")] == pytest.approx(100_000 * p.LAMBDA_DURATION_X86.usd)
    assert lines[("CloudWatch", "custom metrics")] == pytest.approx(2 * p.CW_CUSTOM_METRICS.usd)
    assert lines[("CloudWatch", "alarms")] == lines[("CloudWatch", "dashboard")] == 0
    # 5 GB of logs are free, ingestion and storage together: 3 ingested, then 2 of the 4 stored.
    assert lines[("CloudWatch", "logs ingested")] == 0
    assert lines[("CloudWatch", "logs stored")] == pytest.approx(2 * p.CW_LOGS_STORAGE.usd)
    assert lines[("SQS", "requests")] == 0
    assert bill.s3_first_year_saving(usage) == pytest.approx(2 * p.S3_TIER1_REQUESTS.usd)


def test_every_price_has_a_unit_a_date_and_an_aws_source():
    for name in dir(p):
        value = getattr(p, name)
        if isinstance(value, (p.Price, p.Allowance)):
            assert value.unit, name
            assert value.taken == p.TAKEN, name
            assert value.source.startswith("https://aws.amazon.com/"), name


# --- The stack and the day -------------------------------------------------------------------------------


def test_the_stack_is_read_as_the_template_configures_it():
    template = load_template()
    config = stack.read_stack()
    for function, resource in stack.RESOURCE.items():
        props = template["Resources"][resource]["Properties"]
        assert config.memory_mb[function] == props["MemorySize"]
        assert config.architecture[function] == props["Architectures"][0]
    alarms = [r for r in template["Resources"].values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    assert len(config.alarms) == len(alarms)
    assert [a.watches for a in config.alarms].count("compactor") == 1
    assert config.dashboards == 1
    assert (
        config.dashboard_metrics <= p.FREE_CW_DASHBOARDS.quantity * 0 + 50
    )  # the free tier's limit per dashboard


def test_the_sample_spreads_over_the_day_and_the_compactor_line_extrapolates():
    ticks = simulate.sample_ticks(date(2026, 11, 24), 24)
    assert len(ticks) == 24
    assert (ticks[0].hour, ticks[-1].hour) == (0, 23)
    assert len({t.hour for t in ticks}) == 24
    assert simulate.extrapolate(10, 40, 6, 24) == pytest.approx(40 + 30 / 18 * 264)
    assert simulate.extrapolate(50, 40, 6, 24) == 40  # never below the larger run
    assert simulate.extrapolate(1, 2, 72, 288) == 2


@pytest.mark.parametrize(
    ("params", "prefix"),
    [
        ({"Bucket": BUCKET, "Key": "raw/year=2026/a.json"}, "raw/"),
        ({"Bucket": BUCKET, "Key": "loose.json"}, metering.NO_PREFIX),
        ({"Bucket": BUCKET, "Prefix": "state/compaction/dirty/"}, "state/"),
        ({"Bucket": BUCKET, "Prefix": ""}, metering.BUCKET_LEVEL),
        ({"Bucket": BUCKET, "Delete": {"Objects": [{"Key": "quarantine/a.jsonl"}]}}, "quarantine/"),
        ({"Bucket": BUCKET}, metering.BUCKET_LEVEL),
    ],
)
def test_a_call_is_filed_under_the_top_level_folder_it_touches(params, prefix):
    assert metering.call_prefix(params) == prefix


def test_a_file_that_is_not_parquet_is_a_named_error():
    with pytest.raises(athena_scan.QueryScanError, match=r"x\.parquet: not a Parquet file"):
        athena_scan.parquet_file("x.parquet", ("year",), 10, b"0123456789")
    with pytest.raises(athena_scan.QueryScanError, match="footer"):
        athena_scan.parquet_file("y.parquet", ("year",), 8, (1000).to_bytes(4, "little") + b"PAR1")
