"""What the compactor's tests share: rows in the contract's types, files as the transformer writes them
(name and metadata of the shared design), its state objects and dirty-day markers, and S3 read back."""

from __future__ import annotations

import io
import json
import random
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import BUCKET, load_lambda

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


def partition(day: date = DAY) -> str:
    return f"processed/transactions/year={day:%Y}/month={day:%m}/day={day:%d}/"


def stem_key(stem: str, day: date = DAY) -> str:
    return f"{partition(day)}{stem}.parquet"


def output_name(raw_key: str) -> str:
    """`<stem>-<12 hex>`: the transformer's name for a raw key's outputs (one definition, its own)."""
    name: str = load_lambda("transformer").output_name(raw_key)
    return name


def processed_key(raw_key: str, day: date = DAY) -> str:
    return f"{partition(day)}{output_name(raw_key)}.parquet"


def raw_key(index: int, day: date = DAY) -> str:
    folder = f"raw/year={day:%Y}/month={day:%m}/day={day:%d}/"
    return f"{folder}transactions-{day:%Y%m%d}T{index:04d}00Z-{index:08x}.json"


def parquet_bytes(table: pa.Table, metadata: dict[bytes, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(metadata), buffer, compression="snappy")
    return buffer.getvalue()


def put_parquet(s3: Any, key: str, table: pa.Table) -> None:
    """A Parquet file as an earlier transformer wrote it: no `source_key` in its metadata."""
    s3.put_object(Bucket=BUCKET, Key=key, Body=parquet_bytes(table))


def put_source(s3: Any, raw: str, table: pa.Table, day: date = DAY, etag: str = "0" * 32) -> str:
    """The transformer's output of raw key `raw` for `day`, with the shared design's metadata."""
    key = processed_key(raw, day)
    metadata = {b"source_key": raw.encode("utf-8"), b"source_etag": etag.encode("ascii")}
    s3.put_object(Bucket=BUCKET, Key=key, Body=parquet_bytes(table, metadata))
    return key


def put_state(s3: Any, raw: str, outputs: list[str], locked: bool = False) -> None:
    """The transformer's state object of `raw` (complete unless `locked`)."""
    document = {
        "version": 1,
        "source_key": raw,
        "etag": None if locked else "e" * 32,
        "outputs": sorted(outputs),
        "lock": {"token": uuid.uuid4().hex, "expires": "2099-01-01T00:00:00.000Z"} if locked else None,
        "records_read": 0,
        "rows_written": 0,
        "quarantined": 0,
    }
    key = compactor.state_key(raw)
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(document).encode())


def put_marker(s3: Any, day: date = DAY, source_key: str | None = None, drop_unclaimed: bool = False) -> str:
    """A dirty-day marker (a fresh token, so a fresh ETag); returns its ETag."""
    body = {
        "token": uuid.uuid4().hex,
        "reason": "test",
        "source_key": source_key,
        "drop_unclaimed": drop_unclaimed,
    }
    response = s3.put_object(Bucket=BUCKET, Key=compactor.marker_key(day), Body=json.dumps(body).encode())
    return str(response["ETag"]).strip('"')


def keys(s3: Any, prefix: str = PREFIX) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def read_table(s3: Any, key: str) -> pa.Table:
    return pq.read_table(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()))


def what_a_query_sees(s3: Any, prefix: str = PREFIX) -> pa.Table:
    """Every row of every table file under the partition, as Athena reads it (names with _ or . skipped)."""
    tables = [
        read_table(s3, k).cast(compactor.SCHEMA)
        for k in keys(s3, prefix)
        if not k.rsplit("/", 1)[1].startswith(("_", "."))
    ]
    return pa.concat_tables(tables) if tables else compactor.SCHEMA.empty_table()


def ids(table: pa.Table) -> Counter[str]:
    return Counter(table.column("transaction_id").to_pylist())


def sorted_rows(table: pa.Table) -> pa.Table:
    return table.cast(compactor.SCHEMA).sort_by([("transaction_id", "ascending"), ("timestamp", "ascending")])


def assert_exactly(s3: Any, *expected: pa.Table, prefix: str = PREFIX) -> None:
    """The partition holds exactly the expected rows, each once, with the contract's types and values."""
    seen = what_a_query_sees(s3, prefix)
    want = pa.concat_tables(expected) if expected else compactor.SCHEMA.empty_table()
    assert max(ids(seen).values(), default=1) == 1
    assert seen.num_rows == want.num_rows
    assert sorted_rows(seen).equals(sorted_rows(want))


def assert_at_least_once(s3: Any, *expected: pa.Table) -> None:
    """No expected row is missing from what a query sees (some may be seen twice)."""
    seen = ids(what_a_query_sees(s3))
    missing = [i for t in expected for i in t.column("transaction_id").to_pylist() if seen[i] == 0]
    assert not missing


def manifest_of(s3: Any, key: str = COMPACTED) -> dict[str, Any]:
    metadata = pq.read_schema(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())).metadata
    document: dict[str, Any] = json.loads(metadata[compactor.MANIFEST_KEY])
    return document


def sidecar(s3: Any, day: date = DAY) -> list[dict[str, Any]]:
    body = s3.get_object(Bucket=BUCKET, Key=compactor.sidecar_key(day))["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines()]


def config(**overrides: Any) -> Any:
    values: dict[str, Any] = {
        "bucket": BUCKET,
        "after_hours": 2.0,
        "lookback_days": 7,
        "row_group_rows": 1_000_000,
        "part_rows": 5_000_000,
    }
    values.update(overrides)
    return compactor.Config(**values)


def run(s3: Any, cfg: Any = None, when: str = "2026-11-26T03:00:00Z") -> dict[str, dict[str, Any]]:
    """One scheduled run (markers listed, lookback window and marked days), results by day."""
    _, results = compactor.compact(s3, cfg or config(), {"time": when}, datetime(2030, 1, 1, tzinfo=UTC))
    return {r["date"]: r for r in results}


class FailingS3:
    """The real client, except that one operation fails after `allow` successful calls (a crash).

    `before` runs once, just before that call (another writer acting at that moment). With `dead`, every
    call after the failure fails too: the process is gone, nothing it would do next happens."""

    def __init__(
        self,
        client: Any,
        operation: str,
        allow: int = 0,
        before: Callable[[], None] | None = None,
        dead: bool = False,
    ):
        self._client = client
        self._operation = operation
        self._allow = allow
        self._before = before
        self._dead = dead
        self.crashed = False
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.crashed and self._dead:
                raise RuntimeError(f"process gone: {name} never happens")
            if name == self._operation:
                if self._before is not None:
                    before, self._before = self._before, None
                    before()
                if self._allow <= 0:
                    self.crashed = True
                    raise RuntimeError(f"simulated crash in {name}")
                self._allow -= 1
            return method(*args, **kwargs)

        return call


class RecordingS3(FailingS3):
    def __init__(self, client: Any):
        super().__init__(client, operation="", allow=0)


class CrashAfter:
    """The real client until `writes` puts and deletes have happened; then the process is gone (every
    call fails). `log` records each write that happened, in order."""

    WRITES = frozenset({"put_object", "delete_object"})

    def __init__(self, client: Any, writes: int):
        self._client = client
        self._left = writes
        self.log: list[tuple[str, str]] = []
        self.crashed = False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.crashed or (name in self.WRITES and self._left <= 0):
                self.crashed = True
                raise RuntimeError(f"simulated crash before {name}")
            if name in self.WRITES:
                self._left -= 1
                self.log.append((name, kwargs.get("Key", "")))
            return method(*args, **kwargs)

        return call
