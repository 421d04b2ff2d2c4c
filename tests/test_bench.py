"""The benchmark's own parts: seeded data, the bare reference and the goal table (no timing here)."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bench import data, reference
from bench import run as bench_run
from bench._child import s3_event
from tests.conftest import BUCKET, load_lambda


def test_generated_data_is_a_pure_function_of_the_seed(tmp_path: Path):
    first = data.clean_file(tmp_path / "a", 2_500, seed=7, workers=1)
    again = data.clean_file(tmp_path / "b", 2_500, seed=7, workers=1)
    other = data.clean_file(tmp_path / "c", 2_500, seed=8, workers=1)

    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    lines = first.read_bytes().splitlines()
    assert len(lines) == 2_500
    assert len({json.loads(line)["transaction_id"] for line in lines}) == 2_500
    assert {json.loads(line)["timestamp"][:10] for line in lines} == {"2026-11-25"}


def test_every_generated_record_passes_the_transformers_validation(tmp_path: Path):
    transformer = load_lambda("transformer")
    path = data.clean_file(tmp_path, 1_000, seed=3, workers=1)

    results = [transformer.validate_line(line) for line in path.read_text(encoding="utf-8").splitlines()]

    assert not [r for r in results if isinstance(r, transformer.Reject)]


def test_the_malformed_file_has_exactly_one_bad_json_line_in_a_hundred(tmp_path: Path):
    clean = data.clean_file(tmp_path, 1_000, seed=5, workers=1)
    bad = data.malformed_file(clean)

    lines = bad.read_bytes().splitlines()
    broken = []
    for number, line in enumerate(lines):
        try:
            json.loads(line)
        except ValueError:
            broken.append(number)
    assert len(lines) == 1_000
    assert broken == list(range(50, 1_000, 100))


def test_the_bare_reference_writes_the_same_rows_and_types_as_the_transformer(
    s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    transformer = load_lambda("transformer")
    raw = data.clean_file(tmp_path, 300, seed=11, workers=1)
    key = "raw/year=2026/month=11/day=25/transactions-20261125T120000Z-0000012c.json"
    s3.put_object(Bucket=BUCKET, Key=key, Body=raw.read_bytes())

    rows = reference.transform(s3, BUCKET, key)
    monkeypatch.setattr(transformer, "s3_client", lambda: s3)
    transformer.lambda_handler(s3_event(BUCKET, key), None)

    def table(k: str):
        return pq.read_table(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()))

    ours = table("bench-reference/transactions-20261125T120000Z-0000012c.parquet")
    theirs = table(f"processed/transactions/year=2026/month=11/day=25/{transformer.output_name(key)}.parquet")
    assert rows == 300
    assert ours.schema.remove_metadata().equals(theirs.schema.remove_metadata())
    assert ours.equals(theirs)


def _args(**extra: object) -> argparse.Namespace:
    return argparse.Namespace(records=1_000_000, big_records=10_000_000, **extra)


@pytest.mark.parametrize(("transformer_s", "expected"), [(2.4, True), (2.6, False)])
def test_the_throughput_goal_passes_at_most_one_and_a_quarter_times_the_reference(transformer_s, expected):
    results = {
        "big_object": {
            "reference": {"work_s": 2.0, "peak_rss_mib": 400.0},
            "transformer": {"work_s": transformer_s, "peak_rss_mib": 200.0},
            "raw_mib": 260.0,
        }
    }

    rows = bench_run.figures(results, _args())

    throughput = next(f for f in rows if f.goal_id == "1")
    memory = next(f for f in rows if f.goal_id == "2")
    assert throughput.passed is expected
    assert memory.passed is True
    assert ("FAIL" in bench_run.render(rows)) is not expected


def test_a_compaction_that_changes_the_answers_fails_its_goal():
    side = {
        "files": 288,
        "total_s": 2.0,
        "local_s": 0.5,
        "rows": 288,
        "distinct_ids": 288,
        "revenue": "10.00",
    }
    results = {
        "compaction": {
            "before": side,
            "after": {**side, "files": 1, "total_s": 0.2, "local_s": 0.05},
            "compactor_s": 1.0,
            "rerun_action": "noop",
            "same_answers": False,
            "speedup": 10.0,
            "local_speedup": 10.0,
        }
    }

    (figure,) = bench_run.figures(results, _args())

    assert figure.passed is False
    assert "DIFFER" in figure.measured
