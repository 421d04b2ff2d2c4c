"""The compactor: one file per finished day, and no row lost or doubled across re-runs, late files,
redelivered events and crashes between its steps."""

from __future__ import annotations

import io
import json
import random
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench._child import s3_event
from tests.conftest import BUCKET, load_event, load_lambda

compactor = load_lambda("compactor")

DAY = date(2026, 11, 25)
PREFIX = "processed/transactions/year=2026/month=11/day=25/"
COMPACTED = f"{PREFIX}compacted-20261125.parquet"
PRICES = [Decimal("24.99"), Decimal("0.01"), Decimal("99999999.99"), Decimal("3.25")]


def make_rows(n: int, seed: int, day: date = DAY) -> pa.Table:
    """`n` rows in the processed table's exact types, with values drawn from `seed`."""
    rng = random.Random(seed)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    stamps = [start + timedelta(milliseconds=rng.randrange(86_400_000)) for _ in range(n)]
    quantities = [rng.randint(1, 5) for _ in range(n)]
    prices = [rng.choice(PRICES[:2] + PRICES[3:]) for _ in range(n)]
    return pa.table(
        {
            "transaction_id": [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)],
            "timestamp": stamps,
            "customer_id": [f"CUST-{rng.randint(1, 500):05d}" for _ in range(n)],
            "product_id": ["PROD-0001"] * n,
            "product_name": ["Wireless Mouse"] * n,
            "category": ["Electronics"] * n,
            "quantity": quantities,
            "price": prices,
            "total_amount": [p * q for p, q in zip(prices, quantities, strict=True)],
            "hour": [s.hour for s in stamps],
            "day_of_week": [s.weekday() for s in stamps],
        },
        schema=compactor.SCHEMA,
    )


def stem_key(stem: str, day: date = DAY) -> str:
    return f"processed/transactions/year={day:%Y}/month={day:%m}/day={day:%d}/{stem}.parquet"


def put_parquet(s3: Any, key: str, table: pa.Table) -> None:
    """A per-raw-file Parquet object as the transformer writes it (contract layout and types)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="snappy")
    s3.put_object(Bucket=BUCKET, Key=key, Body=buffer.getvalue())


def keys(s3: Any, prefix: str = PREFIX) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]


def what_a_query_sees(s3: Any, prefix: str = PREFIX) -> pa.Table:
    """Every row of every table file under the partition, as Athena reads it (names with _ or . skipped)."""
    tables = [
        pq.read_table(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read())).cast(compactor.SCHEMA)
        for k in keys(s3, prefix)
        if not k.rsplit("/", 1)[1].startswith(("_", "."))
    ]
    return pa.concat_tables(tables) if tables else compactor.SCHEMA.empty_table()


def sorted_rows(table: pa.Table) -> pa.Table:
    return table.cast(compactor.SCHEMA).sort_by([("transaction_id", "ascending"), ("timestamp", "ascending")])


def assert_exactly(s3: Any, *expected: pa.Table) -> None:
    """The partition holds exactly the expected rows, each once, with the contract's types and values."""
    seen = what_a_query_sees(s3)
    want = pa.concat_tables(expected)
    assert seen.num_rows == want.num_rows
    assert sorted_rows(seen).equals(sorted_rows(want))


def manifest_of(s3: Any, key: str = COMPACTED) -> dict[str, Any]:
    metadata = pq.read_schema(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())).metadata
    document: dict[str, Any] = json.loads(metadata[compactor.MANIFEST_KEY])
    return document


def config(**overrides: Any) -> Any:
    values: dict[str, Any] = {
        "bucket": BUCKET,
        "after_hours": 2.0,
        "lookback_days": 7,
        "row_group_rows": 1_000_000,
    }
    values.update(overrides)
    return compactor.Config(**values)


class FailingS3:
    """The real client, except that one operation fails after `allow` successful calls (a crash)."""

    def __init__(self, client: Any, operation: str, allow: int = 0, before: Callable[[], None] | None = None):
        self._client = client
        self._operation = operation
        self._allow = allow
        self._before = before
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            if name == self._operation:
                if self._before is not None:
                    self._before()
                    self._before = None
                if self._allow <= 0:
                    raise RuntimeError(f"simulated crash in {name}")
                self._allow -= 1
            return method(*args, **kwargs)

        return call


