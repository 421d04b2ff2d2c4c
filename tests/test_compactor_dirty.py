"""Dirty-day markers: a compacted day keeps no row of a source its transformer state no longer claims
(issue 9), checked file by file against state/transformer/, with every case read back from S3."""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench._child import s3_event
from tests.compactor_support import (
    COMPACTED,
    DAY,
    PREFIX,
    assert_exactly,
    compactor,
    config,
    ids,
    keys,
    make_rows,
    manifest_of,
    partition,
    processed_key,
    put_marker,
    put_parquet,
    put_source,
    put_state,
    raw_key,
    read_table,
    run,
    sidecar,
    stem_key,
    what_a_query_sees,
)
from tests.conftest import BUCKET, load_lambda

MARKER = compactor.marker_key(DAY)
NEXT_DAY = DAY + timedelta(days=1)


@pytest.fixture
def compacted_day(s3: Any) -> list[pa.Table]:
    """GIVEN six raw files processed into the day, their states complete, and the day compacted."""
    tables = []
    for i in range(6):
        table = make_rows(2 + i, seed=200 + i)
        put_state(s3, raw_key(i), [put_source(s3, raw_key(i), table)])
        tables.append(table)
    compactor.compact_day(s3, config(), DAY)
    assert keys(s3) == [COMPACTED]
    return tables


def replace_raw_with_rows_only_on_the_next_day(s3: Any, index: int, locked: bool = False) -> pa.Table:
    """The transformer's work for a raw file re-uploaded with rows on the next day only: the new output,
    the marker for the day that loses its rows, and the state (still locked if `locked`)."""
    new = make_rows(3, seed=300 + index, day=NEXT_DAY)
    new_key = put_source(s3, raw_key(index), new, day=NEXT_DAY)
    put_marker(s3, DAY, source_key=raw_key(index))
    outputs = [new_key, processed_key(raw_key(index))] if locked else [new_key]
    put_state(s3, raw_key(index), outputs, locked=locked)
    return new


def test_a_replaced_source_with_no_rows_left_in_a_compacted_day_loses_them_at_the_next_run(s3, compacted_day):
    new = replace_raw_with_rows_only_on_the_next_day(s3, 3)

    results = run(s3)

    day = results[DAY.isoformat()]
    assert (day["action"], day["verification"], day["marker"]) == ("compacted", "done", "deleted")
    assert day["rows_dropped"] == compacted_day[3].num_rows
    assert_exactly(s3, *compacted_day[:3], *compacted_day[4:])
    assert keys(s3) == [COMPACTED]
    assert processed_key(raw_key(3)) not in {e["key"] for e in manifest_of(s3)["sources"]}
    assert raw_key(3) not in {line["source_key"] for line in sidecar(s3)}
    assert MARKER not in keys(s3, "state/compaction/")
    # the next day is not finished at 03:00 on the 26th: its new file waits, untouched
    assert NEXT_DAY.isoformat() not in results
    assert_exactly(s3, new, prefix=partition(NEXT_DAY))


@pytest.mark.parametrize("compactor_ran_between", [True, False])
def test_a_source_produced_again_after_its_tombstone_is_kept(s3, compacted_day, compactor_ran_between):
    replace_raw_with_rows_only_on_the_next_day(s3, 3)
    if compactor_ran_between:
        run(s3)
        assert_exactly(s3, *compacted_day[:3], *compacted_day[4:])
    # the raw file is fixed once more, and its rows are back on the day: a late output, and its marker
    again = make_rows(5, seed=400)
    put_marker(s3, DAY, source_key=raw_key(3))
    put_source(s3, raw_key(3), again)
    put_state(s3, raw_key(3), [processed_key(raw_key(3))])

    day = run(s3)[DAY.isoformat()]

    assert (day["action"], day["marker"]) == ("compacted", "deleted")
    assert_exactly(s3, *compacted_day[:3], again, *compacted_day[4:])
    assert keys(s3) == [COMPACTED]


