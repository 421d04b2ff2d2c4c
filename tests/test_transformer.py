"""Transformer: every raw record ends in processed/ or quarantine/ (with a reason), as docs/contract.md
says."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import random
import re
import subprocess
import sys
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote_plus

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import BUCKET, ROOT, load_event, load_lambda

tr = load_lambda("transformer")
gen = load_lambda("generator")

RUN = datetime(2026, 11, 25, 14, 5, tzinfo=UTC)
RAW_KEY = "raw/year=2026/month=11/day=25/transactions-20261125T140500Z-1a2b3c4d.json"
STEM = tr.output_name(RAW_KEY)  # <stem>-<12 hex of SHA-256 of the raw key>


@pytest.fixture(autouse=True)
def fresh_client():
    tr.s3_client.cache_clear()
    yield
    tr.s3_client.cache_clear()


# --- helpers ---------------------------------------------------------------------------------------


def good_records(count: int = 5, seed: int = 1, run: datetime = RUN) -> list[dict[str, Any]]:
    return gen.generate_transactions(run, count, gen.make_rng(seed, run))


def good_lines(count: int = 5, seed: int = 1, run: datetime = RUN) -> list[str]:
    return gen.to_json_lines(good_records(count, seed, run)).decode().splitlines()


def record(**changes: Any) -> dict[str, Any]:
    """A valid raw record (JSON-ready) with some fields changed; a value of ... removes the field."""
    base = json.loads(good_lines(1, seed=99)[0])
    for name, value in changes.items():
        if value is ...:
            base.pop(name)
        else:
            base[name] = value
    return base


def s3_event(*keys: str, bucket: str = BUCKET) -> dict[str, Any]:
    """The sample put event from events/, with one record per key, URL-encoded as S3 sends it."""
    template = load_event("s3_put_event.json")
    event: dict[str, Any] = {"Records": []}
    for key in keys:
        entry = copy.deepcopy(template["Records"][0])
        entry["s3"]["bucket"]["name"] = bucket
        entry["s3"]["object"]["key"] = quote_plus(key, safe="/")
        event["Records"].append(entry)
    return event


def put(s3, key: str, body: str | bytes) -> None:
    s3.put_object(Bucket=BUCKET, Key=key, Body=body.encode() if isinstance(body, str) else body)


def keys(s3, prefix: str = "") -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def processed(s3, stem: str = STEM) -> dict[str, pa.Table]:
    out = {}
    for key in keys(s3, "processed/"):
        if key.endswith(f"/{stem}.parquet"):
            body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            out[key] = pq.read_table(io.BytesIO(body))
    return out


def quarantined(s3, stem: str = STEM) -> list[dict[str, Any]]:
    entries = []
    for key in keys(s3, "quarantine/"):
        if key.endswith(f"/{stem}.jsonl"):
            body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
            entries += [json.loads(line) for line in body.splitlines()]
    return entries


def records_in(body: bytes) -> int:
    """Non-blank lines, or the elements of a file that is one JSON array/object: the contract's count. Lines
    end in LF, CRLF or CR; a byte order mark at the start is ignored; a blank line is spaces and tabs."""
    body = body.removeprefix(b"\xef\xbb\xbf")
    try:
        whole = json.loads(body)
    except ValueError:
        whole = None
    if isinstance(whole, list):
        return len(whole)
    if isinstance(whole, dict):
        return 1
    return sum(1 for line in re.split(rb"\r\n|\r|\n", body) if line.strip(b" \t"))


def assert_reconciles(s3, raw_key: str) -> None:
    """The contract's invariant: rows in processed + lines in quarantine = records read."""
    stem = tr.output_name(raw_key)
    body = s3.get_object(Bucket=BUCKET, Key=raw_key)["Body"].read()
    rows = sum(t.num_rows for t in processed(s3, stem).values())
    assert rows + len(quarantined(s3, stem)) == records_in(body)


def run(s3, raw_key: str, body: str | bytes, monkeypatch=None) -> dict[str, Any]:
    put(s3, raw_key, body)
    result = tr.lambda_handler(s3_event(raw_key), None)
    assert_reconciles(s3, raw_key)
    return result


def reasons(entries: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(e["line"], e["reason"]) for e in entries]


def fail_first(client, operation: str, status: int, code: str, times: int, *, prefix: str = "") -> list[int]:
    """Make the next `times` calls of `operation` on keys under `prefix` answer with an S3 error, before
    moto sees them."""
    calls: list[int] = []

    def handler(request, **kwargs):
        if (
            f"/{BUCKET}/{prefix}" not in request.url
            and f"{BUCKET}.s3.amazonaws.com/{prefix}" not in request.url
        ):
            return None
        calls.append(1)
        if len(calls) > times:
            return None
        body = f"<Error><Code>{code}</Code><Message>injected by the test</Message></Error>".encode()
        return AWSResponse(
            request.url, status, HTTPHeaders.from_dict({"Content-Type": "application/xml"}), _Raw(body)
        )

    client.meta.events.register_first(f"before-send.s3.{operation}", handler)
    return calls


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **kwargs):
        yield self._body

    def read(self, *args):
        return self._body


# --- happy path: schema, types, values --------------------------------------------------------------


def test_valid_file_becomes_one_parquet_file_with_the_contract_schema(s3):
    # GIVEN a raw file written by the real generator
    records = good_records(40)
    # WHEN the S3 event for it arrives
    result = run(s3, RAW_KEY, gen.to_json_lines(records))
    # THEN one Parquet file holds every row, with exactly the contract's columns and types
    tables = processed(s3)
    assert list(tables) == [f"processed/transactions/year=2026/month=11/day=25/{STEM}.parquet"]
    table = next(iter(tables.values()))
    assert table.schema.equals(tr.PROCESSED_SCHEMA)
    assert table.num_rows == 40
    assert quarantined(s3) == []
    assert result["processed"][0]["rows_written"] == 40
    # AND the values are the generator's, exactly
    rows = table.to_pylist()
    for original, row in zip(records, rows, strict=True):
        assert row["transaction_id"] == original["transaction_id"]
        assert row["price"] == original["price"]
        assert row["total_amount"] == original["total_amount"]
        assert row["quantity"] == original["quantity"]
        moment = datetime.fromisoformat(original["timestamp"].replace("Z", "+00:00"))
        assert row["timestamp"] == moment
        assert row["hour"] == moment.hour
        assert row["day_of_week"] == moment.weekday()


