"""Generator: synthetic transactions as the contract describes them, written under raw/."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import sys
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import generator_run
from tests.conftest import BUCKET, ROOT, load_event, load_lambda

gen = load_lambda("generator")

RUN_TIME = datetime(2026, 11, 25, 14, 5, tzinfo=UTC)
KEY_RE = re.compile(
    r"^raw/year=(\d{4})/month=(\d{2})/day=(\d{2})/transactions-(\d{8}T\d{6}Z)-[0-9a-f]{8}\.json$"
)


@pytest.fixture(autouse=True)
def fresh_client(monkeypatch):
    for var in ("LOG_LEVEL", "AWS_LAMBDA_LOG_LEVEL", "TRANSACTIONS_PER_RUN", "RANDOM_SEED"):
        monkeypatch.delenv(var, raising=False)
    root = logging.getLogger()
    level = root.level
    gen.s3_client.cache_clear()
    yield
    gen.s3_client.cache_clear()
    root.setLevel(level)  # the handler sets the root logger's level from LOG_LEVEL


def _records(count: int = 500, seed: int = 7):
    return gen.generate_transactions(RUN_TIME, count, gen.make_rng(seed, RUN_TIME))


def test_records_have_exactly_the_contract_fields():
    for record in _records(50):
        assert tuple(record) == gen.RAW_FIELDS


def test_catalog_is_consistent_and_varied():
    ids = [p.product_id for p in gen.CATALOG]
    assert len(ids) == len(set(ids)) >= 24
    assert len({p.category for p in gen.CATALOG}) >= 6
    for record in _records():
        product = next(p for p in gen.CATALOG if p.product_id == record["product_id"])
        assert (record["product_name"], record["category"], record["price"]) == (
            product.name,
            product.category,
            product.price,
        )


def test_quantity_total_and_ids_follow_the_contract():
    for record in _records():
        assert record["quantity"] in range(1, 6)
        assert record["total_amount"] == record["price"] * record["quantity"]
        assert uuid.UUID(record["transaction_id"]).version == 4


def test_timestamps_fall_in_the_five_minutes_before_the_run():
    for record in _records():
        moment = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
        assert RUN_TIME - timedelta(minutes=5) <= moment < RUN_TIME
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["timestamp"])


def test_some_customers_buy_again():
    customers = [r["customer_id"] for r in _records(300)]
    assert len(set(customers)) < len(customers)
    assert all(re.fullmatch(r"CUST-\d{5}", c) for c in customers)


def test_same_seed_and_run_time_reproduce_the_same_run():
    config = gen.Config(bucket=BUCKET, transactions_per_run=20, seed=42)
    assert gen.generate_run(config, RUN_TIME) == gen.generate_run(config, RUN_TIME)
    assert gen.generate_run(config, RUN_TIME) != gen.generate_run(config, RUN_TIME + timedelta(minutes=5))


def test_json_lines_carry_exact_two_decimal_money():
    records = [
        {**r, "price": Decimal("0.10"), "quantity": 3, "total_amount": Decimal("0.10") * 3}
        for r in _records(1)
    ]
    line = gen.to_json_lines(records).decode()
    assert '"price": 0.1' in line
    assert '"total_amount": 0.3}' in line
    parsed = json.loads(line, parse_float=Decimal)
    assert parsed["total_amount"] == Decimal("0.3")


def test_json_lines_round_trip_every_money_value_exactly():
    records = _records(2000)
    parsed = [json.loads(line, parse_float=Decimal) for line in gen.to_json_lines(records).splitlines()]
    for original, back in zip(records, parsed, strict=True):
        assert Decimal(back["price"]) == original["price"]
        assert Decimal(back["total_amount"]) == original["total_amount"]


def test_raw_key_layout_uses_the_run_date():
    key = gen.raw_key(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "0badcafe")
    assert key == "raw/year=2026/month=01/day=02/transactions-20260102T030405Z-0badcafe.json"


def test_run_time_comes_from_the_scheduled_event():
    event = load_event("scheduled_event.json")
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert gen.run_time_from_event(event, now) == datetime(2026, 11, 25, 14, 5, tzinfo=UTC)
    assert gen.run_time_from_event({}, now) == now


@pytest.mark.parametrize("bad", ["yesterday", 12345])
def test_unreadable_event_time_is_a_clear_error(bad):
    with pytest.raises(gen.EventError, match="time"):
        gen.run_time_from_event({"time": bad}, datetime.now(UTC))


def test_missing_bucket_name_is_an_error_that_names_it():
    with pytest.raises(gen.ConfigError, match="BUCKET_NAME"):
        gen.load_config({})


@pytest.mark.parametrize("value", ["abc", "0", "-3", "1.5", "1000001"])
def test_invalid_transactions_per_run_is_rejected(value):
    with pytest.raises(gen.ConfigError, match="TRANSACTIONS_PER_RUN"):
        gen.load_config({"BUCKET_NAME": BUCKET, "TRANSACTIONS_PER_RUN": value})


def test_config_defaults_to_one_transaction_per_run():
    assert gen.load_config({"BUCKET_NAME": BUCKET}) == gen.Config(BUCKET, 1, None)


def test_handler_writes_one_json_lines_object_under_raw(s3, monkeypatch, capsys):
    # GIVEN the console's configuration and the sample scheduled event
    monkeypatch.setenv("BUCKET_NAME", BUCKET)
    monkeypatch.setenv("TRANSACTIONS_PER_RUN", "25")
    # WHEN the schedule fires
    result = gen.lambda_handler(load_event("scheduled_event.json"), None)
    # THEN one object exists at the contract's key, holding 25 valid JSON lines
    match = KEY_RE.match(result["key"])
    assert match
    assert match.groups()[:4] == ("2026", "11", "25", "20261125T140500Z")
    assert result == {"bucket": BUCKET, "key": result["key"], "count": 25}
    listed = s3.list_objects_v2(Bucket=BUCKET)["Contents"]
    assert [o["Key"] for o in listed] == [result["key"]]
    body = s3.get_object(Bucket=BUCKET, Key=result["key"])["Body"].read().decode("utf-8")
    lines = body.splitlines()
    assert len(lines) == 25
    assert all(tuple(json.loads(line)) == gen.RAW_FIELDS for line in lines)
    # AND it reports the count as an Embedded Metric Format line
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert emf[-1]["RecordsGenerated"] == 25
    assert emf[-1]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "EcommercePipeline"


def test_handler_without_bucket_name_fails_loudly(s3):
    with pytest.raises(gen.ConfigError, match="BUCKET_NAME"):
        gen.lambda_handler(load_event("scheduled_event.json"), None)


def test_handler_raises_when_the_bucket_is_missing(s3, monkeypatch):
    monkeypatch.setenv("BUCKET_NAME", "no-such-bucket")
    with pytest.raises(Exception, match="NoSuchBucket"):
        gen.lambda_handler(load_event("scheduled_event.json"), None)


# --- Streaming: the handler's fast path writes the reference's bytes, in bounded chunks --------------


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**64),
    count=st.integers(min_value=1, max_value=300),
    run_time=st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2200, 12, 31), timezones=st.just(UTC)
    ),
    lines_per_chunk=st.integers(min_value=1, max_value=64),
)
def test_streamed_lines_are_the_reference_lines_byte_for_byte(seed, count, run_time, lines_per_chunk):
    reference = gen.to_json_lines(gen.generate_transactions(run_time, count, gen.make_rng(seed, run_time)))

    chunks = list(gen.iter_json_lines(run_time, count, gen.make_rng(seed, run_time), lines_per_chunk))

    assert b"".join(chunks) == reference
    # every chunk holds whole lines, at most lines_per_chunk of them
    assert all(chunk.endswith(b"\n") and chunk.count(b"\n") <= lines_per_chunk for chunk in chunks)


def test_every_catalog_product_and_quantity_streams_as_the_reference_writes_it():
    # 20,000 records reach every (product, quantity) pair of the line pieces formatted once
    run = datetime(2026, 12, 31, 23, 58, 30, tzinfo=UTC)  # the window spans midnight and a new year
    records = gen.generate_transactions(run, 20_000, gen.make_rng(3, run))
    assert {(r["product_id"], r["quantity"]) for r in records} == {
        (p.product_id, q) for p in gen.CATALOG for q in range(1, 6)
    }
    streamed = b"".join(gen.iter_json_lines(run, 20_000, gen.make_rng(3, run), 1000))
    assert streamed == gen.to_json_lines(records)


def test_the_key_is_known_before_the_body_and_both_follow_seed_and_run_time():
    config = gen.Config(bucket=BUCKET, transactions_per_run=5, seed=9)
    key, chunks = gen.plan_run(config, RUN_TIME)
    assert KEY_RE.match(key)
    assert (key, b"".join(chunks), 5) == gen.generate_run(config, RUN_TIME)


@pytest.mark.integration
def test_a_run_at_the_maximum_rate_writes_every_record_once_within_the_window(s3, monkeypatch, tmp_path):
    # GIVEN the largest rate the configuration allows, and /tmp pointed at an empty folder
    monkeypatch.setenv("BUCKET_NAME", BUCKET)
    monkeypatch.setenv("TRANSACTIONS_PER_RUN", str(gen.MAX_TRANSACTIONS_PER_RUN))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    # WHEN the schedule fires
    result = gen.lambda_handler(load_event("scheduled_event.json"), None)
    # THEN one object holds all of them: valid lines, unique ids, oldest first, inside the window
    body = s3.get_object(Bucket=BUCKET, Key=result["key"])["Body"].read()
    lines = body.decode("utf-8").split("\n")
    assert lines.pop() == ""  # the last line ends with LF too
    assert len(lines) == result["count"] == gen.MAX_TRANSACTIONS_PER_RUN
    records = [json.loads(line) for line in lines]
    assert all(tuple(r) == gen.RAW_FIELDS for r in records)
    assert len({r["transaction_id"] for r in records}) == len(records)
    stamps = [r["timestamp"] for r in records]
    assert stamps == sorted(stamps)
    assert stamps[0] >= "2026-11-25T14:00:00.000Z"
    assert stamps[-1] < "2026-11-25T14:05:00.000Z"
    # AND its ETag is the MD5 of its content (one PUT, not a multipart upload), and /tmp is left empty
    assert "-" not in s3.head_object(Bucket=BUCKET, Key=result["key"])["ETag"]
    assert list(tmp_path.iterdir()) == []


def test_a_failed_upload_raises_and_leaves_nothing_in_tmp(s3, monkeypatch, tmp_path):
    monkeypatch.setenv("BUCKET_NAME", "no-such-bucket")
    monkeypatch.setenv("TRANSACTIONS_PER_RUN", "20000")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    with pytest.raises(Exception, match="NoSuchBucket"):
        gen.lambda_handler(load_event("scheduled_event.json"), None)

    assert list(tmp_path.iterdir()) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)


# --- LOG_LEVEL: any case, read when the handler loads its configuration -------------------------------


@pytest.mark.parametrize(
    ("value", "level"),
    [
        (None, logging.INFO),
        ("", logging.INFO),
        ("info", logging.INFO),
        ("Info", logging.INFO),
        (" debug ", logging.DEBUG),
        ("warn", logging.WARNING),
        ("WARN", logging.WARNING),
        ("Warning", logging.WARNING),
        ("error", logging.ERROR),
        ("CRITICAL", logging.CRITICAL),
    ],
)
def test_log_level_is_read_in_any_case_and_warn_means_warning(value, level):
    env = {"BUCKET_NAME": BUCKET} | ({} if value is None else {"LOG_LEVEL": value})
    assert gen.load_config(env).log_level == level


@pytest.mark.parametrize("value", ["verbose", "TRACE", "FATAL", "20", "info,debug"])
def test_an_unknown_log_level_is_a_configuration_error_that_lists_the_accepted_values(value):
    with pytest.raises(gen.ConfigError) as raised:
        gen.load_config({"BUCKET_NAME": BUCKET, "LOG_LEVEL": value})
    message = str(raised.value)
    assert "LOG_LEVEL" in message
    assert repr(value) in message
    assert all(name in message for name in ("DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL"))


@pytest.mark.parametrize("value", ["info", "nonsense"])
def test_the_handler_file_imports_whatever_log_level_holds(monkeypatch, value):
    # Lambda imports the file before any invocation: a bad value must not make every invocation fail
    monkeypatch.setenv("LOG_LEVEL", value)
    path = ROOT / "lambda" / "generator" / "lambda_function.py"
    name = f"generator_import_check_{value}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    assert module.parse_log_level("info") == logging.INFO


def test_the_handler_with_an_unknown_log_level_fails_naming_it_before_writing(s3, monkeypatch):
    monkeypatch.setenv("BUCKET_NAME", BUCKET)
    monkeypatch.setenv("LOG_LEVEL", "loud")
    with pytest.raises(gen.ConfigError, match="LOG_LEVEL"):
        gen.lambda_handler(load_event("scheduled_event.json"), None)
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)


def test_log_level_warning_quiets_the_handlers_info_logs_but_not_its_metrics(s3, monkeypatch, capsys, caplog):
    monkeypatch.setenv("BUCKET_NAME", BUCKET)
    monkeypatch.setenv("LOG_LEVEL", "warning")

    gen.lambda_handler(load_event("scheduled_event.json"), None)

    assert logging.getLogger().level == logging.WARNING
    assert not [r for r in caplog.records if r.levelno < logging.WARNING]
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert [line["RecordsGenerated"] for line in emf] == [1]


# --- Metrics: stamped when emitted, and a log level that would drop them is reported ------------------


def test_a_replayed_event_from_weeks_ago_is_stamped_with_the_time_the_metrics_are_emitted(
    s3, monkeypatch, capsys
):
    # GIVEN the sample scheduled event (2026-11-25T14:05Z) replayed four weeks later
    monkeypatch.setenv("BUCKET_NAME", BUCKET)
    now = datetime(2026, 12, 23, 9, 30, 15, 250_000, tzinfo=UTC)
    # WHEN the handler runs with that clock
    monkeypatch.setattr(gen, "_utc_now", lambda: now)
    result = gen.lambda_handler(load_event("scheduled_event.json"), None)
    # THEN the data keeps the event's day, and the metric datapoint carries the time it was emitted
    assert result["key"].startswith("raw/year=2026/month=11/day=25/transactions-20261125T140500Z-")
    (emf,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert emf["_aws"]["Timestamp"] == 1_798_018_215_250 == int(now.timestamp() * 1000)


def test_an_event_without_time_runs_at_the_clocks_time(s3, monkeypatch):
    monkeypatch.setenv("BUCKET_NAME", BUCKET)
    now = datetime(2027, 2, 3, 4, 5, 6, tzinfo=UTC)
    monkeypatch.setattr(gen, "_utc_now", lambda: now)
    result = gen.lambda_handler({}, None)
    assert "/year=2027/month=02/day=03/transactions-20270203T040506Z-" in result["key"]


@pytest.mark.parametrize("lambda_level", ["WARN", "error", "FATAL"])
def test_a_lambda_log_level_that_drops_the_metrics_is_logged_as_an_error(
    s3, monkeypatch, caplog, lambda_level
):
    monkeypatch.setenv("BUCKET_NAME", BUCKET)
    monkeypatch.setenv("AWS_LAMBDA_LOG_LEVEL", lambda_level)

    gen.lambda_handler(load_event("scheduled_event.json"), None)

    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert f"application log level is {lambda_level.upper()}" in record.getMessage()
    assert "INFO" in record.getMessage()
    assert "LOG_LEVEL" in record.getMessage()


@pytest.mark.parametrize("lambda_level", [None, "TRACE", "DEBUG", "INFO"])
def test_a_lambda_log_level_that_keeps_the_metrics_logs_no_error(s3, monkeypatch, caplog, lambda_level):
    monkeypatch.setenv("BUCKET_NAME", BUCKET)
    if lambda_level is not None:
        monkeypatch.setenv("AWS_LAMBDA_LOG_LEVEL", lambda_level)

    gen.lambda_handler(load_event("scheduled_event.json"), None)

    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- The benchmark measures against the stack's own limits --------------------------------------------


def test_the_generator_benchmark_reads_its_limits_from_the_stack():
    assert generator_run.generator_limits() == {"memory_mb": 128, "timeout_s": 30, "tmp_mb": 512}


def test_a_put_retried_after_its_body_was_sent_stores_the_whole_file(s3, monkeypatch):
    # GIVEN the first PUT's body reaches S3 but its answer is a 500 (moto reads every request's body,
    # so the retry finds the temporary file at its end unless botocore rewinds it)
    monkeypatch.setenv("BUCKET_NAME", BUCKET)
    monkeypatch.setenv("TRANSACTIONS_PER_RUN", "5000")
    monkeypatch.setenv("RANDOM_SEED", "11")
    attempts = []

    def fail_first_put(request, **_):
        attempts.append(request.url)
        if len(attempts) == 1:
            return AWSResponse(
                request.url, 500, HTTPHeaders(), _RawBody(b"<Error><Code>InternalError</Code></Error>")
            )
        return None

    gen.s3_client().meta.events.register_first("before-send.s3.PutObject", fail_first_put)
    # WHEN the schedule fires
    result = gen.lambda_handler(load_event("scheduled_event.json"), None)
    # THEN botocore's retry sent the file again from its start: the object is the whole run
    assert len(attempts) == 2
    run_time = datetime(2026, 11, 25, 14, 5, tzinfo=UTC)
    key, body, _ = gen.generate_run(gen.Config(BUCKET, 5000, 11), run_time)
    assert result["key"] == key
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body


class _RawBody:
    """The raw stream botocore reads an error response from."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_):
        yield self._data

    def read(self, *_):
        data, self._data = self._data, b""
        return data
