"""Generator: synthetic transactions as the contract describes them, written under raw/."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tests.conftest import BUCKET, load_event, load_lambda

gen = load_lambda("generator")

RUN_TIME = datetime(2026, 11, 25, 14, 5, tzinfo=UTC)
KEY_RE = re.compile(
    r"^raw/year=(\d{4})/month=(\d{2})/day=(\d{2})/transactions-(\d{8}T\d{6}Z)-[0-9a-f]{8}\.json$"
)


@pytest.fixture(autouse=True)
def fresh_client():
    gen.s3_client.cache_clear()
    yield
    gen.s3_client.cache_clear()


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