class RecordingS3(FailingS3):
    def __init__(self, client: Any):
        super().__init__(client, operation="", allow=0)


@pytest.fixture
def day_of_files(s3: Any) -> list[pa.Table]:
    """GIVEN a day of small per-raw-file Parquet files (1 to 3 rows each, as in the normal case)."""
    tables = []
    for i in range(12):
        table = make_rows(1 + i % 3, seed=i)
        put_parquet(s3, stem_key(f"transactions-20261125T{i:02d}0500Z-{i:08x}"), table)
        tables.append(table)
    return tables


def test_compaction_turns_a_day_of_small_files_into_one_file_holding_each_row_once(s3, day_of_files):
    other_day = make_rows(2, seed=99, day=DAY + timedelta(days=1))
    put_parquet(s3, stem_key("transactions-20261126T000500Z-0000ffff", DAY + timedelta(days=1)), other_day)

    result = compactor.compact_day(s3, config(), DAY)

    assert result["action"] == "compacted"
    assert result["files_merged"] == 12
    assert result["deleted"] == 12
    assert keys(s3) == [COMPACTED]
    assert_exactly(s3, *day_of_files)
    schema = pq.read_schema(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=COMPACTED)["Body"].read()))
    assert schema.remove_metadata().equals(compactor.SCHEMA)
    assert [s["rows"] for s in manifest_of(s3)["sources"]] == [t.num_rows for t in day_of_files]
    # The next day is not touched.
    assert len(keys(s3, "processed/transactions/year=2026/month=11/day=26/")) == 1


def test_compacted_file_keeps_exact_decimals_millisecond_utc_timestamps_and_int32s(s3):
    table = make_rows(3, seed=1)
    table = table.set_column(7, "price", pa.array(PRICES[1:4], pa.decimal128(10, 2)))
    table = table.set_column(8, "total_amount", pa.array(PRICES[1:4], pa.decimal128(10, 2)))
    put_parquet(s3, stem_key("hand-upload"), table)

    compactor.compact_day(s3, config(), DAY)

    body = s3.get_object(Bucket=BUCKET, Key=COMPACTED)["Body"].read()
    back = pq.read_table(io.BytesIO(body))
    assert back.schema.field("timestamp").type == pa.timestamp("ms", tz="UTC")
    assert back.schema.field("quantity").type == pa.int32()
    assert back.column("price").to_pylist() == [Decimal("0.01"), Decimal("99999999.99"), Decimal("3.25")]
    assert back.column("timestamp").to_pylist() == table.column("timestamp").to_pylist()
    assert pq.ParquetFile(io.BytesIO(body)).metadata.row_group(0).column(0).compression == "SNAPPY"


def test_rerun_with_nothing_new_writes_nothing_and_deletes_nothing(s3, day_of_files):
    compactor.compact_day(s3, config(), DAY)
    before = s3.head_object(Bucket=BUCKET, Key=COMPACTED)
    recording = RecordingS3(s3)

    result = compactor.compact_day(recording, config(), DAY)

    assert result["action"] == "noop"
    assert set(recording.calls) <= {"get_paginator"}
    after = s3.head_object(Bucket=BUCKET, Key=COMPACTED)
    assert (after["ETag"], after["LastModified"]) == (before["ETag"], before["LastModified"])
    assert_exactly(s3, *day_of_files)


def test_late_file_after_compaction_is_merged_by_the_next_run(s3, day_of_files):
    compactor.compact_day(s3, config(), DAY)
    late = make_rows(2, seed=500)
    put_parquet(s3, stem_key("transactions-20261126T000200Z-0badcafe"), late)
    assert_exactly(s3, *day_of_files, late)  # between runs a query already sees it, once

    result = compactor.compact_day(s3, config(), DAY)

    assert result["action"] == "compacted"
    assert keys(s3) == [COMPACTED]
    assert_exactly(s3, *day_of_files, late)
    assert len(manifest_of(s3)["sources"]) == 13


def test_redelivered_event_rewriting_a_compacted_file_with_the_same_rows_leaves_them_once(s3, day_of_files):
    compactor.compact_day(s3, config(), DAY)
    # The transformer handles the same raw object again: same key, same bytes, same ETag.
    put_parquet(s3, stem_key("transactions-20261125T040500Z-00000004"), day_of_files[4])
    doubled = what_a_query_sees(s3)
    assert doubled.num_rows == sum(t.num_rows for t in day_of_files) + day_of_files[4].num_rows

    result = compactor.compact_day(s3, config(), DAY)

    assert result["action"] == "finished"  # already inside the compacted file: only deleted
    assert keys(s3) == [COMPACTED]
    assert_exactly(s3, *day_of_files)


