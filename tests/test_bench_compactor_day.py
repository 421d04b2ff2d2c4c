"""bench.compactor_day's own parts: the day it builds is the transformer's, and a tiny run reports its figures
(no timing asserted here: the figures live in the benchmark's output)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bench import compactor_day
from bench import run as bench_run
from tests.compactor_support import output_name
from tests.conftest import load_lambda


def test_the_built_day_has_the_transformers_schema_names_metadata_and_consistent_values(tmp_path: Path):
    transformer, generator = load_lambda("transformer"), load_lambda("generator")

    files, late = compactor_day.build_day(tmp_path, rate=500, files=4, seed=1)

    assert len(files) == 4
    seen: set[str] = set()
    prices = {p.product_id: (p.name, p.category, p.price) for p in generator.CATALOG}
    for index, (key, path) in enumerate(files):
        parquet = pq.ParquetFile(path)
        table = parquet.read()
        raw_key = parquet.schema_arrow.metadata[b"source_key"].decode()
        run_time = datetime(2026, 11, 25, tzinfo=UTC) + timedelta(minutes=5 * (index + 1))
        assert raw_key.startswith(f"raw/year=2026/month=11/day=25/transactions-{run_time:%Y%m%dT%H%M%SZ}-")
        assert key == f"processed/transactions/year=2026/month=11/day=25/{output_name(raw_key)}.parquet"
        assert table.schema.remove_metadata().equals(transformer.PROCESSED_SCHEMA)
        assert table.num_rows == 500
        rows = table.to_pylist()
        for row in rows:
            assert run_time - timedelta(minutes=5) <= row["timestamp"] < run_time
            assert (row["product_name"], row["category"], row["price"]) == prices[row["product_id"]]
            assert row["total_amount"] == row["price"] * row["quantity"]
            assert 1 <= row["quantity"] <= 5
            assert (row["hour"], row["day_of_week"]) == (row["timestamp"].hour, row["timestamp"].weekday())
            assert isinstance(row["price"], Decimal)
        seen.update(pc.unique(table["transaction_id"]).to_pylist())
    assert len(seen) == 2_000
    # the late file: the same day, other transactions
    late_table = pq.read_table(late[1])
    assert late[0].startswith("processed/transactions/year=2026/month=11/day=25/late-upload-20261125-")
    assert {t.date().isoformat() for t in late_table.column("timestamp").to_pylist()} == {"2026-11-25"}
    assert not seen & set(late_table.column("transaction_id").to_pylist())
    # the same seed gives the same files: they are made once and reused
    assert compactor_day.build_day(tmp_path, rate=500, files=4, seed=1) == (files, late)


@pytest.mark.integration
def test_a_tiny_run_compacts_the_day_in_a_child_and_reports_each_figure_next_to_its_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(compactor_day, "OUT", tmp_path)

    report = compactor_day.measure(
        rate=50, files=6, seed=2, s3_mib_per_s=50.0, request_ms=20.0, part_rows=1_000
    )

    first, rewrite = report["runs"]["first"], report["runs"]["rewrite"]
    assert (first["result"]["action"], first["result"]["rows"], first["result"]["parts"]) == (
        "compacted",
        300,
        0,
    )
    assert (rewrite["result"]["rows"], rewrite["result"]["files_merged"]) == (350, 1)
    assert sorted(report["compacted_files"]) == ["compacted-20261125.parquet"]
    for run in (first, rewrite):
        assert run["peak_rss_mib"] > 0
        assert run["s3_written_bytes"] > 0
        assert run["estimate"]["lambda_s"] >= run["estimate"]["cpu_on_lambda_s"] > 0
        assert run["s3_requests"]["ListObjectsV2"] >= 2  # the markers and the partition
    assert report["peak"]["rss_mib"] == max(first["peak_rss_mib"], rewrite["peak_rss_mib"])
    assert {"memory_mb", "tmp_mb", "timeout_s", "part_rows"} <= set(report["limits"])
    table = compactor_day.render(report)
    assert "memory (VmHWM)" in table
    assert "ephemeral storage, /tmp" in table


@pytest.mark.integration
def test_a_day_holding_more_than_the_files_built_stops_the_measurement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # GIVEN moto already holds, in this process, the bucket with a dirty-day marker for the day (as after
    # make bench's transformer runs): moto keeps objects per process, whatever the server
    monkeypatch.setattr(compactor_day, "OUT", tmp_path)
    marker = b'{"token": "t", "reason": "test", "source_key": null, "drop_unclaimed": false}'
    with bench_run.moto_server() as endpoint:
        s3 = bench_run.s3_for(endpoint)
        s3.create_bucket(Bucket=bench_run.BUCKET)
        s3.put_object(
            Bucket=bench_run.BUCKET, Key="state/compaction/dirty/year=2026/month=11/day=25.json", Body=marker
        )

        # WHEN the compactor's day is measured here THEN it refuses figures of other work
        with pytest.raises(
            RuntimeError, match=r"merged 0 files into 0 rows \(expected 3 into 150\) and left 3"
        ):
            compactor_day.measure(
                rate=50, files=3, seed=2, s3_mib_per_s=50.0, request_ms=20.0, part_rows=1_000
            )
