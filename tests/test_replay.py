"""tools/replay.py: rebuild from raw/, orphans, compaction and redrive, in process and against Lambda.

The in-process tests run the real handler files on moto; the Lambda tests stub the Lambda API (moto
cannot run a function without Docker) and assert the calls and payloads; S3 and SQS are moto's.
States, markers and manifests are written here exactly as the transformer and the compactor of issue 9
write them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from types import TracebackType
from typing import Any
from urllib.parse import quote_plus, unquote_plus

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber
from moto.core import enable_iam_authentication

from local.server import moto_s3
from tests.conftest import BUCKET, REGION, ROOT, load_event, load_lambda
from tools import replay
from tools.replay_aws import (
    IAM_ACTIONS,
    day_of,
    hashed_suffix,
    is_compacted,
    list_objects,
    marker_key,
    name_hash,
    old_stem,
    read_manifest,
    read_state,
    state_key,
)
from tools.replay_invokers import Function, LambdaInvoker, LocalInvoker, Outcome, RateLimiter

DAY = date(2024, 11, 25)  # finished, whatever day the tests run on
NAMES: dict[Function, str] = {"transformer": "ecommerce-transformer", "compactor": "ecommerce-compactor"}
QUEUE = "ecommerce-transformer-failures"
DATE_HEADER = "Mon, 25 Nov 2024 12:00:00 GMT"


# --- Helpers: data as the pipeline writes it ---------------------------------------------------------


def partition(prefix: str, day: date) -> str:
    return f"{prefix}year={day:%Y}/month={day:%m}/day={day:%d}/"


def raw_key(day: date, name: str) -> str:
    return f"{partition('raw/', day)}{name}.json"


def new_name(key: str) -> str:
    """The output name the transformer gives a raw key (restated here, not imported)."""
    stem = key.rsplit("/", 1)[-1].removesuffix(".json").lstrip("_.")
    return f"{stem}-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:12]}"


def processed(day: date, name: str) -> str:
    return f"{partition('processed/transactions/', day)}{name}.parquet"


def quarantined(day: date, name: str) -> str:
    return f"{partition('quarantine/', day)}{name}.jsonl"


def record(day: date, n: int) -> dict[str, Any]:
    moment = datetime(day.year, day.month, day.day, 1, tzinfo=UTC) + timedelta(minutes=7 * n)
    return {
        "transaction_id": str(uuid.UUID(int=(day.toordinal() << 32) + n, version=4)),
        "timestamp": moment.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "customer_id": f"CUST-{n:05d}",
        "product_id": "PROD-0001",
        "product_name": "Wireless Mouse",
        "category": "Electronics",
        "quantity": 2,
        "price": 24.99,
        "total_amount": 49.98,
    }


def put_raw(s3: Any, key: str, records: list[dict[str, Any]], bad_lines: int = 0) -> set[str]:
    lines = [json.dumps(r) for r in records] + ['{"transaction_id": "broken'] * bad_lines
    s3.put_object(Bucket=BUCKET, Key=key, Body=("\n".join(lines) + "\n").encode())
    return {r["transaction_id"] for r in records}


def keys(s3: Any, prefix: str = "") -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def snapshot(s3: Any) -> dict[str, str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def visible_ids(s3: Any, day: date) -> list[str]:
    """Every transaction_id a query sees in the day's partition (names starting with _ or . skipped)."""
    ids: list[str] = []
    for key in keys(s3, partition("processed/transactions/", day)):
        if key.endswith(".parquet") and not key.rsplit("/", 1)[1].startswith(("_", ".")):
            body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            ids += pq.read_table(io.BytesIO(body), columns=["transaction_id"])["transaction_id"].to_pylist()
    return ids