def test_redelivered_event_with_changed_rows_replaces_the_old_copy_of_that_file(s3, day_of_files):
    compactor.compact_day(s3, config(), DAY)
    # The raw object was replaced by hand and processed again: same output key, new content.
    replacement = make_rows(5, seed=404)
    put_parquet(s3, stem_key("transactions-20261125T040500Z-00000004"), replacement)

    result = compactor.compact_day(s3, config(), DAY)

    assert result["action"] == "compacted"
    assert keys(s3) == [COMPACTED]
    assert_exactly(s3, *day_of_files[:4], replacement, *day_of_files[5:])


def test_replacing_files_in_the_middle_of_a_multi_batch_compacted_file_keeps_every_other_row(
    s3, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(compactor, "READ_BATCH_ROWS", 7)  # batch edges fall inside sources
    tables = [make_rows(5 + i, seed=i) for i in range(6)]
    for i, table in enumerate(tables):
        put_parquet(s3, stem_key(f"s{i}"), table)
    compactor.compact_day(s3, config(), DAY)
    new1, new4 = make_rows(3, seed=101), make_rows(9, seed=104)
    put_parquet(s3, stem_key("s1"), new1)
    put_parquet(s3, stem_key("s4"), new4)

    compactor.compact_day(s3, config(), DAY)

    assert_exactly(s3, tables[0], new1, tables[2], tables[3], new4, tables[5])
    assert [s["key"] for s in manifest_of(s3)["sources"]] == [stem_key(f"s{i}") for i in (0, 2, 3, 5, 1, 4)]


@pytest.mark.parametrize("deletes_before_crash", [0, 5])
def test_crash_after_writing_before_deleting_all_sources_is_completed_by_the_rerun(
    s3, day_of_files, deletes_before_crash
):
    crashing = FailingS3(s3, "delete_object", allow=deletes_before_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        compactor.compact_day(crashing, config(), DAY)
    # The window the README documents: the compacted file and the undeleted sources are both visible.
    undeleted = day_of_files[deletes_before_crash:]
    assert what_a_query_sees(s3).num_rows == sum(t.num_rows for t in [*day_of_files, *undeleted])

    result = compactor.compact_day(s3, config(), DAY)

    assert result["action"] == "finished"
    assert result["deleted"] == 12 - deletes_before_crash
    assert keys(s3) == [COMPACTED]
    assert_exactly(s3, *day_of_files)
    assert compactor.compact_day(s3, config(), DAY)["action"] == "noop"


def test_crash_while_writing_the_compacted_file_leaves_every_source_in_place(s3, day_of_files):
    compactor.compact_day(s3, config(), DAY)
    late = make_rows(3, seed=77)
    put_parquet(s3, stem_key("late"), late)
    with pytest.raises(RuntimeError, match="simulated crash"):
        compactor.compact_day(FailingS3(s3, "put_object"), config(), DAY)
    assert_exactly(s3, *day_of_files, late)

    compactor.compact_day(s3, config(), DAY)

    assert keys(s3) == [COMPACTED]
    assert_exactly(s3, *day_of_files, late)


def test_source_rewritten_while_the_compactor_runs_is_kept_and_merged_by_the_next_run(s3, day_of_files):
    replacement = make_rows(4, seed=321)
    key = stem_key("transactions-20261125T000500Z-00000000")

    def transformer_rewrites_a_source() -> None:
        put_parquet(s3, key, replacement)

    racing = FailingS3(s3, "delete_object", allow=100, before=transformer_rewrites_a_source)
    result = compactor.compact_day(racing, config(), DAY)

    assert result["kept_changed"] == 1
    assert key in keys(s3)
    compactor.compact_day(s3, config(), DAY)
    assert keys(s3) == [COMPACTED]
    assert_exactly(s3, replacement, *day_of_files[1:])


def test_a_concurrent_compactor_run_that_wrote_first_makes_this_one_stop_without_deleting(s3, day_of_files):
    def other_run_wins() -> None:
        compactor.compact_day(s3, config(), DAY)

    racing = FailingS3(s3, "put_object", allow=1, before=other_run_wins)
    with pytest.raises(compactor.ConcurrentChangeError, match="changed during this run"):
        compactor.compact_day(racing, config(), DAY)

    assert "delete_object" not in racing.calls
    assert keys(s3) == [COMPACTED]
    assert_exactly(s3, *day_of_files)


def test_a_file_with_another_schema_stops_the_run_with_an_error_naming_it(s3, day_of_files):
    bad = make_rows(2, seed=3).set_column(7, "price", pa.array([1.5, 2.5], pa.float64()))
    put_parquet(s3, stem_key("float-prices"), bad)

    with pytest.raises(compactor.SchemaMismatchError, match=r"float-prices\.parquet: column price is double"):
        compactor.compact_day(s3, config(), DAY)

    assert COMPACTED not in keys(s3)
    assert len(keys(s3)) == 13


def test_a_foreign_file_under_the_compacted_name_is_refused_not_overwritten(s3, day_of_files):
    put_parquet(s3, COMPACTED, make_rows(1, seed=8))  # a raw file named compacted-20261125.json

    with pytest.raises(compactor.ManifestError, match="not written by the compactor"):
        compactor.compact_day(s3, config(), DAY)
    assert len(keys(s3)) == 13


def test_row_groups_are_cut_at_the_configured_row_count(s3):
    tables = [make_rows(700, seed=i) for i in range(4)]
    for i, table in enumerate(tables):
        put_parquet(s3, stem_key(f"big-{i}"), table)

    compactor.compact_day(s3, config(row_group_rows=1_000), DAY)

    body = s3.get_object(Bucket=BUCKET, Key=COMPACTED)["Body"].read()
    meta = pq.ParquetFile(io.BytesIO(body)).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [1000, 1000, 800]
    assert_exactly(s3, *tables)


def test_an_empty_or_missing_partition_is_a_noop(s3):
    assert compactor.compact_day(s3, config(), DAY)["action"] == "noop"
    assert keys(s3, "processed/") == []


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"time": "2026-11-26T03:00:00Z"}, [date(2026, 11, 23), date(2026, 11, 24), date(2026, 11, 25)]),
        # Before the lag has passed, yesterday is not finished yet.
        ({"time": "2026-11-26T01:00:00Z"}, [date(2026, 11, 22), date(2026, 11, 23), date(2026, 11, 24)]),
        ({"time": "2026-11-26T03:00:00Z", "date": "2026-10-01"}, [date(2026, 10, 1)]),
    ],
)
def test_days_come_from_the_schedule_time_minus_the_lag_or_from_an_explicit_date(event, expected):
    days = compactor.days_to_compact(event, datetime(2030, 1, 1, tzinfo=UTC), config(lookback_days=3))
    assert days == expected