def test_parquet_timestamps_are_milliseconds_in_utc_never_nanoseconds(s3):
    run(s3, RAW_KEY, "\n".join(good_lines(3)))
    body = s3.get_object(Bucket=BUCKET, Key=next(iter(processed(s3))))["Body"].read()
    parquet_schema = pq.ParquetFile(io.BytesIO(body)).schema
    logical = str(parquet_schema.column(1).logical_type)
    assert "isAdjustedToUTC=true" in logical
    assert "milliseconds" in logical
    assert pq.ParquetFile(io.BytesIO(body)).metadata.row_group(0).column(0).compression == "SNAPPY"


def test_year_month_day_are_in_the_key_not_in_the_file(s3):
    run(s3, RAW_KEY, "\n".join(good_lines(3)))
    table = next(iter(processed(s3).values()))
    assert not {"year", "month", "day"} & set(table.column_names)


def test_money_is_exact_end_to_end(s3):
    # 0.1 x 3 is 0.30 in the Parquet file, never 0.30000000000000004
    line = json.dumps(record(price=0.1, quantity=3, total_amount=0.3))
    run(s3, RAW_KEY, line)
    row = next(iter(processed(s3).values())).to_pylist()[0]
    assert row["price"] == Decimal("0.10")
    assert row["total_amount"] == Decimal("0.30")
    assert str(row["total_amount"]) == "0.30"


def test_money_given_as_strings_is_accepted(s3):
    lines = [
        json.dumps(record(price="24.99", quantity=2, total_amount="49.98")),
        json.dumps(record(transaction_id="money-2", price="5", quantity=1, total_amount=5)),
    ]
    run(s3, RAW_KEY, "\n".join(lines))
    rows = next(iter(processed(s3).values())).to_pylist()
    assert [(r["price"], r["total_amount"]) for r in rows] == [
        (Decimal("24.99"), Decimal("49.98")),
        (Decimal("5.00"), Decimal("5.00")),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-25T14:03:27.512Z", datetime(2026, 11, 25, 14, 3, 27, 512000, tzinfo=UTC)),
        ("2026-11-25T16:03:27.512+02:00", datetime(2026, 11, 25, 14, 3, 27, 512000, tzinfo=UTC)),
        ("2026-11-25T09:33:27-0430", datetime(2026, 11, 25, 14, 3, 27, tzinfo=UTC)),
        ("2026-11-25T14:03:27.512", datetime(2026, 11, 25, 14, 3, 27, 512000, tzinfo=UTC)),
        ("2026-11-25 14:03:27", datetime(2026, 11, 25, 14, 3, 27, tzinfo=UTC)),
        ("2026-11-25T14:03:27.512999999Z", datetime(2026, 11, 25, 14, 3, 27, 512000, tzinfo=UTC)),
    ],
)
def test_timestamps_with_offsets_and_without_are_read_as_utc(s3, text, expected):
    run(s3, RAW_KEY, json.dumps(record(timestamp=text)))
    row = next(iter(processed(s3).values())).to_pylist()[0]
    assert row["timestamp"] == expected
    assert row["hour"] == expected.hour


def test_rows_spanning_midnight_give_one_parquet_file_per_date(s3):
    # GIVEN a run at 00:02 UTC, whose five-minute window starts the day before
    run_time = datetime(2026, 11, 26, 0, 2, tzinfo=UTC)
    records = good_records(300, seed=3, run=run_time)
    key = "raw/year=2026/month=11/day=26/transactions-20261126T000200Z-00c0ffee.json"
    run(s3, key, gen.to_json_lines(records))
    # THEN each row sits in the partition of its own timestamp's date
    name = tr.output_name(key)
    tables = processed(s3, name)
    assert sorted(tables) == [
        f"processed/transactions/year=2026/month=11/day=25/{name}.parquet",
        f"processed/transactions/year=2026/month=11/day=26/{name}.parquet",
    ]
    for key_name, table in tables.items():
        day = date(*(int(part.split("=")[1]) for part in key_name.split("/")[2:5]))
        assert {ts.date() for ts in table.column("timestamp").to_pylist()} == {day}
    assert sum(t.num_rows for t in tables.values()) == 300


def test_an_empty_file_writes_nothing(s3):
    result = run(s3, RAW_KEY, b"")
    assert keys(s3, "processed/") == []
    assert keys(s3, "quarantine/") == []
    assert result["processed"][0]["records_read"] == 0


def test_blank_lines_are_not_records(s3):
    lines = good_lines(3)
    body = "\n\n".join(lines) + "\n   \n"
    run(s3, RAW_KEY, body)
    assert next(iter(processed(s3).values())).num_rows == 3
    assert quarantined(s3) == []


def test_windows_line_endings_are_read(s3):
    run(s3, RAW_KEY, "\r\n".join(good_lines(4)) + "\r\n")
    assert next(iter(processed(s3).values())).num_rows == 4


# --- hand-uploaded files -----------------------------------------------------------------------------


def test_a_file_holding_one_json_object_is_one_record(s3):
    key = "raw/manual/one-order.json"
    run(s3, key, json.dumps(record(), indent=2))
    table = next(iter(processed(s3, tr.output_name(key)).values()))
    assert table.num_rows == 1