def put_state(
    s3: Any,
    source_key: str,
    outputs: list[str],
    *,
    etag: str | None = "abc",
    lock: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A state object as the transformer writes it."""
    document = {
        "version": 1,
        "source_key": source_key,
        "etag": etag,
        "outputs": sorted(outputs),
        "lock": lock,
        "records_read": 1,
        "rows_written": 1,
        "quarantined": 0,
    }
    s3.put_object(Bucket=BUCKET, Key=state_key(source_key), Body=json.dumps(document).encode())
    return document


def get_json(s3: Any, key: str) -> Any:
    return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def put_parquet(s3: Any, key: str, metadata: dict[bytes, bytes] | None = None) -> None:
    table = pa.table({"transaction_id": [str(uuid.uuid4())]}).replace_schema_metadata(metadata)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    s3.put_object(Bucket=BUCKET, Key=key, Body=buffer.getvalue())


def put_compacted(s3: Any, day: date, entries: list[dict[str, Any]]) -> str:
    """A compacted file whose footer holds the manifest, as lambda/compactor writes it."""
    key = f"{partition('processed/transactions/', day)}compacted-{day:%Y%m%d}.parquet"
    manifest = {"version": 1, "partition": partition("processed/transactions/", day), "sources": entries}
    put_parquet(s3, key, {b"compaction_manifest": json.dumps(manifest).encode()})
    return key


def lock(minutes: int) -> dict[str, Any]:
    expires = datetime.now(UTC) + timedelta(minutes=minutes)
    return {"token": uuid.uuid4().hex, "expires": expires.strftime("%Y-%m-%dT%H:%M:%S.000Z")}


# --- Helpers: runtimes --------------------------------------------------------------------------------


class RecordingInvoker:
    """An asynchronous invoker that runs nothing: it records each payload and answers `decide`."""

    asynchronous = True

    def __init__(self, decide: Callable[[Function, dict[str, Any]], Outcome] | None = None) -> None:
        self.calls: list[tuple[Function, dict[str, Any]]] = []
        self.decide = decide or (lambda function, payload: Outcome(accepted=True, status="202"))

    def name(self, function: Function) -> str:
        return NAMES[function]

    def invoke(self, function: Function, payload: Any) -> Outcome:
        copy = json.loads(json.dumps(payload))
        self.calls.append((function, copy))
        return self.decide(function, copy)

    def __enter__(self) -> RecordingInvoker:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


class Clock:
    """A monotonic clock that only sleeping moves forward."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def runtime(s3: Any, invoker: Any, **overrides: Any) -> replay.Runtime:
    rt = replay.Runtime(
        s3=s3,
        invoker=invoker,
        region=REGION,
        sqs_factory=lambda: boto3.client("sqs", region_name=REGION),
        queue_wait_seconds=0,
    )
    clock = Clock()
    rt.monotonic, rt.sleep = clock, clock.sleep
    rt.ask = lambda question: pytest.fail(f"asked {question!r} unexpectedly")
    for name, value in overrides.items():
        setattr(rt, name, value)
    return rt


def in_process(s3: Any, **overrides: Any) -> replay.Runtime:
    return runtime(s3, LocalInvoker(None, BUCKET, NAMES), **overrides)


def lambda_client() -> tuple[Any, Stubber, list[dict[str, Any]]]:
    """A stubbed Lambda client and the list its Invoke payloads are recorded into."""
    client = boto3.client("lambda", region_name=REGION)
    payloads: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        payloads.append({**params, "Payload": json.loads(params["Payload"])})

    client.meta.events.register("provide-client-params.lambda.Invoke", record)
    return client, Stubber(client), payloads


def accepted(stub: Stubber, function: str = "ecommerce-transformer") -> None:
    stub.add_response(
        "invoke",
        {
            "StatusCode": 202,
            "ResponseMetadata": {"HTTPStatusCode": 202, "HTTPHeaders": {"date": DATE_HEADER}},
        },
        {"FunctionName": function, "InvocationType": "Event", "Payload": ANY},
    )


def ran(stub: Stubber, result: Any, error: str | None = None) -> None:
    body = json.dumps(result).encode()
    response: dict[str, Any] = {"StatusCode": 200, "Payload": StreamingBody(io.BytesIO(body), len(body))}
    if error:
        response["FunctionError"] = error
    stub.add_response(
        "invoke",
        response,
        {"FunctionName": "ecommerce-compactor", "InvocationType": "RequestResponse", "Payload": ANY},
    )


def process(s3: Any, *raw_keys: str) -> None:
    """Run the transformer on each raw key, as the S3 notification would."""
    with LocalInvoker(None, BUCKET, NAMES) as invoker:
        for key in raw_keys:
            obj = next(o for o in list_objects(s3, BUCKET, key) if o.key == key)
            outcome = invoker.invoke("transformer", replay.replay_event(BUCKET, obj, REGION))
            assert outcome.accepted, outcome


def shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


# --- rebuild --------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_rebuild_of_a_day_in_process_restores_lost_outputs_compacts_it_and_leaves_other_days_alone(
    s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN three raw files of DAY (one with a bad line) and one of the next day, processed
    day_keys = [raw_key(DAY, f"transactions-{n}") for n in range(3)]
    expected: set[str] = set()
    for n, key in enumerate(day_keys):
        expected |= put_raw(s3, key, [record(DAY, 10 * n + i) for i in range(4)], bad_lines=n == 1)
    next_key = raw_key(DAY + timedelta(days=1), "transactions-next")
    put_raw(s3, next_key, [record(DAY + timedelta(days=1), 1)])
    process(s3, *day_keys, next_key)
    next_day = {k: e for k, e in snapshot(s3).items() if "day=26" in k}
    # ... and every output of DAY is lost
    for key in keys(s3, partition("processed/transactions/", DAY)) + keys(s3, partition("quarantine/", DAY)):
        s3.delete_object(Bucket=BUCKET, Key=key)

    # WHEN DAY is rebuilt in process
    code = replay.main(["rebuild", "--bucket", BUCKET, "--day", DAY.isoformat()], runtime=in_process(s3))

    # THEN every valid row of DAY is visible exactly once, in the compacted file, and the bad line is back
    out = capsys.readouterr().out
    assert code == 0, out
    assert "3 invoked, 3 accepted, 0 failed (by status: 200 x3)" in out
    ids = visible_ids(s3, DAY)
    assert sorted(ids) == sorted(expected)
    assert keys(s3, partition("processed/transactions/", DAY)) == [
        f"{partition('processed/transactions/', DAY)}compacted-{DAY:%Y%m%d}.parquet"
    ]
    (bad,) = keys(s3, partition("quarantine/", DAY))
    assert [
        json.loads(line)["source_key"] for line in s3.get_object(Bucket=BUCKET, Key=bad)["Body"].iter_lines()
    ] == [day_keys[1]]
    # and the next day was not touched
    assert {k: e for k, e in snapshot(s3).items() if "day=26" in k} == next_day


def test_rebuild_sends_one_real_s3_event_per_raw_object_with_the_key_encoded_and_force(
    s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN raw keys with characters S3 encodes in events (space, plus, equals, non-ASCII) and a non-.json
    odd = f"{partition('raw/', DAY)}hand upload+fix=1 ü.json"
    plain = raw_key(DAY, "transactions-1")
    put_raw(s3, odd, [record(DAY, 1)])
    put_raw(s3, plain, [record(DAY, 2)])
    s3.put_object(Bucket=BUCKET, Key=f"{partition('raw/', DAY)}notes.txt", Body=b"x")
    invoker = RecordingInvoker()

    code = replay.main(
        ["rebuild", "--bucket", BUCKET, "--day", DAY.isoformat(), "--no-wait"], runtime=runtime(s3, invoker)
    )

    assert code == 0
    assert "not invoked: raw/year=2024/month=11/day=25/notes.txt (not .json" in capsys.readouterr().out
    sample = load_event("s3_put_event.json")
    transformer = load_lambda("transformer")
    events = [payload for function, payload in invoker.calls]
    assert [f for f, _ in invoker.calls] == ["transformer", "transformer"]
    for event, key in zip(events, sorted([odd, plain]), strict=True):
        assert event.pop("force") is True
        assert shape(event) == shape(sample)
        (rec,) = event["Records"]
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert rec["eventName"] == "ObjectCreated:Put"
        assert rec["s3"]["bucket"]["name"] == BUCKET
        assert rec["s3"]["object"]["key"] == quote_plus(key, safe="/")
        assert unquote_plus(rec["s3"]["object"]["key"]) == key
        assert rec["s3"]["object"]["size"] == head["ContentLength"]
        assert rec["s3"]["object"]["eTag"] == head["ETag"].strip('"')
        objects, skipped = transformer.objects_from_event(event)
        assert [o.key for o in objects] == [key]
        assert skipped == []


def test_dry_run_rebuild_invokes_nothing_and_writes_nothing(
    s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in range(3):
        put_raw(s3, raw_key(DAY, f"transactions-{n}"), [record(DAY, n)])
    before = snapshot(s3)
    invoker = RecordingInvoker()

    code = replay.main(
        ["rebuild", "--bucket", BUCKET, "--from", DAY.isoformat(), "--to", DAY.isoformat(), "--dry-run"],
        runtime=runtime(s3, invoker),
    )

    out = capsys.readouterr().out
    assert code == 0
    assert invoker.calls == []
    assert snapshot(s3) == before
    assert out.count("would invoke ecommerce-transformer for raw/") == 3
    first_event = out[out.index("{") : out.index("\n}\n") + 2]
    assert json.loads(first_event)["force"] is True


def test_rebuild_on_lambda_invokes_the_transformer_asynchronously_and_counts_each_status(
    s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = [raw_key(DAY, f"transactions-{n}") for n in range(3)]
    for n, key in enumerate(raw):
        put_raw(s3, key, [record(DAY, n)])
    client, stub, payloads = lambda_client()
    accepted(stub)
    stub.add_client_error("invoke", "TooManyRequestsException", "Rate exceeded", 429)
    accepted(stub)

    with stub:
        code = replay.main(
            ["rebuild", "--bucket", BUCKET, "--day", DAY.isoformat(), "--no-wait"],
            runtime=runtime(s3, LambdaInvoker(client, NAMES)),
        )
        stub.assert_no_pending_responses()

    out = capsys.readouterr().out
    assert code == 1
    assert "3 invoked, 2 accepted, 1 failed (by status: 202 x2, TooManyRequestsException x1)" in out
    assert f"failed: {raw[1]}: TooManyRequestsException Rate exceeded" in out
    assert [p["InvocationType"] for p in payloads] == ["Event"] * 3
    assert [unquote_plus(p["Payload"]["Records"][0]["s3"]["object"]["key"]) for p in payloads] == raw
    assert all(p["Payload"]["force"] is True for p in payloads)
    assert f"python -m tools.replay compact --bucket {BUCKET} --marked --from 2024-11-25" in out


def test_rebuild_on_lambda_waits_for_each_state_to_commit_then_compacts_every_day_touched(
    s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN two raw files of DAY, one with rows past midnight, and a day marked dirty by something else
    first, second = raw_key(DAY, "transactions-1"), raw_key(DAY, "transactions-2")
    put_raw(s3, first, [record(DAY, 1)])
    put_raw(s3, second, [record(DAY, 2)])
    earlier = DAY - timedelta(days=3)
    s3.put_object(Bucket=BUCKET, Key=marker_key(earlier), Body=b"{}")
    later = DAY + timedelta(days=1)
    client, stub, payloads = lambda_client()
    accepted(stub)
    accepted(stub)
    for _ in range(2):
        ran(
            stub,
            {"bucket": BUCKET, "days": [{"action": "compacted", "rows": 1, "files_merged": 1, "deleted": 1}]},
        )
    clock = Clock()
    commits = iter(
        [
            lambda: put_state(s3, first, [processed(DAY, new_name(first))], lock=lock(2)),  # running
            lambda: (
                put_state(s3, first, [processed(DAY, new_name(first))]),
                put_state(s3, second, [processed(DAY, new_name(second)), processed(later, new_name(second))]),
            ),
        ]
    )

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if seconds == 5.0:  # the transformer works while the tool waits for it
            next(commits)()

    # WHEN the day is rebuilt on Lambda
    with stub:
        code = replay.main(
            ["rebuild", "--bucket", BUCKET, "--day", DAY.isoformat()],
            runtime=runtime(s3, LambdaInvoker(client, NAMES), monotonic=clock, sleep=sleep),
        )
        stub.assert_no_pending_responses()

    # THEN it waited for both commits, then compacted each day, one synchronous invocation per day
    out = capsys.readouterr().out
    assert code == 0, out
    assert "transformer finished 2 of 2 accepted invocations" in out
    assert clock.sleeps == pytest.approx(
        [0.1, 5.0, 5.0]
    )  # the rate limit's spacing, then two looks at the states
    compactions = [p for p in payloads if p["FunctionName"] == "ecommerce-compactor"]
    assert [p["Payload"] for p in compactions] == [{"date": DAY.isoformat()}, {"date": later.isoformat()}]
    assert {p["InvocationType"] for p in compactions} == {"RequestResponse"}
    assert f"{DAY}: compacted, 1 rows, 1 files merged, 1 deleted" in out
    # a day marked by something else is left to the schedule, and said so
    assert f"1 other days have a dirty-day marker ({earlier} ...)" in out


def test_rebuild_wait_gives_up_at_the_timeout_and_names_the_pending_keys(
    s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    key = raw_key(DAY, "transactions-1")
    put_raw(s3, key, [record(DAY, 1)])
    client, stub, _ = lambda_client()
    accepted(stub)
    ran(stub, {"bucket": BUCKET, "days": [{"action": "noop", "rows": 0}]})
    clock = Clock()

    with stub:
        code = replay.main(
            ["rebuild", "--bucket", BUCKET, "--day", DAY.isoformat(), "--wait-timeout", "12"],
            runtime=runtime(s3, LambdaInvoker(client, NAMES), monotonic=clock, sleep=clock.sleep),
        )

    out = capsys.readouterr().out
    assert code == 1
    assert sum(clock.sleeps) == 12
    assert "transformer finished 0 of 1 accepted invocations" in out
    assert f"    {key}" in out


def test_a_state_committed_before_the_invocation_does_not_count_as_done(s3: Any) -> None:
    key = raw_key(DAY, "transactions-1")
    put_state(s3, key, [])
    rt = runtime(s3, RecordingInvoker())
    after = datetime.now(UTC) + timedelta(seconds=5)

    done, pending = replay.wait_for_states(rt, BUCKET, {key: after}, timeout=0)

    assert (done, pending) == ({}, [key])


def test_rate_limiter_spaces_calls_evenly_and_does_not_sleep_when_the_work_is_slower() -> None:
    clock = Clock()
    limiter = RateLimiter(4, clock, clock.sleep)
    for _ in range(5):
        limiter.wait()
    assert clock.sleeps == [0.25] * 4

    slow = Clock()
    limiter = RateLimiter(4, slow, slow.sleep)
    for _ in range(3):
        limiter.wait()
        slow.now += 1.0  # each invocation takes a second
    assert slow.sleeps == []


def test_rebuild_rate_limit_applies_to_the_invocations(s3: Any) -> None:
    for n in range(3):
        put_raw(s3, raw_key(DAY, f"t-{n}"), [record(DAY, n)])
    clock = Clock()
    rt = runtime(s3, RecordingInvoker(), monotonic=clock, sleep=clock.sleep)

    replay.main(
        ["rebuild", "--bucket", BUCKET, "--day", DAY.isoformat(), "--rate", "2", "--no-wait"], runtime=rt
    )

    assert clock.sleeps == [0.5, 0.5]


# --- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["rebuild", "--bucket", BUCKET, "--day", "2024-02-30"],
            "bad date '2024-02-30': expected a real day",
        ),
        (["rebuild", "--bucket", BUCKET, "--day", "25/11/2024"], "bad date '25/11/2024'"),
        (["rebuild", "--bucket", BUCKET, "--prefix", "processed/"], "--prefix must be under raw/"),
        (["rebuild", "--bucket", BUCKET], "rebuild needs --day, --from/--to or --prefix"),
        (["rebuild", "--day", "2024-11-25"], "rebuild needs --bucket"),
        (["rebuild", "--bucket", BUCKET, "--to", "2024-11-25"], "--to needs --from"),
        (["rebuild", "--bucket", BUCKET, "--day", "2024-11-25", "--rate", "0"], "--rate must be a positive"),
        (["compact", "--bucket", BUCKET], "compact needs --day, --from/--to or --marked"),
    ],
)
def test_bad_arguments_are_refused_with_what_is_wrong(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        replay.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_range_ending_before_it_starts_is_an_error(s3: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code = replay.main(
        ["rebuild", "--bucket", BUCKET, "--from", "2024-11-25", "--to", "2024-11-24"],
        runtime=runtime(s3, RecordingInvoker()),
    )
    assert code == 1
    assert "--from 2024-11-25 is after --to 2024-11-24" in capsys.readouterr().err


def test_a_missing_bucket_is_named(s3: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code = replay.main(
        ["orphans", "--bucket", "no-such-bucket-here"], runtime=runtime(s3, RecordingInvoker())
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "reading the lifecycle rules of s3://no-such-bucket-here: the bucket does not exist" in err


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("ResourceNotFoundException", 404, "function not found"),
        ("AccessDeniedException", 403, "access denied: this needs lambda:InvokeFunction"),
    ],
)
def test_a_missing_function_or_permission_stops_at_the_first_invocation_and_says_which(
    s3: Any, capsys: pytest.CaptureFixture[str], code: str, status: int, expected: str
) -> None:
    for n in range(3):
        put_raw(s3, raw_key(DAY, f"t-{n}"), [record(DAY, n)])
    client, stub, payloads = lambda_client()
    stub.add_client_error("invoke", code, "no", status)

    with stub:
        result = replay.main(
            ["rebuild", "--bucket", BUCKET, "--day", DAY.isoformat()],
            runtime=runtime(s3, LambdaInvoker(client, NAMES)),
        )

    err = capsys.readouterr().err
    assert result == 1
    assert len(payloads) == 1
    assert "invoking Lambda function ecommerce-transformer (Event, region us-east-1)" in err
    assert expected in err


def test_access_denied_on_s3_names_the_permission_and_the_policy_file(
    s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    denied = boto3.client("s3", region_name=REGION)
    stub = Stubber(denied)
    stub.add_client_error("list_objects_v2", "AccessDenied", "Access Denied", 403)

    with stub:
        code = replay.main(
            ["rebuild", "--bucket", BUCKET, "--day", "2024-11-25"],
            runtime=runtime(denied, RecordingInvoker()),
        )

    err = capsys.readouterr().err
    assert code == 1
    assert f"listing s3://{BUCKET}/raw/year=2024/month=11/day=25/: access denied" in err
    assert "this needs s3:ListBucket (see infra/iam/operator-replay-policy.json)" in err


def test_local_endpoint_must_be_on_this_machine(capsys: pytest.CaptureFixture[str]) -> None:
    code = replay.main(
        ["compact", "--bucket", BUCKET, "--marked", "--local-endpoint", "https://s3.amazonaws.com"]
    )
    assert code == 1
    assert "--local-endpoint must be the demo's embedded S3 here" in capsys.readouterr().err


def test_a_state_object_that_is_not_one_stops_the_orphan_step_before_anything_is_deleted(
    s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    s3.put_object(Bucket=BUCKET, Key=processed(DAY, "old"), Body=b"x")
    s3.put_object(
        Bucket=BUCKET, Key=state_key("raw/x.json"), Body=b'{"version": 1, "source_key": "raw/y.json"}'
    )
    before = snapshot(s3)

    code = replay.main(["orphans", "--bucket", BUCKET, "--yes"], runtime=in_process(s3))

    assert code == 1
    assert "is not a state object this function wrote" in capsys.readouterr().err
    assert snapshot(s3) == before


def test_a_state_object_under_another_keys_name_stops_the_orphan_step(
    s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    state = load_lambda("transformer").State(source_key="raw/y.json", etag="e", outputs=())
    s3.put_object(Bucket=BUCKET, Key=state_key("raw/x.json"), Body=state.to_json())
    before = snapshot(s3)

    code = replay.main(["orphans", "--bucket", BUCKET, "--yes"], runtime=in_process(s3))

    assert code == 1
    assert "belongs to another state key" in capsys.readouterr().err
    assert snapshot(s3) == before


# --- compact --------------------------------------------------------------------------------------------


def test_compact_invokes_the_compactor_once_per_finished_day_with_a_date_payload(
    s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    client, stub, payloads = lambda_client()
    ran(
        stub,
        {"bucket": BUCKET, "days": [{"action": "compacted", "rows": 5, "files_merged": 2, "deleted": 2}]},
    )
    ran(stub, {"errorType": "DayNotFinishedError", "errorMessage": "day is not finished"}, error="Unhandled")
    ran(stub, {"errorType": "ManifestError", "errorMessage": "bad manifest"}, error="Unhandled")
    today = datetime.now(UTC).date()
    start = today - timedelta(days=3)

    with stub:
        code = replay.main(
            [
                "compact",
                "--bucket",
                BUCKET,
                "--from",
                start.isoformat(),
                "--to",
                (today + timedelta(days=1)).isoformat(),
            ],
            runtime=runtime(s3, LambdaInvoker(client, NAMES)),
        )
        stub.assert_no_pending_responses()

    out = capsys.readouterr().out
    assert code == 1
    assert [p["Payload"] for p in payloads] == [
        {"date": (start + timedelta(days=n)).isoformat()} for n in range(3)
    ]
    assert f"{start}: compacted, 5 rows, 2 files merged, 2 deleted" in out
    assert f"{start + timedelta(days=1)}: not finished for the compactor yet" in out
    assert f"{start + timedelta(days=2)}: FAILED FunctionError:ManifestError bad manifest" in out
    assert f"{today}: not finished (UTC), left to the compactor's schedule" in out
    assert "3 invoked, 2 accepted, 1 failed" in out


def test_dry_run_compact_lists_the_payloads_it_would_send(
    s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    s3.put_object(Bucket=BUCKET, Key=marker_key(DAY), Body=b"{}")
    s3.put_object(Bucket=BUCKET, Key="state/compaction/dirty/not-a-marker.json", Body=b"{}")
    invoker = RecordingInvoker()

    code = replay.main(["compact", "--bucket", BUCKET, "--marked", "--dry-run"], runtime=runtime(s3, invoker))

    assert code == 0
    assert invoker.calls == []
    assert 'would invoke ecommerce-compactor with {"date": "2024-11-25"}' in capsys.readouterr().out


# --- orphans --------------------------------------------------------------------------------------------


class Bucket:
    """A bucket after a rebuild under the new names, with orphans of every kind the spec names."""

    def __init__(self, s3: Any) -> None:
        self.s3 = s3
        # A: a raw key the new version has processed; its outputs under the old names are orphans.
        self.a = raw_key(DAY, "transactions-a")
        put_raw(s3, self.a, [record(DAY, 1)])
        self.a_outputs = [processed(DAY, new_name(self.a)), quarantined(DAY, new_name(self.a))]
        for key in self.a_outputs:
            s3.put_object(Bucket=BUCKET, Key=key, Body=b"new")
        self.a_state = put_state(s3, self.a, self.a_outputs)
        self.old = [processed(DAY, "transactions-a"), quarantined(DAY, "transactions-a")]
        for key in self.old:
            s3.put_object(Bucket=BUCKET, Key=key, Body=b"old")
        # B: a raw key deleted by hand; one output present, one compacted away (on the previous day).
        self.b = raw_key(DAY, "transactions-b")
        self.b_present = processed(DAY, new_name(self.b))
        self.b_compacted = processed(DAY - timedelta(days=1), new_name(self.b))
        s3.put_object(Bucket=BUCKET, Key=self.b_present, Body=b"b")
        put_state(s3, self.b, [self.b_present, self.b_compacted])
        self.orphans = {*self.old, self.b_present, state_key(self.b)}


def test_orphans_are_listed_and_nothing_is_deleted_when_the_answer_is_no(
    s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = Bucket(s3)
    before = snapshot(s3)
    questions: list[str] = []

    def answer(question: str) -> str:
        questions.append(question)
        return "n"

    code = replay.main(["orphans", "--bucket", BUCKET], runtime=in_process(s3, ask=answer))

    out = capsys.readouterr().out
    assert code == 1
    assert snapshot(s3) == before
    assert questions == [
        "Delete 3 objects and 1 state objects, after writing dirty-day markers for 2 days? [y/N] "
    ]
    for key in bucket.orphans:
        assert key in out
    assert "nothing deleted" in out


def test_orphans_are_deleted_after_yes_with_markers_and_the_compactor_runs_for_the_marked_days(
    s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = Bucket(s3)
    invoker = RecordingInvoker(
        lambda f, p: Outcome(accepted=True, status="200", result={"days": [{"action": "noop"}]})
    )
    before = snapshot(s3)

    code = replay.main(["orphans", "--bucket", BUCKET], runtime=runtime(s3, invoker, ask=lambda q: "y"))

    out = capsys.readouterr().out
    assert code == 0, out
    after = snapshot(s3)
    markers = {k for k in after if k.startswith("state/compaction/dirty/")}
    assert set(before) - set(after) == bucket.orphans
    assert markers == {marker_key(DAY), marker_key(DAY - timedelta(days=1))}
    assert set(after) - set(before) == markers
    for key in markers:
        assert get_json(s3, key)["drop_unclaimed"] is True
    assert get_json(s3, marker_key(DAY - timedelta(days=1)))["source_key"] == bucket.b
    assert get_json(s3, state_key(bucket.a)) == bucket.a_state  # untouched, lock null
    assert [p for _, p in invoker.calls] == [
        {"date": (DAY - timedelta(days=1)).isoformat()},
        {"date": DAY.isoformat()},
    ]
    assert "3 objects deleted" in out
    assert "1 states deleted" in out


def test_each_days_marker_is_written_before_any_delete_on_that_day_and_the_state_goes_last(s3: Any) -> None:
    bucket = Bucket(s3)
    calls: list[tuple[str, str, dict[str, Any]]] = []

    def record_call(params: dict[str, Any], model: Any, **_: Any) -> None:
        calls.append((model.name, params.get("Key", ""), params))

    s3.meta.events.register("provide-client-params.s3", record_call)

    replay.main(
        ["orphans", "--bucket", BUCKET, "--yes", "--no-compact"], runtime=runtime(s3, RecordingInvoker())
    )

    writes = [(op, key) for op, key, _ in calls if op in ("PutObject", "DeleteObject")]
    for n, (op, key) in enumerate(writes):
        if op == "DeleteObject" and key.startswith("processed/"):
            day = day_of(key)
            assert day is not None
            assert ("PutObject", marker_key(day)) in writes[:n], f"{key} deleted before its day was marked"
    b_state = state_key(bucket.b)
    lock_write = writes.index(("PutObject", b_state))
    assert writes.index(("PutObject", marker_key(DAY - timedelta(days=1)))) > lock_write
    assert writes.index(("DeleteObject", bucket.b_present)) > lock_write
    assert writes.index(("DeleteObject", b_state)) > writes.index(("DeleteObject", bucket.b_present))
    deletes = [params for op, _, params in calls if op == "DeleteObject"]
    assert deletes
    assert all(params.get("IfMatch") for params in deletes), "every delete is conditional"


def test_orphans_with_yes_does_not_ask_and_a_second_run_finds_nothing(
    s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    Bucket(s3)
    rt = runtime(s3, RecordingInvoker(lambda f, p: Outcome(accepted=True, status="200")))

    assert replay.main(["orphans", "--bucket", BUCKET, "--yes"], runtime=rt) == 0
    after_first = snapshot(s3)
    capsys.readouterr()
    assert replay.main(["orphans", "--bucket", BUCKET, "--yes"], runtime=rt) == 0

    assert "nothing to remove" in capsys.readouterr().out
    assert snapshot(s3) == after_first


def test_dry_run_orphans_lists_and_writes_nothing(s3: Any, capsys: pytest.CaptureFixture[str]) -> None:
    bucket = Bucket(s3)
    before = snapshot(s3)

    code = replay.main(["orphans", "--bucket", BUCKET, "--dry-run"], runtime=runtime(s3, RecordingInvoker()))

    out = capsys.readouterr().out
    assert code == 0
    assert snapshot(s3) == before
    assert all(key in out for key in bucket.orphans)


def test_outputs_of_a_raw_key_not_yet_processed_by_this_version_are_kept(
    s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN raw C with no state (never rebuilt) and D whose run failed (etag null): their older outputs
    c, d = raw_key(DAY, "transactions-c"), raw_key(DAY, "transactions-d")
    put_raw(s3, c, [record(DAY, 1)])
    put_raw(s3, d, [record(DAY, 2)])
    put_state(s3, d, [], etag=None)
    kept = [processed(DAY, "transactions-c"), quarantined(DAY, "transactions-d"), processed(DAY, new_name(c))]
    for key in kept:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    before = snapshot(s3)

    code = replay.main(["orphans", "--bucket", BUCKET, "--yes"], runtime=runtime(s3, RecordingInvoker()))

    out = capsys.readouterr().out
    assert code == 0
    assert snapshot(s3) == before
    for key in kept:
        assert f"kept {key}: " in out
    assert "has not been processed by this version yet: rebuild it first" in out


def test_a_state_a_running_invocation_holds_is_left_and_an_expired_lock_is_broken(s3: Any) -> None:
    held, dead = raw_key(DAY, "gone-held"), raw_key(DAY, "gone-dead")
    held_out, dead_out = processed(DAY, new_name(held)), processed(DAY, new_name(dead))
    for key in (held_out, dead_out):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    put_state(s3, held, [held_out], lock=lock(5))
    put_state(s3, dead, [dead_out], lock=lock(-5))

    replay.main(
        ["orphans", "--bucket", BUCKET, "--yes", "--no-compact"], runtime=runtime(s3, RecordingInvoker())
    )

    remaining = set(keys(s3))
    assert {held_out, state_key(held)} <= remaining
    assert not {dead_out, state_key(dead)} & remaining


def test_a_raw_object_uploaded_again_before_the_delete_keeps_its_outputs_and_its_state(
    s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = Bucket(s3)

    def reupload_then_yes(question: str) -> str:
        put_raw(s3, bucket.b, [record(DAY, 9)])
        return "yes"

    code = replay.main(
        ["orphans", "--bucket", BUCKET, "--no-compact"],
        runtime=runtime(s3, RecordingInvoker(), ask=reupload_then_yes),
    )

    out = capsys.readouterr().out
    assert code == 1
    assert f"skipped {bucket.b}: the raw object exists again" in out
    assert bucket.b_present in keys(s3)
    assert get_json(s3, state_key(bucket.b))["lock"] is None  # released as it was
    assert not set(bucket.old) & set(keys(s3))  # the rest was done


def test_an_orphan_rewritten_after_the_listing_is_kept(s3: Any, capsys: pytest.CaptureFixture[str]) -> None:
    bucket = Bucket(s3)

    def rewrite_then_yes(question: str) -> str:
        s3.put_object(Bucket=BUCKET, Key=bucket.old[0], Body=b"rewritten")
        return "y"

    code = replay.main(
        ["orphans", "--bucket", BUCKET, "--no-compact"],
        runtime=runtime(s3, RecordingInvoker(), ask=rewrite_then_yes),
    )

    assert code == 1
    assert bucket.old[0] in keys(s3)
    assert "1 changed since listed, kept" in capsys.readouterr().out


def test_stale_outputs_its_own_state_no_longer_lists_are_removed_under_its_lock(s3: Any) -> None:
    key = raw_key(DAY, "transactions-e")
    put_raw(s3, key, [record(DAY, 1)])
    current, stale = processed(DAY, new_name(key)), processed(DAY + timedelta(days=1), new_name(key))
    for output in (current, stale):
        s3.put_object(Bucket=BUCKET, Key=output, Body=b"x")
    document = put_state(s3, key, [current])

    replay.main(
        ["orphans", "--bucket", BUCKET, "--yes", "--no-compact"], runtime=runtime(s3, RecordingInvoker())
    )

    assert stale not in keys(s3)
    assert current in keys(s3)
    assert get_json(s3, state_key(key)) == document
    assert get_json(s3, marker_key(DAY + timedelta(days=1)))["source_key"] == key


def test_a_compacted_day_with_unclaimed_entries_is_marked_and_one_that_would_lose_rows_is_not(
    s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    a = raw_key(DAY, "transactions-a")
    put_raw(s3, a, [record(DAY, 1)])
    a_out = processed(DAY, new_name(a))
    a_earlier = processed(DAY - timedelta(days=1), new_name(a))
    put_state(s3, a, [a_out, a_earlier])
    s3.put_object(Bucket=BUCKET, Key=a_out, Body=b"x")  # rewritten by a rebuild, not yet compacted
    # DAY: an old-named entry nobody claims, and A's entry merged before issue 9 (no source_key) with a
    # loose copy that will replace it: safe to mark.
    put_compacted(
        s3,
        DAY,
        [
            {"key": processed(DAY, "transactions-a"), "etag": "1", "rows": 1},
            {"key": a_out, "etag": "2", "rows": 1},
        ],
    )
    # The day before: an unclaimed entry, and A's entry without source_key and without a loose copy.
    put_compacted(
        s3,
        DAY - timedelta(days=1),
        [
            {"key": processed(DAY - timedelta(days=1), "old"), "etag": "1", "rows": 1},
            {"key": a_earlier, "etag": "2", "rows": 1},
        ],
    )

    code = replay.main(
        ["orphans", "--bucket", BUCKET, "--yes", "--no-compact"], runtime=runtime(s3, RecordingInvoker())
    )

    out = capsys.readouterr().out
    assert code == 1
    assert get_json(s3, marker_key(DAY))["drop_unclaimed"] is True
    assert marker_key(DAY - timedelta(days=1)) not in keys(s3)
    assert f"compacted day {DAY}: 1 manifest entries no state claims" in out
    earlier = DAY - timedelta(days=1)
    assert (
        f"compacted day {earlier} NOT marked: it holds rows of raw keys that must be rebuilt first ({a})"
        in out
    )


def test_a_compacted_entry_that_names_its_raw_key_is_claimed_by_its_state(s3: Any) -> None:
    a = raw_key(DAY, "transactions-a")
    put_raw(s3, a, [record(DAY, 1)])
    a_out = processed(DAY, new_name(a))
    put_state(s3, a, [a_out])
    put_compacted(s3, DAY, [{"key": a_out, "etag": "2", "rows": 1, "source_key": a}])

    plan = replay.find_orphans(s3, BUCKET, datetime.now(UTC), None)

    assert plan.empty()
    assert plan.blocked_days == {}


def test_outputs_of_raw_objects_that_may_have_expired_are_history_not_orphans(
    s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN raw/ expiring after 30 days, as the stack's lifecycle rule does (90 by default)
    s3.put_bucket_lifecycle_configuration(
        Bucket=BUCKET,
        LifecycleConfiguration={
            "Rules": [
                {"ID": "expire-raw", "Status": "Enabled", "Prefix": "raw/", "Expiration": {"Days": 30}},
                {"ID": "other", "Status": "Enabled", "Prefix": "athena-results/", "Expiration": {"Days": 1}},
            ]
        },
    )
    today = datetime.now(UTC).date()
    old, recent = today - timedelta(days=31), today - timedelta(days=30)
    # raw objects gone: one written before the retention (expired, most likely), one within it (deleted)
    expired_key, deleted_key = raw_key(old, "transactions-old"), raw_key(recent, "transactions-recent")
    expired_out, deleted_out = processed(old, new_name(expired_key)), processed(recent, new_name(deleted_key))
    undated = "raw/manual/upload.json"  # no date in the key, no quarantine file: unknown
    undated_out = processed(recent, new_name(undated))
    for key in (expired_out, deleted_out, undated_out):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    put_state(s3, expired_key, [expired_out])
    put_state(s3, deleted_key, [deleted_out])
    put_state(s3, undated, [undated_out])
    # files of the version before issue 9, in an old partition and a recent one
    old_file, recent_file = processed(old, "transactions-x"), processed(recent, "transactions-y")
    for key in (old_file, recent_file):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    put_compacted(s3, old, [{"key": processed(old, "transactions-z"), "etag": "1", "rows": 1}])

    code = replay.main(
        ["orphans", "--bucket", BUCKET, "--yes", "--no-compact"], runtime=runtime(s3, RecordingInvoker())
    )

    out = capsys.readouterr().out
    assert code == 0, out
    remaining = set(keys(s3))
    assert {expired_out, state_key(expired_key), undated_out, state_key(undated), old_file} <= remaining
    assert not {deleted_out, state_key(deleted_key), recent_file} & remaining
    assert marker_key(old) not in remaining
    assert "kept as history (1 compacted days, 1 outputs, 2 states): raw/ expires after 30 days" in out

    # and with the retention given on the command line instead, nothing older than it is an orphan
    plan = replay.find_orphans(s3, BUCKET, datetime.now(UTC), 0)
    assert plan.empty()


# --- redrive --------------------------------------------------------------------------------------------


def failure_record(event: dict[str, Any], function: str = "ecommerce-transformer") -> str:
    """The invocation record Lambda sends to the on-failure destination (AWS Lambda developer guide)."""
    return json.dumps(
        {
            "version": "1.0",
            "timestamp": "2024-11-25T12:03:00.000Z",
            "requestContext": {
                "requestId": str(uuid.uuid4()),
                "functionArn": f"arn:aws:lambda:us-east-1:123456789012:function:{function}:$LATEST",
                "condition": "RetriesExhausted",
                "approximateInvokeCount": 3,
            },
            "requestPayload": event,
            "responseContext": {
                "statusCode": 200,
                "executedVersion": "$LATEST",
                "functionError": "Unhandled",
            },
            "responsePayload": {"errorMessage": "S3 was slow", "errorType": "TransformerError"},
        }
    )


def event_for(key: str, bucket: str = BUCKET) -> dict[str, Any]:
    event = load_event("s3_put_event.json")
    event["Records"][0]["s3"]["object"]["key"] = quote_plus(key, safe="/")
    event["Records"][0]["s3"]["bucket"]["name"] = bucket
    return event


@pytest.fixture
def queue(s3: Any) -> tuple[Any, str]:
    sqs = boto3.client("sqs", region_name=REGION)
    return sqs, sqs.create_queue(QueueName=QUEUE)["QueueUrl"]


def messages(sqs: Any, url: str) -> list[Any]:
    """What is in the queue and visible now (bodies that are JSON decoded)."""
    found = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0).get("Messages", [])
    bodies = [m["Body"] for m in found]
    return [json.loads(b) if b.startswith("{") else b for b in bodies]


def test_redrive_deletes_a_message_only_after_its_event_was_accepted_and_keeps_the_others(
    s3: Any, queue: tuple[Any, str], capsys: pytest.CaptureFixture[str]
) -> None:
    sqs, url = queue
    events = {name: event_for(raw_key(DAY, name)) for name in ("k1", "k2", "k3")}
    for event in events.values():
        sqs.send_message(QueueUrl=url, MessageBody=failure_record(event))
    order: list[tuple[str, str]] = []

    def decide(function: Function, payload: dict[str, Any]) -> Outcome:
        key = payload["Records"][0]["s3"]["object"]["key"]
        order.append(("invoke", key))
        if key.endswith("k2.json"):
            return Outcome(accepted=False, status="TooManyRequestsException", detail="Rate exceeded")
        return Outcome(accepted=True, status="202")

    rt = runtime(s3, RecordingInvoker(decide))
    sqs_client = boto3.client("sqs", region_name=REGION)
    handles: dict[str, str] = {}

    def on_receive(parsed: dict[str, Any], **_: Any) -> None:
        for m in parsed.get("Messages", []):
            handles[m["ReceiptHandle"]] = json.loads(m["Body"])["requestPayload"]["Records"][0]["s3"][
                "object"
            ]["key"]

    sqs_client.meta.events.register("after-call.sqs.ReceiveMessage", on_receive)
    sqs_client.meta.events.register(
        "provide-client-params.sqs.DeleteMessage",
        lambda params, **_: order.append(("delete", handles[params["ReceiptHandle"]])),
    )
    rt.sqs_factory = lambda: sqs_client

    code = replay.main(["redrive", "--queue-url", url], runtime=rt)

    out = capsys.readouterr().out
    assert code == 1
    deleted = [key for what, key in order if what == "delete"]
    assert sorted(deleted) == sorted(quote_plus(raw_key(DAY, n), safe="/") for n in ("k1", "k3"))
    for key in deleted:
        assert order.index(("invoke", key)) < order.index(("delete", key))
    assert [m["requestPayload"] for m in messages(sqs, url)] == [events["k2"]]  # kept, visible again
    assert "3 messages read, 2 deleted after an accepted invocation, 1 left in the queue" in out


def test_redrive_on_lambda_sends_the_original_event_unchanged_and_deletes_on_202(
    s3: Any, queue: tuple[Any, str]
) -> None:
    sqs, url = queue
    event = event_for(raw_key(DAY, "k1"))
    sqs.send_message(QueueUrl=url, MessageBody=failure_record(event))
    client, stub, payloads = lambda_client()
    accepted(stub)

    with stub:
        code = replay.main(["redrive"], runtime=runtime(s3, LambdaInvoker(client, NAMES)))

    assert code == 0
    assert [p["Payload"] for p in payloads] == [event]
    assert [p["InvocationType"] for p in payloads] == ["Event"]
    assert messages(sqs, url) == []


def test_redrive_dry_run_invokes_nothing_and_leaves_every_message_visible(
    s3: Any, queue: tuple[Any, str], capsys: pytest.CaptureFixture[str]
) -> None:
    sqs, url = queue
    for n in range(12):  # more than one receive's worth
        sqs.send_message(QueueUrl=url, MessageBody=failure_record(event_for(raw_key(DAY, f"k{n}"))))
    invoker = RecordingInvoker()

    code = replay.main(["redrive", "--dry-run"], runtime=runtime(s3, invoker))

    out = capsys.readouterr().out
    assert code == 0
    assert invoker.calls == []
    assert out.count("would invoke ecommerce-transformer again for") == 12
    assert "RetriesExhausted after 3 attempts" in out
    assert len(messages(sqs, url)) == 10  # all visible again (a receive returns at most 10)
    assert (
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"][
            "ApproximateNumberOfMessages"
        ]
        == "12"
    )


def test_redrive_leaves_malformed_messages_and_records_of_other_functions(
    s3: Any, queue: tuple[Any, str], capsys: pytest.CaptureFixture[str]
) -> None:
    sqs, url = queue
    sqs.send_message(QueueUrl=url, MessageBody="not json")
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"Records": []}))
    sqs.send_message(
        QueueUrl=url, MessageBody=failure_record(event_for(raw_key(DAY, "k")), "ecommerce-generator")
    )
    invoker = RecordingInvoker()

    code = replay.main(["redrive"], runtime=runtime(s3, invoker))

    out = capsys.readouterr().out
    assert code == 1
    assert invoker.calls == []
    assert len(messages(sqs, url)) == 3
    assert "not JSON" in out
    assert "not a Lambda invocation record (no requestPayload object)" in out
    assert "a record of function ecommerce-generator, not ecommerce-transformer" in out


def test_redrive_in_process_processes_the_event_and_keeps_a_message_whose_handler_fails(
    s3: Any, queue: tuple[Any, str], capsys: pytest.CaptureFixture[str]
) -> None:
    sqs, url = queue
    good = raw_key(DAY, "transactions-ok")
    ids = put_raw(s3, good, [record(DAY, 1), record(DAY, 2)])
    sqs.send_message(QueueUrl=url, MessageBody=failure_record(event_for(good)))
    # An event whose bucket is gone: the transformer raises, as it would on Lambda.
    sqs.send_message(
        QueueUrl=url, MessageBody=failure_record(event_for(raw_key(DAY, "x"), "no-such-bucket-here"))
    )
    rt = runtime(s3, LocalInvoker(None, None, NAMES))

    code = replay.main(["redrive", "--max", "5"], runtime=rt)

    out = capsys.readouterr().out
    assert code == 1
    assert sorted(visible_ids(s3, DAY)) == sorted(ids)
    (left,) = messages(sqs, url)
    assert left["requestPayload"]["Records"][0]["s3"]["bucket"]["name"] == "no-such-bucket-here"
    assert "FunctionError:" in out


def test_redrive_finds_the_queue_by_the_stacks_name_and_says_when_it_is_missing(
    s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code = replay.main(["redrive", "--stack", "other"], runtime=runtime(s3, RecordingInvoker()))

    assert code == 1
    assert "looking up the queue other-transformer-failures (region us-east-1): the queue does not exist" in (
        capsys.readouterr().err
    )


# --- the no-account path and the operator's permissions -------------------------------------------------


@pytest.mark.integration
def test_the_tool_runs_against_the_demos_embedded_s3_with_the_handlers_in_process(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with moto_s3() as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
        s3.create_bucket(Bucket=BUCKET)
        ids = put_raw(s3, raw_key(DAY, "transactions-1"), [record(DAY, n) for n in range(3)])

        code = replay.main(
            ["rebuild", "--bucket", BUCKET, "--day", DAY.isoformat(), "--local-endpoint", endpoint]
        )

        out = capsys.readouterr().out
        assert code == 0, out
        assert sorted(visible_ids(s3, DAY)) == sorted(ids)
        assert keys(s3, partition("processed/transactions/", DAY))[0].endswith(
            f"compacted-{DAY:%Y%m%d}.parquet"
        )


def _allowed(policy: dict[str, Any], action: str, resource: str, request: dict[str, Any]) -> bool:
    """Whether an Allow statement of `policy` grants `action` on `resource` for this request."""
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = (
            statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        )
        if action not in actions or not any(fnmatch.fnmatchcase(resource, r) for r in resources):
            continue
        condition = statement.get("Condition", {})
        prefixes = condition.get("StringLike", {}).get("s3:prefix", [])
        prefixes = [prefixes] if isinstance(prefixes, str) else prefixes
        if prefixes and not any(fnmatch.fnmatchcase(request.get("Prefix", ""), p) for p in prefixes):
            continue
        if condition.get("Null", {}).get("s3:if-match") == "false" and not request.get("IfMatch"):
            continue
        return True
    return False


def test_the_operator_policy_grants_exactly_the_calls_the_tool_makes(s3: Any, queue: tuple[Any, str]) -> None:
    sqs, url = queue
    policy = json.loads((ROOT / "infra" / "iam" / "operator-replay-policy.json").read_text(encoding="utf-8"))
    calls: list[tuple[str, str, dict[str, Any]]] = []
    s3_client = boto3.client("s3", region_name=REGION)
    sqs_client = boto3.client("sqs", region_name=REGION)
    # Every command, each on a bucket that makes it call everything it can.
    bucket = Bucket(s3_client)
    put_compacted(s3_client, DAY, [{"key": processed(DAY, "gone"), "etag": "1", "rows": 1}])
    sqs.send_message(QueueUrl=url, MessageBody=failure_record(event_for(bucket.a)))
    sqs.send_message(QueueUrl=url, MessageBody=failure_record(event_for(bucket.a)))
    client, stub, _ = lambda_client()
    accepted(stub)  # rebuild, then its day compacted
    ran(stub, {"days": [{"action": "noop"}]})
    for _ in range(2):
        ran(stub, {"days": [{"action": "noop"}]})  # orphans: the marked days
    accepted(stub)  # redrive: one accepted, one refused
    stub.add_client_error("invoke", "TooManyRequestsException", "slow down", 429)
    # Only the tool's calls from here on.
    for service_client, service in ((s3_client, "s3"), (sqs_client, "sqs"), (client, "lambda")):
        service_client.meta.events.register(
            f"provide-client-params.{service}",
            lambda params, model, service=service, **_: calls.append((service, model.name, dict(params))),
        )
    # A's state is newer than the stubbed invocation's Date header: the wait ends at its first look.
    rt = runtime(s3_client, LambdaInvoker(client, NAMES))
    rt.sqs_factory = lambda: sqs_client
    with stub:
        replay.main(["rebuild", "--bucket", BUCKET, "--day", DAY.isoformat()], runtime=rt)
        replay.main(["orphans", "--bucket", BUCKET, "--yes"], runtime=rt)
        replay.main(["redrive"], runtime=rt)
        stub.assert_no_pending_responses()

    used: set[str] = set()
    for service, operation, params in calls:
        if service == "s3":
            resource = "arn:aws:s3:::{{BUCKET}}" + (f"/{params['Key']}" if "Key" in params else "")
        elif service == "sqs":
            resource = "arn:aws:sqs:{{REGION}}:{{ACCOUNT}}:ecommerce-transformer-failures"
        else:
            resource = f"arn:aws:lambda:{{{{REGION}}}}:{{{{ACCOUNT}}}}:function:{params['FunctionName']}"
        for action in IAM_ACTIONS[operation]:
            assert _allowed(policy, action, resource, params), f"{operation} on {resource} needs {action}"
            used.add(action)
    granted = {
        action
        for statement in policy["Statement"]
        for action in (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
    }
    assert granted == used


# --- with the transformer and compactor of issue 9 -------------------------------------------------------


def test_the_tools_names_are_the_transformers(s3: Any) -> None:
    key = f"{partition('raw/', DAY)}_hand upload+1.json"
    put_raw(s3, key, [record(DAY, 1)], bad_lines=1)

    process(s3, key)

    (state,) = [read_state(s3, BUCKET, k) for k in keys(s3, "state/transformer/")]
    assert state is not None
    assert state.key == state_key(key) == load_lambda("transformer").state_key(key)
    assert state.complete
    assert set(state.outputs) == set(keys(s3, "processed/")) | set(keys(s3, "quarantine/"))
    assert {hashed_suffix(k) for k in state.outputs} == {name_hash(key)}


def to_old_names(s3: Any) -> dict[str, str]:
    """Make the bucket look as the version before issue 9 left it: each output named after its raw file's
    stem, no raw key inside, no state and no marker. Returns {old output key: raw key}."""
    owners: dict[str, str] = {}
    for state_object in keys(s3, "state/transformer/"):
        document = get_json(s3, state_object)
        for key in document["outputs"]:
            old = key.rsplit("/", 1)[0] + "/" + old_stem(document["source_key"]) + key[key.rindex(".") :]
            body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            if key.endswith(".parquet"):
                table = pq.read_table(io.BytesIO(body)).replace_schema_metadata(None)
                buffer = io.BytesIO()
                pq.write_table(table, buffer)
                body = buffer.getvalue()
            s3.put_object(Bucket=BUCKET, Key=old, Body=body)
            s3.delete_object(Bucket=BUCKET, Key=key)
            owners[old] = document["source_key"]
    for key in keys(s3, "state/"):
        s3.delete_object(Bucket=BUCKET, Key=key)
    return owners


def quarantined_lines(s3: Any) -> list[tuple[str, int]]:
    lines = []
    for key in keys(s3, "quarantine/"):
        for line in s3.get_object(Bucket=BUCKET, Key=key)["Body"].iter_lines():
            document = json.loads(line)
            lines.append((document["source_key"], document["line"]))
    return sorted(lines)


@pytest.mark.integration
@pytest.mark.skipif(
    not hasattr(load_lambda("compactor"), "DIRTY_PREFIX"),
    reason="needs the compactor that verifies dirty days against the states (issue 9)",
)
def test_a_bucket_written_under_the_old_names_is_converted_by_a_full_rebuild_and_the_orphan_step(
    s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a bucket the version before issue 9 wrote: DAY compacted (a manifest without raw keys), the
    # next day's files loose, quarantine files, all under the old names; a raw file whose rows span midnight
    later = DAY + timedelta(days=1)
    raws = {
        raw_key(DAY, "transactions-1"): [record(DAY, n) for n in range(3)],
        raw_key(DAY, "transactions-2"): [record(DAY, 5), record(later, 6)],
        raw_key(later, "transactions-3"): [record(later, n) for n in range(7, 9)],
    }
    expected: dict[date, list[str]] = {DAY: [], later: []}
    for n, (key, records) in enumerate(raws.items()):
        put_raw(s3, key, records, bad_lines=n)
        for r in records:
            expected[date.fromisoformat(r["timestamp"][:10])].append(r["transaction_id"])
    process(s3, *raws)
    rejects = quarantined_lines(s3)
    old = to_old_names(s3)
    with LocalInvoker(None, BUCKET, NAMES) as invoker:
        assert invoker.invoke("compactor", {"date": DAY.isoformat()}).accepted
    (head,) = list(list_objects(s3, BUCKET, partition("processed/transactions/", DAY)))
    assert {e.get("source_key") for e in read_manifest(s3, BUCKET, head)} == {None}  # an old bucket indeed

    # WHEN everything is rebuilt, then the orphans are removed
    assert replay.main(["rebuild", "--bucket", BUCKET, "--prefix", "raw/"], runtime=in_process(s3)) == 0
    assert replay.main(["orphans", "--bucket", BUCKET, "--yes"], runtime=in_process(s3)) == 0

    # THEN every row is visible exactly once, every reject once, under the new names only
    for day, ids in expected.items():
        assert sorted(visible_ids(s3, day)) == sorted(ids), day
    assert quarantined_lines(s3) == rejects
    outputs = keys(s3, "processed/") + keys(s3, "quarantine/")
    assert not set(old) & set(outputs)
    for key in outputs:
        assert is_compacted(key) or hashed_suffix(key) is not None, key
    for day in expected:
        head_key = f"{partition('processed/transactions/', day)}compacted-{day:%Y%m%d}.parquet"
        (head,) = list(list_objects(s3, BUCKET, head_key))
        assert all(e.get("source_key") in raws for e in read_manifest(s3, BUCKET, head))
    # and running the orphan step again finds nothing
    capsys.readouterr()
    assert replay.main(["orphans", "--bucket", BUCKET, "--yes"], runtime=in_process(s3)) == 0
    assert "nothing to remove" in capsys.readouterr().out


def test_the_tool_works_under_the_operator_policy_with_iam_enforced(s3: Any) -> None:
    # GIVEN an operator whose only permissions are the policy file's, filled in as `make console-files` does.
    # (S3 only: moto checks other services' calls against resource "*", so a grant scoped to the queue's
    # or a function's ARN, as IAM wants it, reads as denied there; the test above checks those.)
    text = (ROOT / "infra" / "iam" / "operator-replay-policy.json").read_text(encoding="utf-8")
    document = (
        text.replace("{{BUCKET}}", BUCKET)
        .replace("{{ACCOUNT}}", "123456789012")
        .replace("{{REGION}}", REGION)
    )
    iam = boto3.client("iam", region_name=REGION)
    iam.create_user(UserName="operator")
    iam.put_user_policy(UserName="operator", PolicyName="replay", PolicyDocument=document)
    key = iam.create_access_key(UserName="operator")["AccessKey"]
    bucket = Bucket(s3)
    operator = boto3.client(
        "s3",
        region_name=REGION,
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
    )
    # (accepted before A's state was committed, so that the wait ends at its first look)
    long_ago = datetime(2000, 1, 1, tzinfo=UTC)
    rt = runtime(operator, RecordingInvoker(lambda f, p: Outcome(accepted=True, status="202", at=long_ago)))

    # WHEN it rebuilds a day and removes the orphans with IAM enforced
    with enable_iam_authentication():
        assert replay.main(["rebuild", "--bucket", BUCKET, "--day", DAY.isoformat()], runtime=rt) == 0
        assert replay.main(["orphans", "--bucket", BUCKET, "--yes"], runtime=rt) == 0
        # THEN it did, and it may not read raw data nor write outside its prefixes
        with pytest.raises(ClientError, match="AccessDenied"):
            operator.get_object(Bucket=BUCKET, Key=bucket.a)
        with pytest.raises(ClientError, match="AccessDenied"):
            operator.put_object(Bucket=BUCKET, Key=bucket.old[0], Body=b"x")

    assert not bucket.orphans & set(keys(s3))