def test_an_explicit_date_that_is_not_finished_is_refused():
    with pytest.raises(compactor.DayNotFinishedError, match="2026-11-25 is not finished"):
        compactor.days_to_compact({"date": "2026-11-25"}, datetime(2026, 11, 26, 1, 0, tzinfo=UTC), config())


@pytest.mark.parametrize("bad", ["25/11/2026", "2026-13-01", 20261125])
def test_an_unreadable_date_is_a_named_event_error(bad):
    with pytest.raises(compactor.EventError, match="'date' must be a day as YYYY-MM-DD"):
        compactor.days_to_compact({"date": bad}, datetime(2026, 11, 26, tzinfo=UTC), config())


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "BUCKET_NAME is required"),
        ({"BUCKET_NAME": "b", "COMPACT_AFTER_HOURS": "soon"}, "COMPACT_AFTER_HOURS must be a number"),
        ({"BUCKET_NAME": "b", "COMPACT_LOOKBACK_DAYS": "0"}, "COMPACT_LOOKBACK_DAYS must be between"),
        ({"BUCKET_NAME": "b", "COMPACT_ROW_GROUP_ROWS": "1500.5"}, "must be whole numbers"),
    ],
)
def test_bad_configuration_is_a_named_error(env, message):
    with pytest.raises(compactor.ConfigError, match=message):
        compactor.load_config(env)


