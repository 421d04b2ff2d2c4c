"""Transformer: a raw key's outputs are its own and always its current content's (docs/contract.md, bucket
layout): output identity, replacement, retries, redelivery, and every interleaving of two invocations."""

from __future__ import annotations

import io
import itertools
import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import boto3
import pyarrow.parquet as pq
import pytest
from botocore.config import Config

from tests.conftest import BUCKET, REGION, load_lambda
from tests.test_transformer import good_lines, s3_event

tr = load_lambda("transformer")

KEY = "raw/year=2026/month=11/day=25/transactions-20261125T235900Z-0badf00d.json"
NAME = tr.output_name(KEY)


@pytest.fixture(autouse=True)
def _client(s3, monkeypatch):
    """The handler uses the test's moto client, so that the test can watch its calls."""
    monkeypatch.setattr(tr, "s3_client", lambda: s3)


# --- helpers ---------------------------------------------------------------------------------------

# v1 spans midnight (rows on the 25th and the 26th) and has one bad line; v2 is the fixed file, whose rows
# are all on the 25th: replacing v1 by v2 must remove the 26th's file and the quarantine file.
V1_LINES = [
    *good_lines(3, seed=1, run=datetime(2026, 11, 25, 23, 59, tzinfo=UTC)),
    "not json",
    *good_lines(3, seed=2, run=datetime(2026, 11, 26, 0, 4, tzinfo=UTC)),
]
V1 = "\n".join(V1_LINES) + "\n"
# v0: the content before both invocations
V0 = "\n".join(good_lines(2, seed=7, run=datetime(2026, 11, 24, 12, tzinfo=UTC))) + "\n"
V2 = "\n".join(good_lines(4, seed=3, run=datetime(2026, 11, 25, 23, 50, tzinfo=UTC))) + "\n"