def test_a_file_holding_one_json_array_is_one_record_per_element(s3):
    key = "raw/manual/orders.json"
    elements = [record(transaction_id=f"arr-{i}") for i in range(3)] + [["not", "an", "object"]]
    run(s3, key, json.dumps(elements, indent=2))
    assert next(iter(processed(s3, tr.output_name(key)).values())).num_rows == 3
    assert reasons(quarantined(s3, tr.output_name(key))) == [(4, "not_an_object")]


def test_a_one_document_file_too_big_to_parse_whole_is_read_as_json_lines(s3, monkeypatch):
    # Parsing a document whole takes about 12 times its size: past the limit, each line is a record
    monkeypatch.setattr(tr, "MAX_DOCUMENT_BYTES", 100)
    key = "raw/manual/orders.json"
    body = json.dumps([record(transaction_id=f"arr-{i}") for i in range(2)], indent=2)
    put(s3, key, body)
    tr.lambda_handler(s3_event(key), None)
    assert processed(s3, tr.output_name(key)) == {}
    entries = quarantined(s3, tr.output_name(key))
    assert len(entries) == len([line for line in body.splitlines() if line.strip()])
    assert {e["reason"] for e in entries} <= {"malformed_json", "not_an_object"}


def test_hand_uploads_outside_a_date_partition_quarantine_under_their_last_modified_date(s3):
    key = "raw/manual/bad.json"
    run(s3, key, "not json at all\n")
    uploaded = s3.head_object(Bucket=BUCKET, Key=key)["LastModified"].astimezone(UTC).date()
    assert keys(s3, "quarantine/") == [
        f"quarantine/year={uploaded:%Y}/month={uploaded:%m}/day={uploaded:%d}/{tr.output_name(key)}.jsonl",
    ]


# --- rejects: every reason code --------------------------------------------------------------------

BAD_LINES = [
    pytest.param('{"transaction_id": "x", ', "malformed_json", "", id="truncated"),
    pytest.param("NaN", "malformed_json", "", id="nan"),
    pytest.param("[1, 2, 3]", "not_an_object", "array", id="array"),
    pytest.param('"just text"', "not_an_object", "string", id="string"),
    pytest.param(json.dumps(record(customer_id=...)), "missing_field", "customer_id", id="absent"),
    pytest.param(json.dumps(record(price=None)), "missing_field", "price", id="null"),
    pytest.param(json.dumps(record(product_name="  ")), "missing_field", "product_name", id="blank"),
    pytest.param(json.dumps(record(transaction_id=123)), "invalid_type", "transaction_id", id="id-number"),
    pytest.param(json.dumps(record(quantity="2")), "invalid_type", "quantity", id="quantity-string"),
    pytest.param(json.dumps(record(price=True)), "invalid_type", "price", id="price-bool"),
    pytest.param(json.dumps(record(price="abc")), "invalid_type", "price", id="price-text"),
    pytest.param(json.dumps(record(timestamp=1764079407)), "invalid_type", "timestamp", id="epoch"),
    pytest.param(json.dumps(record(timestamp="yesterday")), "invalid_timestamp", "yesterday", id="ts-word"),
    pytest.param(json.dumps(record(timestamp="2026-02-30T10:00:00Z")), "invalid_timestamp", "", id="feb30"),
    pytest.param(json.dumps(record(timestamp="2026-11-25T25:00:00Z")), "invalid_timestamp", "", id="hour25"),
    pytest.param(json.dumps(record(quantity=0)), "invalid_quantity", "", id="qty0"),
    pytest.param(json.dumps(record(quantity=-2)), "invalid_quantity", "", id="qty-neg"),
    pytest.param(json.dumps(record(quantity=2.5)), "invalid_quantity", "", id="qty-frac"),
    pytest.param(json.dumps(record(quantity=3_000_000_000)), "invalid_quantity", "", id="qty-int32"),
    pytest.param(
        json.dumps(record(price=-1.0, quantity=1, total_amount=-1.0)), "invalid_price", "price", id="negative"
    ),
    pytest.param(
        json.dumps(record(price=24.999, quantity=1, total_amount=24.999)), "invalid_price", "price", id="3dp"
    ),
    pytest.param(
        json.dumps(record(price=123456789.0, quantity=1, total_amount=123456789.0)),
        "invalid_price",
        "decimal(10,2)",
        id="too-big",
    ),
    pytest.param(
        json.dumps(record(price=1.0, quantity=1, total_amount=-1.0)),
        "invalid_price",
        "total_amount",
        id="neg-total",
    ),
    pytest.param(
        json.dumps(record(price=24.99, quantity=2, total_amount=50.0)),
        "total_mismatch",
        "49.98",
        id="mismatch",
    ),
    # What RFC 8259 and the contract make malformed_json, whatever field it is in
    pytest.param(b'{"transaction_id": "caf\xe9"}', "malformed_json", "UTF-8", id="latin-1-byte"),
    pytest.param(
        json.dumps(record())[:-1].encode() + b', "note": "\xff\xfe"}',
        "malformed_json",
        "UTF-8",
        id="bad-utf8-unknown-field",
    ),
    pytest.param(json.dumps(record())[:-1] + ', "x": NaN}', "malformed_json", "NaN", id="nan-unknown-field"),
    pytest.param(
        json.dumps(record())[:-1] + ', "x": -Infinity}', "malformed_json", "Infinity", id="inf-unknown"
    ),
    pytest.param(json.dumps(record(product_id="\ud800")), "malformed_json", "surrogate", id="lone-surrogate"),
    pytest.param(
        json.dumps(record())[:-1] + ', "x": "\\udfff"}',
        "malformed_json",
        "surrogate",
        id="lone-surrogate-unknown-field",
    ),
    pytest.param(
        json.dumps(record())[:-1] + ', "category": "Toys"}', "malformed_json", "twice", id="dup-key"
    ),
    pytest.param(
        json.dumps(record())[:-1] + ', "x": 1, "x": 2}', "malformed_json", "twice", id="dup-unknown-key"
    ),
    pytest.param(
        json.dumps(record())[:-1] + ', "x": ' + "[" * 600 + "]" * 600 + "}",
        "malformed_json",
        "nested",
        id="nested-600-deep",
    ),
    pytest.param("\f", "malformed_json", "", id="form-feed-line"),
    pytest.param("\ufeff" + json.dumps(record()), "malformed_json", "byte order mark", id="bom-inside-file"),
    pytest.param(json.dumps(record(customer_id="")), "missing_field", "customer_id is empty", id="empty"),
    pytest.param(
        json.dumps(record(category="\u3000\t")), "missing_field", "category is blank", id="unicode-blank"
    ),
    pytest.param(json.dumps(record(price=" ")), "missing_field", "price is blank", id="blank-money-string"),
    pytest.param(json.dumps(record(quantity=1e300)), "invalid_quantity", "", id="qty-huge"),
    pytest.param(
        json.dumps(record(timestamp="2026-11-25T10:00:00Z\n")), "invalid_timestamp", "", id="ts-newline"
    ),
    pytest.param(json.dumps(record(timestamp="0000-01-01T00:00:00Z")), "invalid_timestamp", "", id="year-0"),
    pytest.param(
        json.dumps(record(timestamp="9999-12-31T23:30:00-01:00")),
        "invalid_timestamp",
        "",
        id="year-10000-utc",
    ),
    pytest.param(
        json.dumps(record(timestamp="0001-01-01T00:30:00+01:00")), "invalid_timestamp", "", id="year-0-utc"
    ),
    pytest.param(
        json.dumps(record(timestamp="2026-11-25T10:00:00.1234567891Z")),
        "invalid_timestamp",
        "",
        id="ts-10-digits",
    ),
]