def test_a_locked_state_defers_the_check_and_keeps_the_marker_until_the_transformer_commits(
    s3, compacted_day
):
    replace_raw_with_rows_only_on_the_next_day(s3, 3, locked=True)
    marker_etag = s3.head_object(Bucket=BUCKET, Key=MARKER)["ETag"]
    late = make_rows(2, seed=500)  # and a late file: the day is still compacted as an unmarked one
    put_state(s3, raw_key(7), [put_source(s3, raw_key(7), late)])

    day = run(s3)[DAY.isoformat()]

    assert (day["action"], day["verification"], day["marker"]) == ("compacted", "deferred", "kept")
    assert_exactly(s3, *compacted_day, late)
    assert s3.head_object(Bucket=BUCKET, Key=MARKER)["ETag"] == marker_etag

    put_state(s3, raw_key(3), [processed_key(raw_key(3), NEXT_DAY)])  # the transformer commits
    day = run(s3)[DAY.isoformat()]

    assert (day["verification"], day["marker"]) == ("done", "deleted")
    assert_exactly(s3, *compacted_day[:3], *compacted_day[4:], late)


def test_a_marker_whose_own_raw_key_is_locked_waits_for_the_late_output_it_announces(s3, compacted_day):
    # the transformer has written the marker for a late output of raw file 8, not the output yet
    put_state(s3, raw_key(8), [processed_key(raw_key(8))], locked=True)
    put_marker(s3, DAY, source_key=raw_key(8))

    day = run(s3)[DAY.isoformat()]

    assert (day["verification"], day["marker"]) == ("deferred", "kept")
    late = make_rows(3, seed=800)
    put_source(s3, raw_key(8), late)
    put_state(s3, raw_key(8), [processed_key(raw_key(8))])
    day = run(s3, when="2026-12-30T03:00:00Z")[DAY.isoformat()]  # long after the lookback window
    assert (day["action"], day["marker"]) == ("compacted", "deleted")
    assert_exactly(s3, *compacted_day, late)


def test_a_newer_marker_written_during_the_run_survives_its_conditional_delete(s3, compacted_day):
    replace_raw_with_rows_only_on_the_next_day(s3, 3)
    newer: list[str] = []

    class TransformerWritesAgain:
        def __getattr__(self, name: str) -> Any:
            method = getattr(s3, name)

            def call(*args: Any, **kwargs: Any) -> Any:
                if name == "delete_object" and kwargs["Key"] == MARKER and not newer:
                    newer.append(put_marker(s3, DAY, source_key=raw_key(4)))
                return method(*args, **kwargs)

            return call

    _, results = compactor.compact(TransformerWritesAgain(), config(), {"time": "2026-11-26T03:00:00Z"}, None)

    (day,) = [r for r in results if r["date"] == DAY.isoformat()]
    assert (day["verification"], day["marker"]) == ("done", "kept")
    assert s3.head_object(Bucket=BUCKET, Key=MARKER)["ETag"].strip('"') == newer[0]
    assert_exactly(s3, *compacted_day[:3], *compacted_day[4:])
    # the next run checks the day again against the newer marker, and then deletes it
    assert run(s3)[DAY.isoformat()]["marker"] == "deleted"
    assert_exactly(s3, *compacted_day[:3], *compacted_day[4:])


def test_a_stale_loose_file_is_neither_merged_nor_deleted(s3, compacted_day):
    # raw file 7's state no longer lists its output on the day (its owner has not deleted it yet)
    stale = make_rows(4, seed=700)
    stale_key = put_source(s3, raw_key(7), stale)
    put_state(s3, raw_key(7), [processed_key(raw_key(7), NEXT_DAY)])
    stale_etag = s3.head_object(Bucket=BUCKET, Key=stale_key)["ETag"]
    put_marker(s3, DAY, source_key=raw_key(7))

    day = run(s3)[DAY.isoformat()]

    assert day["left"] == [stale_key]
    assert day["marker"] == "kept"  # a refused file is still there: the next run looks again
    assert s3.head_object(Bucket=BUCKET, Key=stale_key)["ETag"] == stale_etag
    assert stale_key not in {e["key"] for e in manifest_of(s3)["sources"]}
    assert ids(read_table(s3, COMPACTED)) == ids(pa.concat_tables(compacted_day))
    assert_exactly(s3, *compacted_day, stale)  # a query sees it until its owner deletes it

    s3.delete_object(Bucket=BUCKET, Key=stale_key)  # the owner's delete
    day = run(s3)[DAY.isoformat()]
    assert (day["action"], day["marker"]) == ("noop", "deleted")
    assert_exactly(s3, *compacted_day)