def outputs(s3, bucket: str = BUCKET) -> dict[str, bytes]:
    """Every object under processed/ and quarantine/, with its bytes."""
    found = {}
    for prefix in ("processed/", "quarantine/"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def state(s3, key: str = KEY, bucket: str = BUCKET) -> dict[str, Any]:
    return json.loads(s3.get_object(Bucket=bucket, Key=tr.state_key(key))["Body"].read())


_FRESH = itertools.count()


def alone(s3, body: str, key: str = KEY) -> dict[str, bytes]:
    """What processing `body` alone gives, in a fresh bucket: the oracle for every end state."""
    fresh = f"fresh-bucket-{next(_FRESH)}"
    s3.create_bucket(Bucket=fresh)
    s3.put_object(Bucket=fresh, Key=key, Body=body.encode())
    tr.process_object(s3, tr.S3Object(fresh, key), fresh)
    return outputs(s3, fresh)


def assert_outputs_are_exactly(s3, body: str, key: str = KEY) -> None:
    """The end state the contract asks for: the outputs (keys and bytes) of the current content, listed
    by a complete state, and rows + quarantined lines = records read."""
    mine = {k: v for k, v in outputs(s3).items() if tr.output_name(key) in k}
    expected = alone(s3, body, key)
    assert sorted(mine) == sorted(expected)
    assert mine == expected
    current = state(s3, key)
    assert current["lock"] is None
    assert current["etag"] == s3.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')
    assert current["outputs"] == sorted(mine)
    assert current["rows_written"] + current["quarantined"] == current["records_read"]
    assert current["records_read"] == sum(1 for line in body.splitlines() if line.strip())


def put_raw(s3, body: str, key: str = KEY) -> str:
    return s3.put_object(Bucket=BUCKET, Key=key, Body=body.encode())["ETag"].strip('"')


def handle(key: str = KEY, **extra: Any) -> dict[str, Any]:
    return tr.lambda_handler({**s3_event(key), **extra}, None)


# --- identity ---------------------------------------------------------------------------------------


def test_same_file_name_in_two_folders_keeps_both_outputs(s3):
    dated = "raw/year=2026/month=11/day=25/upload.json"
    manual = "raw/manual/upload.json"
    bodies = {dated: V2, manual: "\n".join(good_lines(2, seed=9, run=datetime(2026, 11, 25, 12, tzinfo=UTC)))}
    for key, body in bodies.items():
        put_raw(s3, body, key)
        handle(key)
    for key, body in bodies.items():
        assert_outputs_are_exactly(s3, body, key)
    day = [k for k in outputs(s3) if k.startswith("processed/transactions/year=2026/month=11/day=25/")]
    assert len(day) == 2


@pytest.mark.parametrize(
    "file_name", ["compacted-20261125.json", "compacted-20261125-p01.json", "_x.json", ".x.json", "_.json"]
)
def test_reserved_and_hidden_raw_names_give_ordinary_visible_outputs(s3, file_name):
    key = f"raw/year=2026/month=11/day=25/{file_name}"
    compacted = "processed/transactions/year=2026/month=11/day=25/compacted-20261125.parquet"
    s3.put_object(Bucket=BUCKET, Key=compacted, Body=b"the compactor's file")
    put_raw(s3, V2, key)
    handle(key)
    assert s3.get_object(Bucket=BUCKET, Key=compacted)["Body"].read() == b"the compactor's file"
    for written in state(s3, key)["outputs"]:
        name = written.rsplit("/", 1)[1]
        assert not name.startswith(("_", ".")), "Athena would skip it"
        assert not re.fullmatch(r"compacted-[0-9]{8}(-p[0-9]{2})?\.parquet", name), "the compactor's name"
    assert_outputs_are_exactly(s3, V2, key)


def test_every_parquet_output_names_its_raw_key_and_content_in_its_footer(s3):
    etag = put_raw(s3, V1)
    handle()
    for key, body in outputs(s3).items():
        if key.endswith(".parquet"):
            metadata = pq.read_schema(io.BytesIO(body)).metadata
            assert metadata[b"source_key"].decode() == KEY
            assert metadata[b"source_etag"].decode() == etag


# --- replacement ------------------------------------------------------------------------------------


def test_a_fixed_and_reuploaded_file_removes_every_output_of_the_old_content(s3):
    # GIVEN v1 processed: two day partitions and a quarantine file
    put_raw(s3, V1)
    handle()
    first = sorted(outputs(s3))
    assert [k.split("/")[0] for k in first] == ["processed", "processed", "quarantine"]
    # WHEN the user fixes the bad line and the midnight rows and uploads the file again
    put_raw(s3, V2)
    result = handle()
    # THEN only v2's outputs remain: no stale day, no stale quarantine file
    assert_outputs_are_exactly(s3, V2)
    assert sorted(result["processed"][0]["removed"]) == [
        k for k in first if "day=26" in k or "quarantine/" in k
    ]
    # AND the day that lost a file is marked for the compactor (it may hold the old rows)
    marker = json.loads(
        s3.get_object(Bucket=BUCKET, Key=tr.dirty_marker_key(date(2026, 11, 26)))["Body"].read()
    )
    assert marker["source_key"] == KEY
    assert marker["drop_unclaimed"] is False


def test_replacing_back_and_forth_always_leaves_the_current_contents_outputs(s3):
    for body in (V1, V2, V1, V2, V2, V1):
        put_raw(s3, body)
        handle()
        assert_outputs_are_exactly(s3, body)


def test_a_hand_upload_retried_on_another_day_writes_the_same_quarantine_key(s3):
    key = "raw/manual/bad.json"
    put_raw(s3, V1, key)
    tr.process_object(
        s3, tr.S3Object(BUCKET, key), BUCKET, clock=lambda: datetime(2026, 12, 1, 23, 59, tzinfo=UTC)
    )
    before = outputs(s3)
    # WHEN the same object is processed again after midnight (a retry, or a replay)
    tr.process_object(
        s3,
        tr.S3Object(BUCKET, key),
        BUCKET,
        force=True,
        clock=lambda: datetime(2026, 12, 2, 0, 1, tzinfo=UTC),
    )
    # THEN the very same objects, byte for byte: the date came from the object, not the clock
    assert outputs(s3) == before
    uploaded = s3.head_object(Bucket=BUCKET, Key=key)["LastModified"].date()
    assert [k for k in before if k.startswith("quarantine/")] == [
        f"quarantine/year={uploaded:%Y}/month={uploaded:%m}/day={uploaded:%d}/{tr.output_name(key)}.jsonl"
    ]


# --- redelivery and events --------------------------------------------------------------------------


def count_writes(s3) -> list[str]:
    writes: list[str] = []
    s3.meta.events.register(
        "before-parameter-build.s3.PutObject", lambda params, **_: writes.append(params["Key"])
    )
    s3.meta.events.register(
        "before-parameter-build.s3.DeleteObject", lambda params, **_: writes.append("delete " + params["Key"])
    )
    return writes


def test_a_redelivered_event_for_processed_content_writes_nothing(s3):
    put_raw(s3, V1)
    handle()
    writes = count_writes(s3)
    result = handle()
    assert writes == []
    assert result["processed"] == []
    assert result["skipped"] == [{"reason": "content already processed", "key": KEY}]


def test_a_forced_replay_rewrites_the_same_bytes(s3):
    put_raw(s3, V1)
    handle()
    before = outputs(s3)
    writes = count_writes(s3)
    result = handle(force=True)
    assert len(result["processed"]) == 1
    assert any(w.startswith("processed/") for w in writes)
    assert outputs(s3) == before


def test_an_event_with_a_made_up_etag_still_processes_the_object(s3):
    # The console's test event carries an eTag of its own; the object is processed all the same.
    put_raw(s3, V2)
    event = s3_event(KEY)
    event["Records"][0]["s3"]["object"]["eTag"] = "0123456789abcdef0123456789abcdef"
    result = tr.lambda_handler(event, None)
    assert result["processed"][0]["etag"] == s3.head_object(Bucket=BUCKET, Key=KEY)["ETag"].strip('"')
    assert_outputs_are_exactly(s3, V2)


# --- failures and locks -----------------------------------------------------------------------------


def test_a_failure_while_publishing_releases_the_lock_and_the_retry_cleans_up(s3):
    put_raw(s3, V1)
    handle()
    put_raw(s3, V2)
    # GIVEN the write of v2's Parquet file fails (after the lock listed it)
    failing = boto3.client("s3", region_name=REGION, config=Config(retries={"max_attempts": 1}))

    def deny(params, **_):
        if params["Key"].startswith("processed/"):
            raise RuntimeError("simulated crash while writing")

    failing.meta.events.register("before-parameter-build.s3.PutObject", deny)
    with pytest.raises(RuntimeError, match="simulated crash"):
        tr.process_object(failing, tr.S3Object(BUCKET, KEY), BUCKET)
    # THEN the state is unlocked and marked unprocessed, so a redelivery is not skipped
    broken = state(s3)
    assert broken["lock"] is None
    assert broken["etag"] is None
    # AND Lambda's retry brings the outputs to v2's exactly
    handle()
    assert_outputs_are_exactly(s3, V2)


def test_the_lock_of_an_invocation_that_died_expires_and_its_outputs_are_cleaned_up(s3):
    # GIVEN an invocation that locked the key, listed an output, wrote it and died (a timeout)
    put_raw(s3, V2)
    orphan = f"processed/transactions/year=2026/month=11/day=20/{NAME}.parquet"
    s3.put_object(Bucket=BUCKET, Key=orphan, Body=b"half-done")
    dead = tr.State(
        source_key=KEY,
        outputs=(orphan,),
        lock={"token": "dead", "expires": "2026-12-01T10:00:00.000Z"},
    )
    s3.put_object(Bucket=BUCKET, Key=tr.state_key(KEY), Body=dead.to_json())
    # WHEN the next invocation runs after the dead one's deadline
    tr.process_object(
        s3, tr.S3Object(BUCKET, KEY), BUCKET, clock=lambda: datetime(2026, 12, 1, 10, 1, tzinfo=UTC)
    )
    # THEN it breaks the lock and removes what the dead one left
    assert_outputs_are_exactly(s3, V2)


def test_a_live_lock_is_waited_for_and_a_lock_held_too_long_fails_so_that_lambda_retries(s3):
    put_raw(s3, V2)
    live = tr.State(source_key=KEY, lock={"token": "other", "expires": "2026-12-01T10:10:00.000Z"})
    s3.put_object(Bucket=BUCKET, Key=tr.state_key(KEY), Body=live.to_json())
    now = [datetime(2026, 12, 1, 10, 0, tzinfo=UTC)]
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        now[0] += timedelta(seconds=30)

    with pytest.raises(tr.LockBusyError, match="being processed by another invocation"):
        tr.process_object(
            s3,
            tr.S3Object(BUCKET, KEY),
            BUCKET,
            deadline=datetime(2026, 12, 1, 10, 2, tzinfo=UTC),
            clock=lambda: now[0],
            sleep=sleep,
        )
    assert naps  # it waited before giving up, a quarter of its remaining time
    assert state(s3)["lock"]["token"] == "other"  # noqa: S105 - a lock token, not a password
    assert list(outputs(s3)) == []


def test_a_state_object_that_is_not_ours_is_a_clear_error(s3):
    put_raw(s3, V2)
    s3.put_object(Bucket=BUCKET, Key=tr.state_key(KEY), Body=b"{not json")
    with pytest.raises(tr.TransformerError, match=r"state/transformer/.*not a state object.*replay"):
        handle()


# --- two invocations of one key, every interleaving -------------------------------------------------

PHASES = ("read", "lock", "write", "commit", "check")


class Invocation:
    """One transformer invocation on its own thread and S3 client, which can be held before a phase:
    read (GET of the raw object), lock and commit (the state's conditional PUTs), write (the first PUT
    of an output), check (the HEAD that asks whether the content is still current)."""

    def __init__(self, name: str, hold_before: str | None) -> None:
        self.name = name
        self.hold_before = hold_before
        self.arrived = threading.Event()
        self.resume = threading.Event()
        self.waiting_for_lock = threading.Event()
        self.error: BaseException | None = None
        self.result: dict[str, Any] | None = None
        self.client = boto3.client("s3", region_name=REGION)
        self.seen: list[str] = []
        self.client.meta.events.register("before-parameter-build.s3", self._before)
        self.thread = threading.Thread(target=self._run, name=name)

    def _phase(self, operation: str, params: dict[str, Any]) -> str | None:
        key = params.get("Key", "")
        if operation == "GetObject" and key.startswith("raw/"):
            return "read"
        if operation == "HeadObject":
            return "check"
        if operation == "PutObject" and key.startswith("state/transformer/"):
            body = params["Body"]
            return (
                "lock"
                if json.loads(body.getvalue() if hasattr(body, "getvalue") else body)["lock"]
                else "commit"
            )
        if operation == "PutObject" and key.startswith(("processed/", "quarantine/")):
            return "write"
        return None

    def _before(self, event_name: str, params: dict[str, Any], **_: Any) -> None:
        phase = self._phase(event_name.rsplit(".", 1)[1], params)
        if phase is None or (self.seen and self.seen[-1] == phase):
            return
        self.seen.append(phase)
        if phase == self.hold_before and not self.resume.is_set():
            self.arrived.set()
            assert self.resume.wait(10), f"{self.name} was never resumed"

    def _sleep(self, seconds: float) -> None:
        self.waiting_for_lock.set()
        time.sleep(0.005)

    def _run(self) -> None:
        try:
            self.result = tr.process_object(self.client, tr.S3Object(BUCKET, KEY), BUCKET, sleep=self._sleep)
        except BaseException as e:  # reported by the test
            self.error = e

    def start(self) -> Invocation:
        self.thread.start()
        return self

    def finish(self) -> None:
        self.resume.set()
        self.thread.join(20)
        assert not self.thread.is_alive(), f"{self.name} did not finish"
        if self.error is not None:
            raise self.error


def _until_done_or_blocked(invocation: Invocation) -> None:
    """Let an invocation run until it finishes or waits for the other's lock."""
    deadline = time.monotonic() + 20
    while invocation.thread.is_alive() and not invocation.waiting_for_lock.is_set():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def interleavings() -> Iterator[tuple[str, str]]:
    # The invocation that read the OLD content is held before each later phase while the one that reads
    # the NEW content runs; then the other way round: the new one held while the old one runs.
    for phase in PHASES[1:]:
        yield "old", phase
    for phase in PHASES:
        yield "new", phase


@pytest.mark.parametrize(("held", "phase"), list(interleavings()))
def test_two_invocations_for_one_key_end_with_the_latest_contents_outputs(s3, held: str, phase: str):
    """GIVEN v1 processed, and an invocation for it held before `phase` while the object is replaced by
    v2 and v2's invocation runs (or the other way round), WHEN both finish, THEN the outputs are exactly
    v2's, listed by a complete state, with the invariant holding."""
    put_raw(s3, V0)
    handle()
    assert_outputs_are_exactly(s3, V0)
    put_raw(s3, V1)
    if held == "old":
        old = Invocation("old", hold_before=phase).start()
        assert old.arrived.wait(10)  # it has read v1 (and done everything before `phase`)
        put_raw(s3, V2)
        new = Invocation("new", hold_before=None).start()
        _until_done_or_blocked(new)
        old.finish()
        new.finish()
    else:
        old = Invocation("old", hold_before="lock").start()  # reads v1, then waits
        assert old.arrived.wait(10)
        put_raw(s3, V2)
        new = Invocation("new", hold_before=phase).start()
        assert new.arrived.wait(10)
        old.resume.set()
        _until_done_or_blocked(old)
        new.finish()
        old.finish()
    assert_outputs_are_exactly(s3, V2)


def test_a_marker_asking_to_drop_unclaimed_entries_keeps_asking_after_the_transformer_marks_the_day(s3):
    # GIVEN tools/replay.py's orphans step marked the 26th: drop the entries no state claims
    put_raw(s3, V1)
    handle()
    marker_key = tr.dirty_marker_key(date(2026, 11, 26))
    s3.put_object(
        Bucket=BUCKET,
        Key=marker_key,
        Body=json.dumps(
            {"token": "t", "reason": "orphans", "source_key": None, "drop_unclaimed": True}
        ).encode(),
    )
    # WHEN a replacement removes this key's file from that day, which marks it again
    put_raw(s3, V2)
    handle()
    # THEN the marker is new (a new token) and still asks to drop unclaimed entries
    marker = json.loads(s3.get_object(Bucket=BUCKET, Key=marker_key)["Body"].read())
    assert marker["token"] != "t"  # noqa: S105 - a marker token
    assert marker["drop_unclaimed"] is True
    assert_outputs_are_exactly(s3, V2)