# A file of 4 good lines is read line by line; one of 200 by pyarrow (the vectorised path), where a bad value
# must be caught by the vectorised checks or by the routing of lines pyarrow cannot read.
FILE_SIZES = [pytest.param(4, id="small-file"), pytest.param(200, id="vectorised-file")]


@pytest.mark.parametrize("good", FILE_SIZES)
@pytest.mark.parametrize(("bad", "reason", "detail"), BAD_LINES)
def test_each_bad_record_is_quarantined_with_its_reason(s3, tmp_path, bad, reason, detail, good, request):
    # GIVEN a bad line among good ones
    lines = [line.encode() for line in good_lines(good, seed=good)]
    lines.insert(2, bad if isinstance(bad, bytes) else bad.encode())
    # WHEN the file is transformed
    result = run(s3, RAW_KEY, b"\n".join(lines) + b"\n")
    # THEN the good rows are written and the bad line is quarantined, with what and where
    summary = result["processed"][0]
    # pyarrow refuses a block with one of the contract's keys twice, and the routing pattern cannot see
    # repeated keys: that block goes line by line (correct, only slower). Any other bad line leaves the
    # block vectorised.
    vectorised = good > tr.SMALL_BLOCK_LINES and not request.node.callspec.id.startswith("dup-key-")
    assert summary["fast_blocks"] == (1 if vectorised else 0)
    assert next(iter(processed(s3).values())).num_rows == good
    [entry] = quarantined(s3)
    expected_text = bad.decode("utf-8", errors="replace") if isinstance(bad, bytes) else bad
    assert entry == {
        "source_key": RAW_KEY,
        "line": 3,
        "reason": reason,
        "detail": entry["detail"],
        "record": expected_text,
    }
    assert detail in entry["detail"]
    assert keys(s3, "quarantine/") == [f"quarantine/year=2026/month=11/day=25/{STEM}.jsonl"]
    assert_outputs_are_valid_for_strict_readers(s3, tmp_path)


UNUSUAL_BUT_VALID = [
    pytest.param(
        json.dumps(record())[:-1] + ', "note": "gift", "tags": ["a", {"b": null}]}', id="unknown-fields"
    ),
    pytest.param(json.dumps(record())[:-1] + ', "x": ' + "[" * 500 + "]" * 500 + "}", id="nested-500-deep"),
    pytest.param(
        json.dumps(record())[:-1] + ', "x": 1e400, "y": ' + "9" * 5000 + "}", id="huge-unknown-numbers"
    ),
    pytest.param(json.dumps(record(product_name="Caf\u00e9 \ud83d\ude00")), id="escapes-and-surrogate-pair"),
    pytest.param(json.dumps(record(product_name="Café 😀"), ensure_ascii=False), id="raw-utf8"),
    pytest.param(json.dumps(record(price="24.99", total_amount="49.98", quantity=2)), id="money-as-strings"),
    pytest.param(json.dumps(record(price=24.99, total_amount=49.98, quantity=2.0)), id="quantity-2.0"),
    pytest.param(json.dumps(record(timestamp="0001-01-01T00:00:00Z")), id="year-1"),
    pytest.param(json.dumps(record(timestamp="9999-12-31T23:59:59.999Z")), id="year-9999"),
    pytest.param(json.dumps(record(timestamp="2026-11-25 14:03")), id="space-no-seconds-no-zone"),
    pytest.param(json.dumps(record(timestamp="2026-11-25T14:03:27.123456789-0530")), id="offset-nanos"),
    pytest.param(" \t" + json.dumps(record()) + "\t ", id="spaces-and-tabs-around"),
]


@pytest.mark.parametrize("good", FILE_SIZES)
@pytest.mark.parametrize("line", UNUSUAL_BUT_VALID)
def test_unusual_but_valid_records_are_written(s3, tmp_path, line, good):
    lines = good_lines(good, seed=good)
    lines.insert(2, line)
    run(s3, RAW_KEY, "\n".join(lines) + "\n")
    assert quarantined(s3) == []
    assert sum(table.num_rows for table in processed(s3).values()) == good + 1
    assert_outputs_are_valid_for_strict_readers(s3, tmp_path)