def test_a_redelivered_copy_of_a_stale_source_is_left_and_its_compacted_rows_dropped(s3, compacted_day):
    # raw file 2's output is back in the partition (the same bytes), but its state no longer lists it
    put_source(s3, raw_key(2), compacted_day[2])
    put_state(s3, raw_key(2), [])
    put_marker(s3, DAY, source_key=raw_key(2))

    day = run(s3)[DAY.isoformat()]

    assert day["left"] == [processed_key(raw_key(2))]
    assert ids(read_table(s3, COMPACTED)) == ids(pa.concat_tables([*compacted_day[:2], *compacted_day[3:]]))


def test_a_source_whose_state_is_gone_is_dropped(s3, compacted_day):
    # the raw file was deleted and replay removed its state (an orphan)
    s3.delete_object(Bucket=BUCKET, Key=compactor.state_key(raw_key(5)))
    put_marker(s3, DAY, source_key=raw_key(5), drop_unclaimed=True)

    day = run(s3)[DAY.isoformat()]

    assert (day["rows_dropped"], day["marker"]) == (compacted_day[5].num_rows, "deleted")
    assert_exactly(s3, *compacted_day[:5])


@pytest.mark.parametrize("drop_unclaimed", [False, True])
def test_files_without_a_raw_key_are_kept_unless_the_marker_says_drop_unclaimed(s3, drop_unclaimed):
    """Files written before the transformer recorded `source_key` (old names, no metadata), compacted
    and loose, next to current ones."""
    old = [make_rows(3, seed=600 + i) for i in range(3)]
    new = [make_rows(2, seed=610 + i) for i in range(3)]
    for i, table in enumerate(old):
        put_parquet(s3, stem_key(f"transactions-20261125T{i:02d}0500Z-{i:08x}"), table)
    for i, table in enumerate(new):
        put_state(s3, raw_key(i), [put_source(s3, raw_key(i), table)])
    compactor.compact_day(s3, config(), DAY)
    loose_old = make_rows(4, seed=620)
    loose_key = stem_key("transactions-20261125T230500Z-000000ff")
    put_parquet(s3, loose_key, loose_old)
    put_marker(s3, DAY, drop_unclaimed=drop_unclaimed)

    day = run(s3)[DAY.isoformat()]

    assert day["marker"] == ("kept" if drop_unclaimed else "deleted")  # kept: the loose one is still there
    if drop_unclaimed:
        assert day["left"] == [loose_key]
        assert ids(read_table(s3, COMPACTED)) == ids(pa.concat_tables(new))
        assert loose_key in keys(s3)
    else:
        assert keys(s3) == [COMPACTED]
        assert_exactly(s3, *old, *new, loose_old)
        assert sum(e["source_key"] is None for e in manifest_of(s3)["sources"]) == 4


def test_a_day_compacted_by_the_previous_version_is_read_and_its_entries_count_as_unclaimed(s3):
    # GIVEN a compacted file as version 1 wrote it: one file, a manifest without raw keys
    old = make_rows(5, seed=650)
    source = stem_key("transactions-20261125T000500Z-00000000")
    manifest = {
        "version": 1,
        "partition": PREFIX,
        "rows": 5,
        "sources": [{"key": source, "etag": "x", "rows": 5}],
    }
    buffer = io.BytesIO()
    pq.write_table(old.replace_schema_metadata({b"compaction_manifest": json.dumps(manifest)}), buffer)
    s3.put_object(Bucket=BUCKET, Key=COMPACTED, Body=buffer.getvalue())
    late = make_rows(2, seed=651)
    put_state(s3, raw_key(9), [put_source(s3, raw_key(9), late)])

    compactor.compact_day(s3, config(), DAY)

    assert_exactly(s3, old, late)
    entries = manifest_of(s3)["sources"]
    assert [(e["key"], e["source_key"]) for e in entries] == [
        (source, None),
        (processed_key(raw_key(9)), raw_key(9)),
    ]
    put_marker(s3, DAY, drop_unclaimed=True)
    run(s3)
    assert_exactly(s3, late)


