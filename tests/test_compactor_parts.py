"""A day bigger than COMPACT_PART_ROWS: parts behind a head that commits them, each row once across parts,
and every crash point and race of a multi-file rewrite converging to each row exactly once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from tests.compactor_support import (
    COMPACTED,
    DAY,
    PREFIX,
    CrashAfter,
    FailingS3,
    assert_at_least_once,
    assert_exactly,
    compactor,
    config,
    ids,
    keys,
    make_rows,
    manifest_of,
    processed_key,
    put_source,
    raw_key,
    read_table,
    sidecar,
    what_a_query_sees,
)
from tests.conftest import BUCKET

PART_ROWS = 30


def part(n: int) -> str:
    return f"{PREFIX}compacted-20261125-p{n:02d}.parquet"


@pytest.fixture
def ten_sources(s3: Any) -> list[pa.Table]:
    """GIVEN ten transformer files of 10 rows each: 100 rows, more than one part of 30 holds."""
    tables = []
    for i in range(10):
        table = make_rows(10, seed=100 + i)
        put_source(s3, raw_key(i), table)
        tables.append(table)
    return tables


def test_a_day_over_the_part_bound_is_split_into_even_parts_listed_by_a_head_with_no_rows(s3, ten_sources):
    result = compactor.compact_day(s3, config(part_rows=PART_ROWS), DAY)

    assert result["action"] == "compacted"
    assert result["parts"] == 4
    assert keys(s3) == sorted([COMPACTED, *(part(n) for n in range(1, 5))])
    assert_exactly(s3, *ten_sources)
    assert read_table(s3, COMPACTED).num_rows == 0
    assert [read_table(s3, part(n)).num_rows for n in range(1, 5)] == [25, 25, 25, 25]
    head = manifest_of(s3)
    assert [p["key"] for p in head["parts"]] == [part(n) for n in range(1, 5)]
    assert [p["etag"] for p in head["parts"]] == [
        s3.head_object(Bucket=BUCKET, Key=part(n))["ETag"].strip('"') for n in range(1, 5)
    ]
    # The day's manifest: each source's rows, by the part holding them (source 2 crosses p01/p02)
    rows_by_source: dict[str, int] = {}
    for entry in head["sources"]:
        rows_by_source[entry["key"]] = rows_by_source.get(entry["key"], 0) + entry["rows"]
        assert entry["source_key"] is not None
    assert rows_by_source == {processed_key(raw_key(i)): 10 for i in range(10)}
    assert [(e["key"], e["rows"], e["file"]) for e in head["sources"][2:4]] == [
        (processed_key(raw_key(2)), 5, part(1)),
        (processed_key(raw_key(2)), 5, part(2)),
    ]
    # Each part's own manifest lists exactly the rows it holds, in file order
    for n in range(1, 5):
        own = manifest_of(s3, part(n))
        assert own["part"] == part(n)
        assert own["batch"] == head["batch"]
        assert sum(e["rows"] for e in own["sources"]) == 25
        table = read_table(s3, part(n))
        offset = 0
        for entry in own["sources"]:
            source = ten_sources[int(entry["key"].split("T")[1][:4])]
            piece = table.slice(offset, entry["rows"]).column("transaction_id").to_pylist()
            assert set(piece) <= set(source.column("transaction_id").to_pylist())
            offset += entry["rows"]
    # The copy outside the table has one line per (source, part), with the raw key
    lines = sidecar(s3)
    assert [(line["processed_key"], line["compacted_key"], line["row_count"]) for line in lines] == [
        (e["key"], e["file"], e["rows"]) for e in head["sources"]
    ]
    assert {line["source_key"] for line in lines} == {raw_key(i) for i in range(10)}


def test_a_rerun_of_a_split_day_with_nothing_new_reads_only_the_heads_footer(s3, ten_sources):
    compactor.compact_day(s3, config(part_rows=PART_ROWS), DAY)
    calls: list[tuple[str, dict[str, Any]]] = []

    class Recording:
        def __getattr__(self, name: str) -> Any:
            method = getattr(s3, name)

            def call(*args: Any, **kwargs: Any) -> Any:
                calls.append((name, kwargs))
                return method(*args, **kwargs)

            return call

    result = compactor.compact_day(Recording(), config(part_rows=PART_ROWS), DAY)

    assert result["action"] == "noop"
    assert [name for name, _ in calls] == ["get_paginator", "get_object"]
    assert calls[1][1]["Key"] == COMPACTED
    assert calls[1][1]["Range"].startswith("bytes=-")


def test_a_late_file_on_a_split_day_rewrites_it_into_free_part_numbers_then_deletes_the_old_parts(
    s3, ten_sources
):
    compactor.compact_day(s3, config(part_rows=PART_ROWS), DAY)
    late = make_rows(10, seed=500)
    put_source(s3, raw_key(10), late)

    result = compactor.compact_day(s3, config(part_rows=PART_ROWS), DAY)

    assert (result["action"], result["parts"], result["parts_deleted"]) == ("compacted", 4, 4)
    assert keys(s3) == sorted([COMPACTED, *(part(n) for n in range(5, 9))])
    assert_exactly(s3, *ten_sources, late)
    # the old parts, named by the head as replaced by its commit
    assert [p["key"] for p in manifest_of(s3)["replaced"]] == [part(n) for n in range(1, 5)]

    # The next rewrite takes the lowest free numbers again
    later = make_rows(3, seed=501)
    put_source(s3, raw_key(11), later)
    compactor.compact_day(s3, config(part_rows=PART_ROWS), DAY)
    assert keys(s3) == sorted([COMPACTED, *(part(n) for n in range(1, 5))])
    assert_exactly(s3, *ten_sources, late, later)


def test_a_day_moves_between_one_file_and_parts_as_it_grows_and_shrinks(s3, ten_sources):
    compactor.compact_day(s3, config(part_rows=1_000), DAY)
    assert keys(s3) == [COMPACTED]
    late = make_rows(10, seed=600)
    put_source(s3, raw_key(10), late)

    compactor.compact_day(s3, config(part_rows=PART_ROWS), DAY)  # one file -> parts
    assert keys(s3) == sorted([COMPACTED, *(part(n) for n in range(1, 5))])
    assert_exactly(s3, *ten_sources, late)

    replacement = make_rows(2, seed=601)
    put_source(s3, raw_key(3), replacement)  # a raw file replaced: its rows change
    compactor.compact_day(s3, config(part_rows=1_000), DAY)  # parts -> one file
    assert keys(s3) == [COMPACTED]
    assert_exactly(s3, *ten_sources[:3], replacement, *ten_sources[4:], late)
    assert manifest_of(s3)["parts"] == []


def test_a_redelivered_source_of_a_split_day_is_only_deleted(s3, ten_sources):
    compactor.compact_day(s3, config(part_rows=PART_ROWS), DAY)
    parts_before = {k: s3.head_object(Bucket=BUCKET, Key=k)["ETag"] for k in keys(s3)}
    put_source(s3, raw_key(4), ten_sources[4])  # the same bytes again: the same ETag

    result = compactor.compact_day(s3, config(part_rows=PART_ROWS), DAY)

    assert (result["action"], result["deleted"]) == ("finished", 1)
    assert {k: s3.head_object(Bucket=BUCKET, Key=k)["ETag"] for k in keys(s3)} == parts_before
    assert_exactly(s3, *ten_sources)


def test_at_most_one_input_and_one_output_file_are_in_tmp_at_any_time(
    s3, ten_sources, monkeypatch: pytest.MonkeyPatch
):
    compactor.compact_day(s3, config(part_rows=PART_ROWS), DAY)
    put_source(s3, raw_key(10), make_rows(10, seed=700))
    seen: list[list[str]] = []
    download, write = compactor._download, compactor._write_file

    def recording_download(s3_: Any, bucket: str, obj: Any, path: Path) -> Path:
        seen.append(sorted(p.name for p in path.parent.iterdir()))
        return download(s3_, bucket, obj, path)

    def recording_write(path: Path, batches: Any, manifest: bytes, cfg: Any) -> int:
        seen.append(sorted(p.name for p in path.parent.iterdir()))
        return write(path, batches, manifest, cfg)

    monkeypatch.setattr(compactor, "_download", recording_download)
    monkeypatch.setattr(compactor, "_write_file", recording_write)

    compactor.compact_day(s3, config(part_rows=PART_ROWS), DAY)

    # 4 old parts + 1 new source read, 4 parts and a head written, each with at most one other file
    assert len(seen) == 10
    assert all(len(names) <= 1 for names in seen)


# --- Crashes -------------------------------------------------------------------------------------------


def _writes_of_a_clean_run(s3: Any, cfg: Any) -> list[str]:
    """The puts and deletes a run makes, in order."""
    counting = CrashAfter(s3, writes=10_000)
    compactor.compact_day(counting, cfg, DAY)
    return [name for name, _ in counting.log]


def _crash_then_rerun(s3: Any, cfg: Any, writes: int, *expected: pa.Table) -> list[tuple[str, str]]:
    crashing = CrashAfter(s3, writes=writes)
    with pytest.raises(RuntimeError, match="simulated crash"):
        compactor.compact_day(crashing, cfg, DAY)
    # WHILE the run is dead: no row is missing (some may be seen twice)
    assert_at_least_once(s3, *expected)
    # WHEN the next run comes, THEN each row is there exactly once, nothing stray is left, and a third
    # run has nothing to do
    compactor.compact_day(s3, cfg, DAY)
    assert_exactly(s3, *expected)
    manifest = manifest_of(s3)
    assert keys(s3) == sorted([COMPACTED, *(p["key"] for p in manifest["parts"])])
    assert compactor.compact_day(s3, cfg, DAY)["action"] == "noop"
    return crashing.log


def test_the_first_compaction_into_parts_converges_after_a_crash_at_every_write(s3):
    tables = [make_rows(10, seed=800 + i) for i in range(9)]

    def fresh_day() -> None:
        for k in keys(s3, ""):
            s3.delete_object(Bucket=BUCKET, Key=k)
        for i, table in enumerate(tables):
            put_source(s3, raw_key(i), table)

    cfg = config(part_rows=PART_ROWS)
    fresh_day()
    writes = _writes_of_a_clean_run(s3, cfg)
    # three parts, the head (the commit), the manifest copy, then the nine sources
    assert writes == ["put_object"] * 5 + ["delete_object"] * 9
    for done in range(len(writes)):
        fresh_day()
        _crash_then_rerun(s3, cfg, done, *tables)


def test_a_rewrite_of_a_split_day_converges_after_a_crash_at_every_write(s3):
    tables = [make_rows(10, seed=900 + i) for i in range(8)]
    late, replacement = make_rows(7, seed=950), make_rows(4, seed=951)
    cfg = config(part_rows=PART_ROWS)

    def split_day_with_changes() -> None:
        for k in keys(s3, ""):
            s3.delete_object(Bucket=BUCKET, Key=k)
        for i, table in enumerate(tables):
            put_source(s3, raw_key(i), table)
        compactor.compact_day(s3, cfg, DAY)
        put_source(s3, raw_key(8), late)
        put_source(s3, raw_key(2), replacement)

    expected = [*tables[:2], replacement, *tables[3:], late]
    split_day_with_changes()
    writes = _writes_of_a_clean_run(s3, cfg)
    # three new parts, the head, the copy, then the three old parts and the two sources
    assert writes == ["put_object"] * 5 + ["delete_object"] * 5
    for done in range(len(writes)):
        split_day_with_changes()
        _crash_then_rerun(s3, cfg, done, *expected)


def test_a_failure_before_the_commit_deletes_the_parts_this_run_put(s3, ten_sources):
    failing = FailingS3(s3, "put_object", allow=2)  # the third put fails: two parts are written

    with pytest.raises(RuntimeError, match="simulated crash"):
        compactor.compact_day(failing, config(part_rows=PART_ROWS), DAY)

    assert failing.calls["delete_object"] == 2
    assert keys(s3) == sorted(processed_key(raw_key(i)) for i in range(10))
    assert_exactly(s3, *ten_sources)


class ReplyLost:
    """The real client, except that the put of `key` happens and then raises, as a connection dropped
    after S3 stored the object (and `head_object` fails when `blind`: the run cannot look)."""

    def __init__(self, client: Any, key: str, blind: bool = False) -> None:
        self._client, self._key, self._blind = client, key, blind
        self.deletes: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if name == "head_object" and self._blind:
                raise RuntimeError("S3 unreachable")
            if name == "delete_object":
                self.deletes.append(kwargs["Key"])
            response = method(*args, **kwargs)
            if name == "put_object" and kwargs["Key"] == self._key:
                raise RuntimeError("connection reset after the put")
            return response

        return call


def test_a_commit_that_landed_though_its_put_raised_stands_and_the_run_completes(s3, ten_sources):
    lost = ReplyLost(s3, COMPACTED)

    result = compactor.compact_day(lost, config(part_rows=PART_ROWS), DAY)

    assert result["action"] == "compacted"
    assert not [k for k in lost.deletes if "compacted" in k]
    assert keys(s3) == sorted([COMPACTED, *(part(n) for n in range(1, 5))])
    assert_exactly(s3, *ten_sources)


def test_a_run_that_cannot_tell_whether_its_commit_landed_leaves_its_parts_for_the_next_run(s3, ten_sources):
    lost = ReplyLost(s3, COMPACTED, blind=True)

    with pytest.raises(RuntimeError, match="S3 unreachable"):
        compactor.compact_day(lost, config(part_rows=PART_ROWS), DAY)

    assert lost.deletes == []
    assert set(ids(what_a_query_sees(s3)).values()) == {2}  # in the landed parts, and in the sources
    compactor.compact_day(s3, config(part_rows=PART_ROWS), DAY)
    assert_exactly(s3, *ten_sources)


def test_a_source_with_another_schema_stops_a_split_day_before_anything_is_written(s3, ten_sources):
    bad = make_rows(2, seed=3).set_column(7, "price", pa.array([1.5, 2.5], pa.float64()))
    put_source(s3, raw_key(20), bad)
    before = keys(s3)
    recording = FailingS3(s3, operation="")

    with pytest.raises(compactor.SchemaMismatchError, match=r"column price is double"):
        compactor.compact_day(recording, config(part_rows=PART_ROWS), DAY)

    assert "put_object" not in recording.calls
    assert keys(s3) == before


# --- Races ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("parts_put_before", [0, 1, 4])
def test_two_runs_on_a_split_day_commit_once_and_the_loser_deletes_only_its_own_parts(
    s3, ten_sources, parts_put_before
):
    """GIVEN a split day with a late file, WHEN another run does the whole day while this one has put
    some of its four parts (with 4: all, just before its commit), THEN this run stops with
    ConcurrentChangeError (a part name taken, or its commit refused), deletes its own parts and no
    source, and the day holds each row once."""
    cfg = config(part_rows=PART_ROWS)
    compactor.compact_day(s3, cfg, DAY)
    late = make_rows(10, seed=1000)
    put_source(s3, raw_key(10), late)
    other: dict[str, Any] = {}
    puts: list[str] = []
    deletes: list[str] = []

    class Race:
        def __getattr__(self, name: str) -> Any:
            method = getattr(s3, name)

            def call(*args: Any, **kwargs: Any) -> Any:
                if name == "put_object":
                    if len(puts) == parts_put_before and not other:
                        other.update(compactor.compact_day(s3, cfg, DAY))
                    puts.append(kwargs["Key"])
                if name == "delete_object":
                    deletes.append(kwargs["Key"])
                return method(*args, **kwargs)

            return call

    with pytest.raises(compactor.ConcurrentChangeError):
        compactor.compact_day(Race(), cfg, DAY)

    assert other["action"] == "compacted"
    assert deletes == puts[:parts_put_before]  # its own parts, nothing else
    assert_exactly(s3, *ten_sources, late)
    assert keys(s3) == sorted([COMPACTED, *(p["key"] for p in manifest_of(s3)["parts"])])
    assert compactor.compact_day(s3, cfg, DAY)["action"] == "noop"


def test_a_run_that_dies_with_its_parts_put_is_cleaned_up_by_the_next_commit(s3, ten_sources):
    cfg = config(part_rows=PART_ROWS)
    with pytest.raises(RuntimeError):
        compactor.compact_day(CrashAfter(s3, writes=2), cfg, DAY)  # two parts put, then gone
    assert [k for k in keys(s3) if "compacted" in k] == [part(1), part(2)]  # no head lists them

    result = compactor.compact_day(s3, cfg, DAY)

    assert result["parts_deleted"] == 2
    assert keys(s3) == sorted([COMPACTED, *(part(n) for n in range(3, 7))])
    assert_exactly(s3, *ten_sources)


def test_part_bound_comes_from_a_validated_environment_variable():
    env = {"BUCKET_NAME": "b"}
    assert compactor.load_config(env).part_rows == 5_000_000
    assert compactor.load_config({**env, "COMPACT_PART_ROWS": "2000000"}).part_rows == 2_000_000
    for bad, message in [("0", "between"), ("lots", "must be a number"), ("2500.5", "whole numbers")]:
        with pytest.raises(compactor.ConfigError, match=f"COMPACT_PART_ROWS.*{message}|{message}"):
            compactor.load_config({**env, "COMPACT_PART_ROWS": bad})


@pytest.mark.parametrize(
    ("total", "bound", "sizes"),
    [(0, 30, [0]), (30, 30, [30]), (31, 30, [16, 15]), (100, 30, [25, 25, 25, 25]), (61, 30, [21, 20, 20])],
)
def test_rows_are_split_into_the_fewest_parts_within_the_bound_as_evenly_as_possible(total, bound, sizes):
    assert compactor.split_rows(total, bound) == sizes