def assert_outputs_are_valid_for_strict_readers(s3, directory) -> None:
    """Every Parquet file passes Arrow's full validation (UTF-8 included) and reads in DuckDB, whose
    reader refuses invalid strings; every quarantine file is UTF-8."""
    con = duckdb.connect()
    for key in keys(s3, "processed/"):
        path = directory / key.rsplit("/", 1)[1]
        path.write_bytes(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        table = pq.read_table(path)
        table.validate(full=True)
        assert con.execute("SELECT count(*) FROM read_parquet(?)", [str(path)]).fetchone() == (
            table.num_rows,
        )
    for key in keys(s3, "quarantine/"):
        s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode("utf-8")  # strict


def test_every_reason_code_of_the_contract_is_covered():
    covered = {p.values[1] for p in BAD_LINES} | {"duplicate_transaction_id"}
    assert covered == set(tr.REASONS)


def test_malformed_lines_among_many_good_ones_lose_nothing(s3):
    lines = good_lines(200, seed=5)
    for index in (0, 57, 58, 199):
        lines[index] = lines[index][:-7]  # cut off: not JSON any more
    run(s3, RAW_KEY, "\n".join(lines))
    assert next(iter(processed(s3).values())).num_rows == 196
    assert reasons(quarantined(s3)) == [
        (1, "malformed_json"),
        (58, "malformed_json"),
        (59, "malformed_json"),
        (200, "malformed_json"),
    ]


def test_a_duplicate_transaction_id_keeps_the_first_and_quarantines_the_rest(s3):
    lines = good_lines(5)
    lines += [lines[1], lines[1]]
    run(s3, RAW_KEY, "\n".join(lines))
    table = next(iter(processed(s3).values()))
    assert table.num_rows == 5
    assert len(set(table.column("transaction_id").to_pylist())) == 5
    entries = quarantined(s3)
    assert reasons(entries) == [(6, "duplicate_transaction_id"), (7, "duplicate_transaction_id")]
    assert all(
        "already appears earlier in this file" in e["detail"] and e["record"] == lines[1] for e in entries
    )


def test_a_rejected_record_does_not_claim_its_transaction_id(s3):
    # An invalid first occurrence must not make the valid second one a "duplicate" and lose it.
    valid = record(transaction_id="same-id")
    invalid = record(transaction_id="same-id", quantity=0)
    run(s3, RAW_KEY, json.dumps(invalid) + "\n" + json.dumps(valid))
    assert next(iter(processed(s3).values())).column("transaction_id").to_pylist() == ["same-id"]
    assert reasons(quarantined(s3)) == [(1, "invalid_quantity")]


def test_duplicates_are_found_across_blocks_of_a_large_file(s3, monkeypatch):
    monkeypatch.setattr(tr, "BLOCK_BYTES", 4096)
    lines = good_lines(100, seed=8)
    lines.append(lines[0])
    result = run(s3, RAW_KEY, "\n".join(lines))
    summary = result["processed"][0]
    assert summary["fast_blocks"] + summary["exact_blocks"] > 1
    assert reasons(quarantined(s3)) == [(101, "duplicate_transaction_id")]


# --- routing between the paths (their agreement: tests/test_transformer_paths.py) -------------------


def test_small_blocks_and_blocks_pyarrow_cannot_read_at_all_go_line_by_line():
    assert not tr.validate_block(b'{"transaction_id": 1}\n', 1).fast
    assert not tr.validate_block(b"not json\n" * 100, 1).fast


def test_a_block_with_a_few_bad_lines_keeps_its_good_lines_on_the_fast_path(monkeypatch):
    # GIVEN 300 good lines and three bad ones, which make pyarrow fail on the whole block
    lines = good_lines(300, seed=2)
    lines[10], lines[100], lines[200] = "garbage", lines[100][:-9], '{"quantity": 2.5}'
    block = ("\n".join(lines) + "\n").encode()
    with pytest.raises(tr._NeedsExactPathError):
        tr.read_block(block)
    # WHEN it is validated, with the exact path counting the lines it is given
    checked = []
    original = tr.validate_line

    def counting(raw):
        checked.append(raw)
        return original(raw)

    monkeypatch.setattr(tr, "validate_line", counting)
    result = tr.validate_block(block, 1)
    # THEN pyarrow read the 297 good lines, and only the three bad ones went line by line
    assert result.fast
    assert len(checked) == 3
    assert result.table.num_rows == 297
    assert [(r.line, r.reason) for r in result.rejects] == [
        (11, "malformed_json"),
        (101, "malformed_json"),
        (201, "missing_field"),
    ]


# --- events -----------------------------------------------------------------------------------------


def test_several_records_in_one_event_are_all_processed(s3):
    keys_in = [RAW_KEY.replace("1a2b3c4d", f"0000000{i}") for i in range(3)]
    for i, key in enumerate(keys_in):
        put(s3, key, "\n".join(good_lines(2 + i, seed=i)))
    result = tr.lambda_handler(s3_event(*keys_in), None)
    assert [p["source_key"] for p in result["processed"]] == keys_in
    for key in keys_in:
        assert_reconciles(s3, key)
    assert len(keys(s3, "processed/")) == 3


@pytest.mark.parametrize(
    "key",
    [
        "raw/year=2026/month=11/day=25/hand upload (1).json",
        "raw/year=2026/month=11/day=25/a+b=c.json",
        "raw/year=2026/month=11/day=25/commandes-été-ß.json",
    ],
)
def test_url_encoded_keys_are_decoded_before_use(s3, key):
    # S3 sends spaces as +, and =, + and non-ASCII percent-encoded; the sample event shows it
    assert "%3D" in load_event("s3_put_event.json")["Records"][0]["s3"]["object"]["key"]
    run(s3, key, "\n".join(good_lines(2)))
    name = tr.output_name(key)
    assert name.startswith(key.rsplit("/", 1)[-1].removesuffix(".json") + "-")
    assert keys(s3, "processed/") == [f"processed/transactions/year=2026/month=11/day=25/{name}.parquet"]


def test_the_sample_put_event_processes_its_object(s3):
    event = load_event("s3_put_event.json")
    put(s3, RAW_KEY, "\n".join(good_lines(3)))
    result = tr.lambda_handler(event, None)
    assert result["processed"][0]["source_key"] == RAW_KEY
    assert_reconciles(s3, RAW_KEY)


def test_s3_test_event_is_skipped_and_writes_nothing(s3, caplog):
    caplog.set_level(logging.INFO)
    result = tr.lambda_handler(load_event("s3_test_event.json"), None)
    assert result == {"processed": [], "skipped": [{"reason": "s3:TestEvent", "key": ""}]}
    assert keys(s3) == []
    assert any(r.getMessage() == "skipped" for r in caplog.records)


@pytest.mark.parametrize(
    "key",
    [
        f"processed/transactions/year=2026/month=11/day=25/{STEM}.parquet",
        f"quarantine/year=2026/month=11/day=25/{STEM}.jsonl",
        "raw/year=2026/month=11/day=25/notes.txt",
        "raw/year=2026/month=11/day=25/data.jsonl",
        "elsewhere/file.json",
    ],
)
def test_keys_outside_raw_or_not_json_are_skipped_without_writing(s3, key):
    # A trigger misconfigured on the whole bucket must not make the function feed on its own output.
    put(s3, key, "\n".join(good_lines(2)))
    result = tr.lambda_handler(s3_event(key), None)
    assert result["processed"] == []
    assert result["skipped"][0]["key"] == key
    assert keys(s3) == [key]


def test_an_object_deleted_before_it_is_read_is_skipped_with_a_warning(s3, caplog):
    result = tr.lambda_handler(s3_event(RAW_KEY), None)
    assert result["processed"] == []
    assert result["skipped"] == [{"reason": "object no longer exists", "key": RAW_KEY}]
    assert any(r.levelno == logging.WARNING and r.source_key == RAW_KEY for r in caplog.records)
    assert keys(s3) == []


def test_an_event_that_is_not_an_s3_notification_raises(s3):
    with pytest.raises(tr.EventError, match="Records"):
        tr.lambda_handler(load_event("scheduled_event.json"), None)


@pytest.mark.parametrize("deliveries", [2, 3])
def test_redelivered_events_replace_the_same_objects(s3, deliveries):
    # GIVEN a file with good and bad lines, its event delivered several times (S3 is at-least-once)
    lines = good_lines(10)
    lines[4] = "garbage"
    put(s3, RAW_KEY, "\n".join(lines))
    tr.lambda_handler(s3_event(RAW_KEY), None)
    first = (keys(s3), processed(s3), quarantined(s3))
    for _ in range(deliveries - 1):
        tr.lambda_handler(s3_event(RAW_KEY), None)
        snapshot = (keys(s3), processed(s3), quarantined(s3))
        # THEN every delivery leaves the very same objects with the same rows: no duplicates
        assert snapshot[0] == first[0]
        assert all(snapshot[1][k].equals(first[1][k]) for k in first[1])
        assert snapshot[2] == first[2]
    assert sum(t.num_rows for t in first[1].values()) == 9
    assert_reconciles(s3, RAW_KEY)


def test_output_goes_to_bucket_name_when_it_is_set(s3, monkeypatch):
    s3.create_bucket(Bucket="output-bucket")
    monkeypatch.setenv("BUCKET_NAME", "output-bucket")
    put(s3, RAW_KEY, "\n".join(good_lines(2)))
    tr.lambda_handler(s3_event(RAW_KEY), None)
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket="output-bucket")["Contents"]]
    assert listed == [
        f"processed/transactions/year=2026/month=11/day=25/{STEM}.parquet",
        # 2026-11-25 is a past day, which the compactor may have compacted already: it gets a marker
        tr.dirty_marker_key(date(2026, 11, 25)),
        tr.state_key(RAW_KEY),
    ]
    assert keys(s3) == [RAW_KEY]