def test_a_marked_day_outside_the_lookback_window_is_compacted_and_an_unfinished_one_waits(s3):
    old_day = DAY - timedelta(days=40)
    table = make_rows(3, seed=660, day=old_day)
    put_state(s3, raw_key(1, old_day), [put_source(s3, raw_key(1, old_day), table, day=old_day)])
    put_marker(s3, old_day, source_key=raw_key(1, old_day))
    put_marker(
        s3, NEXT_DAY
    )  # the 26th is not finished at 03:00 that day: COMPACT_AFTER_HOURS is 2... of the 27th

    results = run(s3, when="2026-11-26T03:00:00Z")

    assert results[old_day.isoformat()]["action"] == "compacted"
    assert results[old_day.isoformat()]["marker"] == "deleted"
    assert NEXT_DAY.isoformat() not in results
    assert keys(s3, "state/compaction/") == [compactor.marker_key(NEXT_DAY)]
    assert_exactly(s3, table, prefix=partition(old_day))
    assert len(results) == 8  # the seven days of the window, and the marked one


@pytest.mark.parametrize(
    ("key", "body", "message"),
    [
        (
            "state/compaction/dirty/year=2026/month=11/day=25.txt",
            b"{}",
            "not a dirty-day marker key",
        ),
        (
            "state/compaction/dirty/year=2026/month=02/day=30.json",
            b"{}",
            "day is out of range",
        ),
        (
            "state/compaction/dirty/year=2026/month=11/day=25.json",
            b"not json",
            "not a dirty-day",
        ),
        (
            "state/compaction/dirty/year=2026/month=11/day=25.json",
            b'{"drop_unclaimed": "yes"}',
            "drop_unclaimed must be true or false",
        ),
    ],
)
def test_an_unreadable_marker_is_a_named_error(s3, compacted_day, key, body, message):
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)

    with pytest.raises(compactor.MarkerError, match=message):
        run(s3)

    assert keys(s3) == [COMPACTED]


def test_an_unreadable_state_is_a_named_error_and_nothing_is_dropped(s3, compacted_day):
    s3.put_object(Bucket=BUCKET, Key=compactor.state_key(raw_key(1)), Body=b'{"outputs": "all of them"}')
    put_marker(s3, DAY, source_key=raw_key(1))

    with pytest.raises(compactor.StateError, match=f"state of {raw_key(1)}"):
        run(s3)

    assert_exactly(s3, *compacted_day)
    assert MARKER in keys(s3, "state/")


@pytest.mark.integration
def test_real_transformer_replacement_across_midnight_leaves_each_raw_record_once_on_its_day(
    s3, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """GIVEN a day written by the real generator and transformer and compacted, WHEN a person re-uploads one
    raw file whose rows now all fall on the next day and the transformer processes it, THEN the next
    compactor run drops its old rows from the compacted day, and every raw record is in the table once,
    on the day of its timestamp."""
    generator, transformer = load_lambda("generator"), load_lambda("transformer")
    monkeypatch.setattr(transformer, "s3_client", lambda: s3)
    run_config = generator.Config(bucket=BUCKET, transactions_per_run=3, seed=7)
    raw_keys = []
    for minute in range(5, 24 * 60, 180):
        tick = datetime(2026, 11, 25, tzinfo=UTC) + timedelta(minutes=minute)
        key, body, _ = generator.generate_run(run_config, tick)
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        transformer.lambda_handler(s3_event(BUCKET, key), None)
        raw_keys.append(key)
    run(s3)
    assert keys(s3) == [COMPACTED]
    replaced = raw_keys[2]
    records = generator.generate_transactions(datetime(2026, 11, 26, 0, 30, tzinfo=UTC), 4, random.Random(1))

    s3.put_object(Bucket=BUCKET, Key=replaced, Body=generator.to_json_lines(records))
    transformer.lambda_handler(s3_event(BUCKET, replaced), None)
    results = run(s3, when="2026-11-28T03:00:00Z")  # both days finished, both marked

    def raw_ids(key: str) -> list[str]:
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
        return [json.loads(line)["transaction_id"] for line in body.splitlines()]

    assert results[DAY.isoformat()]["marker"] == "deleted"
    assert results[DAY.isoformat()]["rows_dropped"] == 3
    on_the_day = [i for key in raw_keys if key != replaced for i in raw_ids(key)]
    assert ids(what_a_query_sees(s3)) == Counter(on_the_day)
    assert ids(what_a_query_sees(s3, partition(NEXT_DAY))) == Counter(raw_ids(replaced))
    assert keys(s3, "state/compaction/") == []
    assert replaced not in {line["source_key"] for line in sidecar(s3)}
    assert {line["source_key"] for line in sidecar(s3, NEXT_DAY)} == {replaced}
    capsys.readouterr()