@pytest.mark.integration
def test_handler_on_the_sample_schedule_event_compacts_yesterday_and_reports_metrics(
    s3, day_of_files, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("BUCKET_NAME", BUCKET)
    compactor.s3_client.cache_clear()
    event = load_event("compactor_scheduled_event.json")
    try:
        result = compactor.lambda_handler(event, None)
    finally:
        compactor.s3_client.cache_clear()

    by_day = {r["date"]: r for r in result["days"]}
    assert len(by_day) == 7
    assert by_day["2026-11-25"]["action"] == "compacted"
    assert {r["action"] for d, r in by_day.items() if d != "2026-11-25"} == {"noop"}
    assert_exactly(s3, *day_of_files)
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert emf[-1]["RowsCompacted"] == sum(t.num_rows for t in day_of_files)
    assert emf[-1]["FilesCompacted"] == 12
    assert emf[-1]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "EcommercePipeline"


def test_manifest_entries_sum_to_the_rows_of_the_compacted_file(s3, day_of_files):
    compactor.compact_day(s3, config(), DAY)
    manifest = manifest_of(s3)
    assert manifest["rows"] == sum(s["rows"] for s in manifest["sources"]) == what_a_query_sees(s3).num_rows
    assert Path(manifest["partition"]).as_posix() + "/" == PREFIX


def test_the_sidecar_manifest_outside_the_table_lists_each_raw_file_with_its_rows(s3, day_of_files):
    compactor.compact_day(s3, config(), DAY)

    body = s3.get_object(
        Bucket=BUCKET, Key="compaction/transactions/year=2026/month=11/day=25/manifest.jsonl"
    )
    lines = [json.loads(line) for line in body["Body"].read().decode().splitlines()]
    assert [line["row_count"] for line in lines] == [t.num_rows for t in day_of_files]
    assert lines[0]["file_stem"] == "transactions-20261125T000500Z-00000000"
    assert {line["compacted_key"] for line in lines} == {COMPACTED}


def test_crash_between_the_compacted_file_and_its_sidecar_is_completed_by_the_rerun(s3, day_of_files):
    with pytest.raises(RuntimeError, match="simulated crash"):
        compactor.compact_day(FailingS3(s3, "put_object", allow=1), config(), DAY)
    assert len(keys(s3)) == 13  # compacted file written, nothing deleted yet

    result = compactor.compact_day(s3, config(), DAY)

    assert result["action"] == "finished"
    assert keys(s3) == [COMPACTED]
    assert_exactly(s3, *day_of_files)
    assert keys(s3, "compaction/") == ["compaction/transactions/year=2026/month=11/day=25/manifest.jsonl"]


@pytest.mark.integration
def test_real_pipeline_redelivery_after_compaction_leaves_every_raw_record_once(
    s3, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """GIVEN a day written by the real generator and transformer and compacted, WHEN S3 redelivers the
    event of one raw file, THEN the transformer skips content it already processed, so nothing is written
    and each raw record is in the table once; WHEN a replay forces it, the rewrite is byte-identical (same
    ETag) to the copy inside the compacted file, so the next run only deletes it."""
    generator, transformer = load_lambda("generator"), load_lambda("transformer")
    monkeypatch.setattr(transformer, "s3_client", lambda: s3)
    run_config = generator.Config(bucket=BUCKET, transactions_per_run=3, seed=42)
    raw_keys = []
    for minute in range(5, 24 * 60, 120):
        tick = datetime(2026, 11, 25, tzinfo=UTC) + timedelta(minutes=minute)
        key, body, _ = generator.generate_run(run_config, tick)
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        transformer.lambda_handler(s3_event(BUCKET, key), None)
        raw_keys.append(key)
    expected = what_a_query_sees(s3)
    compactor.compact_day(s3, config(), DAY)
    name = transformer.output_name(raw_keys[3])

    redelivered = transformer.lambda_handler(s3_event(BUCKET, raw_keys[3]), None)
    assert redelivered["processed"] == []
    assert keys(s3) == [COMPACTED]
    forced = transformer.lambda_handler({**s3_event(BUCKET, raw_keys[3]), "force": True}, None)
    assert len(forced["processed"]) == 1
    assert what_a_query_sees(s3).num_rows > expected.num_rows  # the window until the next run
    result = compactor.compact_day(s3, config(), DAY)

    assert result["action"] == "finished"
    assert keys(s3) == [COMPACTED]
    assert sorted_rows(what_a_query_sees(s3)).equals(sorted_rows(expected))
    assert name in {s["key"].rsplit("/", 1)[1].removesuffix(".parquet") for s in manifest_of(s3)["sources"]}
    capsys.readouterr()