# --- failures raise so that Lambda retries ----------------------------------------------------------


def test_s3_throttling_is_retried_by_the_clients_retry_configuration(s3):
    # GIVEN S3 answers the first two reads with 503 SlowDown
    put(s3, RAW_KEY, "\n".join(good_lines(3)))
    client = tr.s3_client()
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 6}
    calls = fail_first(client, "GetObject", 503, "SlowDown", times=2, prefix="raw/")
    # WHEN the event is handled
    tr.lambda_handler(s3_event(RAW_KEY), None)
    # THEN the client retried and the file was processed
    assert len(calls) == 3
    assert_reconciles(s3, RAW_KEY)


def test_access_denied_raises_out_of_the_handler(s3, caplog):
    put(s3, RAW_KEY, "\n".join(good_lines(3)))
    fail_first(tr.s3_client(), "GetObject", 403, "AccessDenied", times=99)
    with pytest.raises(tr.TransformerError, match=r"cannot read s3://.+/raw/.+\.json: AccessDenied"):
        tr.lambda_handler(s3_event(RAW_KEY), None)
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)
    assert keys(s3, "processed/") == []


def test_a_failed_write_raises_out_of_the_handler(s3):
    put(s3, RAW_KEY, "\n".join(good_lines(3)))
    fail_first(tr.s3_client(), "PutObject", 403, "AccessDenied", times=99, prefix="processed/")
    with pytest.raises(
        tr.TransformerError, match=r"cannot write s3://.+/processed/transactions/.+: AccessDenied"
    ):
        tr.lambda_handler(s3_event(RAW_KEY), None)


def test_a_missing_output_bucket_raises(s3, monkeypatch):
    monkeypatch.setenv("BUCKET_NAME", "no-such-output-bucket")
    put(s3, RAW_KEY, "\n".join(good_lines(3)))
    with pytest.raises(tr.TransformerError, match="NoSuchBucket"):
        tr.lambda_handler(s3_event(RAW_KEY), None)


def test_an_invalid_bucket_name_setting_is_a_clear_error():
    with pytest.raises(tr.TransformerError, match="BUCKET_NAME"):
        tr.load_config({"BUCKET_NAME": "Not A Bucket"})


# --- logs and metrics -------------------------------------------------------------------------------


def test_logs_carry_structured_fields_and_metrics_are_embedded(s3, caplog, capsys):
    caplog.set_level(logging.INFO)
    lines = good_lines(4)
    lines.append("oops")
    run(s3, RAW_KEY, "\n".join(lines))
    [done] = [r for r in caplog.records if r.getMessage() == "transformed"]
    assert (done.source_key, done.records_read, done.rows_written, done.quarantined) == (RAW_KEY, 5, 4, 1)
    assert done.duration_ms >= 0
    [emf] = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert emf["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "EcommercePipeline"
    assert (emf["RecordsRead"], emf["RecordsWritten"], emf["RecordsQuarantined"]) == (5, 4, 1)
    assert emf["RawBytes"] == len("\n".join(lines).encode())


# --- pure functions ---------------------------------------------------------------------------------


def test_blocks_are_cut_at_line_boundaries_with_their_first_line_number():
    chunks = [b'{"a": 1}\n{"b"', b': 2}\n{"c": 3}', b"\n"]
    blocks = list(tr.iter_blocks(chunks, block_bytes=8))
    assert b"".join(block for _, block, _ in blocks) == b"".join(chunks)
    assert all(block.endswith(b"\n") for _, block, _ in blocks)
    assert [first for first, _, _ in blocks] == [1, 2, 3][: len(blocks)]
    assert [newlines for _, block, newlines in blocks] == [block.count(b"\n") for _, block, _ in blocks]


@pytest.mark.parametrize("cut", range(1, 12))
def test_line_endings_are_normalised_whatever_the_chunking(cut):
    body = b"\xef\xbb\xbfa\r\nb\rc\n\r\nd\r"
    chunks = [body[i : i + cut] for i in range(0, len(body), cut)]
    assert b"".join(tr.normalize_lines(chunks)) == b"a\nb\nc\n\nd\n"


@pytest.mark.parametrize(
    ("key", "name", "quarantine_day"),
    [
        (RAW_KEY, "transactions-20261125T140500Z-1a2b3c4d-39d1685dec63", "year=2026/month=11/day=25"),
        # No date in the key: the object's LastModified date, whatever day the retry runs on
        ("raw/manual/x.json", "x-4b1da59ad04b", "year=2030/month=01/day=02"),
        # Leading _ and . are dropped (Athena skips such files); the hash still tells the keys apart
        ("raw/manual/_x.json", "x-67176137a5b7", "year=2030/month=01/day=02"),
        ("raw/manual/.x.json", "x-e2cd435ae02e", "year=2030/month=01/day=02"),
        # A name the compactor uses cannot come out: the hash suffix is always there
        (
            "raw/year=2026/month=12/day=01/compacted-20261201.json",
            "compacted-20261201-5e71451c7327",
            "year=2026/month=12/day=01",
        ),
        # An impossible date in the key falls back to LastModified
        ("raw/year=2026/month=02/day=30/x.json", "x-f528b64358fe", "year=2030/month=01/day=02"),
    ],
)
def test_output_keys_derive_only_from_the_raw_key(key, name, quarantine_day):
    last_modified = datetime(2030, 1, 2, 23, 59, 59, tzinfo=UTC)
    plan = tr.plan_outputs(key, last_modified)
    assert hashlib.sha256(key.encode()).hexdigest()[:12] == name.rsplit("-", 1)[1]
    assert plan.name == name
    assert plan.quarantine_key() == f"quarantine/{quarantine_day}/{name}.jsonl"
    assert (
        plan.processed_key(date(2026, 1, 9))
        == f"processed/transactions/year=2026/month=01/day=09/{name}.parquet"
    )


def test_same_file_name_in_two_folders_gives_two_names_and_long_names_stay_within_s3_limits():
    assert tr.output_name("raw/year=2026/month=12/day=01/upload.json") != tr.output_name(
        "raw/manual/upload.json"
    )
    long_key = "raw/manual/" + "é" * 400 + ".json"  # 800 bytes of stem
    plan = tr.plan_outputs(long_key, datetime(2030, 1, 2, tzinfo=UTC))
    assert len(plan.processed_key(date(2030, 1, 2)).encode()) < 300
    assert plan.name == "é" * 75 + "-" + hashlib.sha256(long_key.encode()).hexdigest()[:12]


# --- duplicate detection state ----------------------------------------------------------------------


def test_fingerprints_depend_only_on_the_string():
    values = ["a", "bb", "", "transaction-1", "é", "x" * 100, "a"]
    whole = tr.fingerprints(pa.array(values))
    sliced = tr.fingerprints(pa.array(["pad", *values])[1:])
    one_by_one = [tr.fingerprints(pa.array([v])) for v in values]
    for i in range(len(values)):
        assert (whole[0][i], whole[1][i]) == (sliced[0][i], sliced[1][i])
        assert (whole[0][i], whole[1][i]) == (one_by_one[i][0][0], one_by_one[i][1][0])
    pairs = {(int(a), int(b)) for a, b in zip(*whole, strict=True)}
    assert len(pairs) == len(set(values))


def test_fingerprints_of_many_distinct_ids_do_not_collide():
    ids = [f"id-{i}" for i in range(200_000)] + [str(i) for i in range(50_000)]
    h1, h2 = tr.fingerprints(pa.array(ids))
    assert len(set(zip(h1.tolist(), h2.tolist(), strict=True))) == len(ids)
    assert len(set(h1.tolist())) == len(ids)


def test_seen_ids_find_repeats_within_and_across_blocks():
    seen = tr.SeenIds()
    assert seen.split(pa.array(["a", "b", "a", "c", "a"])).tolist() == [False, False, True, False, True]
    for _ in range(40):  # enough blocks for runs to merge
        seen.split(pa.array([f"n{random.random()}" for _ in range(50)]))
    assert seen.split(pa.array(["c", "d", "b"])).tolist() == [True, False, True]
    assert len(seen) == 3 + 40 * 50 + 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from([f"t{i}" for i in range(40)]), max_size=30), max_size=25))
def test_seen_ids_agree_with_a_set_even_when_first_hashes_collide(blocks):
    # The first hash is cut to 2 bits, so most ids share it with others: the runs, their merges and the
    # second-hash confirmation must still give exactly what a set of the strings gives.
    real = tr.fingerprints

    def colliding(strings: pa.Array) -> tuple[Any, Any]:
        h1, h2 = real(strings)
        return h1 % 4, h2

    seen, expected = tr.SeenIds(), set[str]()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tr, "fingerprints", colliding)
        for block in blocks:
            want = []
            for value in block:
                want.append(value in expected)
                expected.add(value)
            assert seen.split(pa.array(block, pa.string())).tolist() == want
    assert len(seen) == len(expected)


def test_a_file_whose_blocks_start_with_null_lands_its_good_rows(s3, monkeypatch):
    # GIVEN a file in blocks of about 50 lines, every other line the JSON value null, so that blocks start
    # with it (pyarrow 24's reader crashes the process on such a block: every retry would fail)
    monkeypatch.setattr(tr, "BLOCK_BYTES", 16_000)
    monkeypatch.setattr(tr, "_chunks", lambda body: body.iter_chunks(4096))
    starts: list[bytes] = []
    real = tr.validate_block

    def validate_block(block: bytes, *args: Any) -> Any:
        starts.append(block[:8])
        return real(block, *args)

    monkeypatch.setattr(tr, "validate_block", validate_block)
    lines = good_lines(300, seed=8)
    for index in range(0, 600, 2):
        lines.insert(index, "null" + " " * 400)  # long enough to be where a block is cut
    # WHEN it is transformed
    result = run(s3, RAW_KEY, "\n".join(lines))
    # THEN every null line is quarantined and every record is written
    assert sum(start.startswith(b"null") for start in starts) >= 2
    assert result["processed"][0]["fast_blocks"] >= len(starts) - 1  # all but a short last block
    assert [e["reason"] for e in quarantined(s3)] == ["not_an_object"] * 300
    assert sum(t.num_rows for t in processed(s3).values()) == 300


def test_a_big_object_in_many_blocks_finds_repeats_across_them(s3, monkeypatch):
    # GIVEN an object processed in a working directory, in many blocks
    monkeypatch.setattr(tr, "IN_MEMORY_BYTES", 1000)
    monkeypatch.setattr(tr, "BLOCK_BYTES", 20_000)  # about 70 lines: blocks for pyarrow
    monkeypatch.setattr(tr, "_chunks", lambda body: body.iter_chunks(4096))
    lines = good_lines(600, seed=21)
    lines.append(lines[3])  # a repeat of a row of the first block
    lines.append(lines[590])  # and of one of the last
    # WHEN it is transformed
    result = run(s3, RAW_KEY, "\n".join(lines))
    # THEN both repeats are quarantined and every other row is written once
    assert result["processed"][0]["fast_blocks"] >= 5
    assert reasons(quarantined(s3)) == [(601, "duplicate_transaction_id"), (602, "duplicate_transaction_id")]
    table = next(iter(processed(s3).values()))
    assert table.num_rows == 600
    assert len(set(table.column("transaction_id").to_pylist())) == 600


def test_the_transformer_never_makes_pyarrow_import_pandas(tmp_path):
    # pyarrow imports pandas, when installed (the layer has it), on its first conversion of a Python value:
    # about 0.3 s and 47 MiB on every cold start. The transformer builds its arrays without one, on every
    # path: a small file, a big clean one, a big one whose values break each vectorised rule, one with
    # lines pyarrow cannot read, and a file that is one JSON array.
    bad_values = [
        record(product_name="  "),
        record(timestamp="2026-02-30T10:00:00Z"),
        record(timestamp="2026-11-25 10:00:00+05:30"),
        record(quantity=0),
        record(price=-1.0, total_amount=-2.0, quantity=2),
        record(price="24.99", total_amount="24.99", quantity=1),
        record(price=24.99, total_amount=1.0),
    ]
    big_bad = "\n".join([*good_lines(100, seed=4), *map(json.dumps, bad_values), "not json", "[1]"])
    script = f"""
import sys, importlib.util, pathlib
spec = importlib.util.spec_from_file_location("t", {str(ROOT / "lambda/transformer/lambda_function.py")!r})
t = importlib.util.module_from_spec(spec); sys.modules["t"] = t; spec.loader.exec_module(t)
small = {gen.to_json_lines(good_records(3))!r}
big = {gen.to_json_lines(good_records(300, seed=4))!r}
big_bad = {big_bad.encode()!r}
array = {json.dumps([record(), record(quantity=0)]).encode()!r}
t.transform_stream([small], "raw/small.json", None)
t.transform_stream([big], "raw/big.json", pathlib.Path({str(tmp_path)!r}), size_hint=len(big))
result = t.transform_stream([big_bad], "raw/bad.json", None)
assert result.fast_blocks == 1 and result.quarantined == len({bad_values!r}) - 1 + 2, result
t.transform_stream([array], "raw/array.json", None)
print("pandas" in sys.modules)
"""
    # The script is this test's own text, run by this interpreter.
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)  # noqa: S603
    assert result.stdout.strip() == "False"
