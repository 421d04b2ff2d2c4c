"""Generator Lambda: writes one JSON Lines file of synthetic e-commerce transactions to s3://BUCKET/raw/.

Standard library and boto3 only, so it pastes into the Lambda console and runs with no layer.
Invoked every five minutes by an EventBridge schedule; the run time is the event's `time`.

Two mechanisms keep TRANSACTIONS_PER_RUN=100,000 inside the 128 MB and 30 s the stack gives the function
(`python -m bench.generator_run`, which also measures an earlier handler file with --handler):
- The file goes to S3 from a temporary file in /tmp, written in chunks, with one PUT: memory no longer
  grows with the run. Peak RSS 180 MiB when the whole body was built in memory, 65 MiB now.
- Each line is put together from pieces of the fixed catalog formatted once, instead of a dict and a
  json.dumps per record: formatting 100,000 records takes about 4x less CPU (0.37 s instead of 1.5 s
  here). With the upload, an invocation went from 2.1 to 0.5 CPU s: at 128 MB (0.072 vCPU) an
  estimated 30 s, the whole timeout, down to 7 s. `generate_transactions` and `to_json_lines` are the
  plain reference; a test proves both paths write the same bytes.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config as BotoConfig

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_logger = logging.getLogger()

RAW_PREFIX = "raw/"
WINDOW = timedelta(minutes=5)
MAX_TRANSACTIONS_PER_RUN = 100_000
METRICS_NAMESPACE = "EcommercePipeline"
# Lines formatted and written to the temporary file at a time: about 2.3 MiB of text.
LINES_PER_CHUNK = 8192

# The raw record as docs/contract.md fixes it; tests check that the transformer and the DDL agree.
RAW_FIELDS: tuple[str, ...] = (
    "transaction_id",
    "timestamp",
    "customer_id",
    "product_id",
    "product_name",
    "category",
    "quantity",
    "price",
    "total_amount",
)


@dataclass(frozen=True)
class Product:
    product_id: str
    name: str
    category: str
    price: Decimal


def _catalog(*rows: tuple[str, str, str]) -> tuple[Product, ...]:
    return tuple(
        Product(product_id=f"PROD-{i:04d}", name=name, category=category, price=Decimal(price))
        for i, (name, category, price) in enumerate(rows, start=1)
    )


# The catalog is synthetic; its prices (and so every price and total_amount) are in this currency.
CURRENCY = "USD"

# One fixed catalog: product_id, product_name, category and price agree on every row.
CATALOG: tuple[Product, ...] = _catalog(
    ("Wireless Mouse", "Electronics", "24.99"),
    ("Mechanical Keyboard", "Electronics", "89.99"),
    ("USB-C Hub", "Electronics", "39.99"),
    ("Noise-Cancelling Headphones", "Electronics", "199.00"),
    ("27-inch Monitor", "Electronics", "279.99"),
    ("Portable SSD 1TB", "Electronics", "109.95"),
    ("Cotton T-Shirt", "Clothing", "14.99"),
    ("Denim Jeans", "Clothing", "49.90"),
    ("Rain Jacket", "Clothing", "89.00"),
    ("Wool Socks (3 pairs)", "Clothing", "12.50"),
    ("Hooded Sweatshirt", "Clothing", "39.95"),
    ("Chef's Knife", "Home & Kitchen", "59.99"),
    ("Cast Iron Skillet", "Home & Kitchen", "34.99"),
    ("French Press", "Home & Kitchen", "27.49"),
    ("Bath Towel Set", "Home & Kitchen", "44.00"),
    ("LED Desk Lamp", "Home & Kitchen", "29.99"),
    ("Yoga Mat", "Sports & Outdoors", "25.99"),
    ("Adjustable Dumbbells", "Sports & Outdoors", "149.00"),
    ("Insulated Water Bottle", "Sports & Outdoors", "19.99"),
    ("Trail Running Shoes", "Sports & Outdoors", "119.95"),
    ("Camping Lantern", "Sports & Outdoors", "22.49"),
    ("The Pragmatic Programmer", "Books", "42.99"),
    ("Designing Data-Intensive Applications", "Books", "45.50"),
    ("Cookbook: Weeknight Dinners", "Books", "24.00"),
    ("Children's Picture Book", "Books", "9.99"),
    ("Vitamin C Serum", "Beauty", "18.99"),
    ("Electric Toothbrush", "Beauty", "54.99"),
    ("Shampoo 500ml", "Beauty", "8.49"),
    ("Building Blocks Set", "Toys & Games", "59.00"),
    ("Board Game: Strategy", "Toys & Games", "34.95"),
    ("Jigsaw Puzzle 1000 pcs", "Toys & Games", "16.99"),
    ("Ground Coffee 1kg", "Grocery", "21.90"),
    ("Green Tea (100 bags)", "Grocery", "7.99"),
    ("Extra Virgin Olive Oil 1L", "Grocery", "13.49"),
    ("Dark Chocolate Bar", "Grocery", "3.25"),
)

# Customers: a fixed population where a Zipf-like weighting makes some customers buy again and again.
CUSTOMER_COUNT = 500
_CUSTOMER_WEIGHTS: tuple[float, ...] = tuple(1.0 / (rank**0.8) for rank in range(1, CUSTOMER_COUNT + 1))
# Cheap products sell more often than expensive ones.
_PRODUCT_WEIGHTS: tuple[float, ...] = tuple(1.0 / float(p.price) ** 0.5 for p in CATALOG)
_QUANTITIES = (1, 2, 3, 4, 5)
_QUANTITY_WEIGHTS = (50, 25, 12, 8, 5)

# LOG_LEVEL's accepted values, any case; WARN is the name Lambda's own log levels use.
LOG_LEVELS: dict[str, int] = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "WARN": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}
# Lambda's application log levels (AWS_LAMBDA_LOG_LEVEL) that drop a stdout line without a "level"
# field, which Lambda counts as INFO: the metric lines below. docs/logging-and-metrics.md says why.
_LAMBDA_LEVELS_THAT_DROP_METRICS = frozenset({"WARN", "ERROR", "FATAL"})


class ConfigError(ValueError):
    """An environment variable is missing or has an invalid value."""


class EventError(ValueError):
    """The invoking event cannot be understood."""


@dataclass(frozen=True)
class Config:
    bucket: str
    transactions_per_run: int
    seed: int | None
    log_level: int = logging.INFO


def parse_log_level(value: str | None) -> int:
    """LOG_LEVEL as a `logging` level: any case, unset or blank is INFO, WARN means WARNING."""
    name = (value or "").strip().upper() or "INFO"
    if name not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)} (any case), got {value!r}")
    return LOG_LEVELS[name]


def load_config(env: Mapping[str, str]) -> Config:
    """Read and validate the generator's configuration from the environment, in one place."""
    log_level = parse_log_level(env.get("LOG_LEVEL"))
    bucket = env.get("BUCKET_NAME", "").strip()
    if not bucket:
        raise ConfigError("environment variable BUCKET_NAME is required: the bucket to write raw/ files to")
    raw_count = env.get("TRANSACTIONS_PER_RUN", "1").strip() or "1"
    try:
        count = int(raw_count)
    except ValueError:
        raise ConfigError(f"TRANSACTIONS_PER_RUN must be a whole number, got {raw_count!r}") from None
    if not 1 <= count <= MAX_TRANSACTIONS_PER_RUN:
        raise ConfigError(
            f"TRANSACTIONS_PER_RUN must be between 1 and {MAX_TRANSACTIONS_PER_RUN}, got {count}"
        )
    raw_seed = env.get("RANDOM_SEED", "").strip()
    seed: int | None = None
    if raw_seed:
        try:
            seed = int(raw_seed)
        except ValueError:
            raise ConfigError(f"RANDOM_SEED must be a whole number when set, got {raw_seed!r}") from None
    return Config(bucket=bucket, transactions_per_run=count, seed=seed, log_level=log_level)


def warn_if_lambda_drops_metrics(env: Mapping[str, str]) -> None:
    """Log an error when Lambda's application log level would silently drop the metric lines."""
    level = env.get("AWS_LAMBDA_LOG_LEVEL", "").strip().upper()
    if level in _LAMBDA_LEVELS_THAT_DROP_METRICS:
        _logger.error(
            f"Lambda's application log level is {level}: it drops this function's metric lines (Lambda "
            "counts them as INFO), so the dashboard and the stalled alarm get no data. Set the application "
            "log level to INFO (Configuration > Monitoring and operations tools > Logging configuration) "
            "and use LOG_LEVEL to quiet the function's own logs.",
            extra={"application_log_level": level},
        )


def run_time_from_event(event: Mapping[str, Any] | None, now: datetime) -> datetime:
    """The scheduled event's `time` (so a replayed schedule gives the same day), else `now`; in UTC."""
    value = (event or {}).get("time")
    if value is None:
        return now.astimezone(UTC)
    if not isinstance(value, str):
        raise EventError(f"event field 'time' must be an ISO 8601 string, got {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise EventError(f"event field 'time' is not an ISO 8601 timestamp: {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def make_rng(seed: int | None, run_time: datetime) -> random.Random:
    """With a seed, each run's data is a pure function of (seed, run time); without one, fresh entropy."""
    if seed is None:
        return random.Random()
    return random.Random(f"{seed}:{run_time.isoformat()}")


def format_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a Z, e.g. 2026-11-25T14:03:27.512Z."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _draws(run_time: datetime, count: int, rng: random.Random) -> Iterator[tuple[int, int, int, int, int]]:
    """The run's random choices, oldest first: (epoch ms, catalog index, customer, quantity, id bits).

    Both ways of writing a run consume them, so they agree on every record. Each list holds one small
    int per record (about 6 MiB at 100,000); the records themselves are never all in memory.
    """
    start_ms = int((run_time - WINDOW).timestamp() * 1000)
    window_ms = int(WINDOW.total_seconds() * 1000)
    offsets = sorted(rng.randrange(window_ms) for _ in range(count))
    products = rng.choices(range(len(CATALOG)), weights=_PRODUCT_WEIGHTS, k=count)
    customers = rng.choices(range(1, CUSTOMER_COUNT + 1), weights=_CUSTOMER_WEIGHTS, k=count)
    quantities = rng.choices(_QUANTITIES, weights=_QUANTITY_WEIGHTS, k=count)
    for offset, product, customer, quantity in zip(offsets, products, customers, quantities, strict=True):
        yield start_ms + offset, product, customer, quantity, rng.getrandbits(128)


def generate_transactions(run_time: datetime, count: int, rng: random.Random) -> list[dict[str, Any]]:
    """`count` transactions with timestamps in the five minutes before `run_time`, oldest first.

    The reference: plain records, money as Decimal. The handler writes the same lines faster with
    `iter_json_lines`.
    """
    records = []
    for epoch_ms, index, customer, quantity, bits in _draws(run_time, count, rng):
        product = CATALOG[index]
        records.append(
            {
                "transaction_id": str(uuid.UUID(int=bits, version=4)),
                "timestamp": format_timestamp(datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)),
                "customer_id": f"CUST-{customer:05d}",
                "product_id": product.product_id,
                "product_name": product.name,
                "category": product.category,
                "quantity": quantity,
                "price": product.price,
                "total_amount": product.price * quantity,
            }
        )
    return records


def _json_line(record: Mapping[str, Any]) -> str:
    """One record as a JSON object (no newline); money goes out as JSON numbers.

    A two-decimal Decimal converts to the float whose shortest repr is that same decimal text
    (Decimal("49.98") -> 49.98), so the file carries exact money, never 49.980000000000004.
    """
    return json.dumps(
        {key: float(v) if isinstance(v, Decimal) else v for key, v in record.items()}, ensure_ascii=False
    )


def to_json_lines(records: Sequence[Mapping[str, Any]]) -> bytes:
    """One JSON object per line, UTF-8, each line ending with LF."""
    return "".join(_json_line(record) + "\n" for record in records).encode("utf-8")


def _line_tails() -> tuple[tuple[str, ...], ...]:
    """For each catalog index and quantity, the end of a line from `"product_id"` on, as `_json_line`
    writes it (so escaping and money formatting have one definition)."""
    tails = []
    for product in CATALOG:
        per_quantity = [""]  # index 0 unused: quantities are 1 to 5
        for quantity in _QUANTITIES:
            line = _json_line(
                {
                    "product_id": product.product_id,
                    "product_name": product.name,
                    "category": product.category,
                    "quantity": quantity,
                    "price": product.price,
                    "total_amount": product.price * quantity,
                }
            )
            per_quantity.append(line[1:] + "\n")  # without the opening brace
        tails.append(tuple(per_quantity))
    return tuple(tails)


def iter_json_lines(
    run_time: datetime, count: int, rng: random.Random, lines_per_chunk: int = LINES_PER_CHUNK
) -> Iterator[bytes]:
    """The bytes of `to_json_lines(generate_transactions(run_time, count, rng))`, in chunks of lines."""
    tails = _line_tails()
    customers = [f"CUST-{c:05d}" for c in range(CUSTOMER_COUNT + 1)]
    version_mask, version_bits = ~(0xF000 << 64), 0x4000 << 64  # UUID version 4, as uuid.UUID sets it
    variant_mask, variant_bits = ~(0xC000 << 48), 0x8000 << 48  # RFC 4122 variant
    lines: list[str] = []
    second, second_text = None, ""
    for epoch_ms, index, customer, quantity, bits in _draws(run_time, count, rng):
        seconds, millis = divmod(epoch_ms, 1000)
        if seconds != second:  # the timestamps are sorted: one strftime per second of the window
            second, second_text = seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        hexa = f"{(bits & version_mask | version_bits) & variant_mask | variant_bits:032x}"
        lines.append(
            f'{{"transaction_id": "{hexa[:8]}-{hexa[8:12]}-{hexa[12:16]}-{hexa[16:20]}-{hexa[20:]}", '
            f'"timestamp": "{second_text}.{millis:03d}Z", "customer_id": "{customers[customer]}", '
            f"{tails[index][quantity]}"
        )
        if len(lines) == lines_per_chunk:
            yield "".join(lines).encode("utf-8")
            lines.clear()
    if lines:
        yield "".join(lines).encode("utf-8")


def raw_key(run_time: datetime, token: str) -> str:
    """raw/year=YYYY/month=MM/day=DD/transactions-YYYYMMDDTHHMMSSZ-<8 hex>.json, the run's UTC date."""
    t = run_time.astimezone(UTC)
    return f"{RAW_PREFIX}year={t:%Y}/month={t:%m}/day={t:%d}/transactions-{t:%Y%m%dT%H%M%SZ}-{token}.json"


def plan_run(config: Config, run_time: datetime) -> tuple[str, Iterator[bytes]]:
    """The run's object key and its body as chunks; with a seed, both depend only on (seed, run time).

    The key's token is drawn first, so the key is known before the body is written.
    """
    rng = make_rng(config.seed, run_time)
    key = raw_key(run_time, f"{rng.getrandbits(32):08x}")
    return key, iter_json_lines(run_time, config.transactions_per_run, rng)


def generate_run(config: Config, run_time: datetime) -> tuple[str, bytes, int]:
    """The whole run in memory: the object key, its body and its record count (tests and tools)."""
    key, chunks = plan_run(config, run_time)
    return key, b"".join(chunks), config.transactions_per_run


def write_run(client: S3Client, config: Config, run_time: datetime) -> tuple[str, int]:
    """Write the run's file to /tmp in chunks, then put it under raw/ with one PUT; the key and its size.

    One PUT keeps the object's ETag the MD5 of its content and its event ObjectCreated:Put, and a
    failed run leaves nothing behind (the temporary file is deleted on close, even on error).
    """
    key, chunks = plan_run(config, run_time)
    with tempfile.TemporaryFile() as body:
        for chunk in chunks:
            body.write(chunk)
        size = body.tell()
        body.seek(0)
        client.put_object(Bucket=config.bucket, Key=key, Body=body, ContentType="application/x-ndjson")
    return key, size


def metrics_line(metrics: Mapping[str, tuple[float, str]], at: datetime) -> str:
    """One CloudWatch Embedded Metric Format record (namespace EcommercePipeline, no dimensions).

    `at` is the time the line is emitted: CloudWatch drops datapoints older than two weeks, so a
    replayed or sample event's own time would record nothing.
    """
    document: dict[str, Any] = {
        "_aws": {
            "Timestamp": int(at.timestamp() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": METRICS_NAMESPACE,
                    "Dimensions": [[]],
                    "Metrics": [{"Name": name, "Unit": unit} for name, (_, unit) in metrics.items()],
                }
            ],
        },
    }
    document.update({name: value for name, (value, _) in metrics.items()})
    return json.dumps(document)


def _utc_now() -> datetime:
    """The clock: the run time when the event has none, and the metrics' timestamp (tests replace it)."""
    return datetime.now(UTC)


@functools.cache
def s3_client() -> S3Client:
    """One client per container, created on first use; standard retry mode for throttling."""
    client: S3Client = boto3.client("s3", config=BotoConfig(retries={"mode": "standard", "max_attempts": 5}))
    return client


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """EventBridge schedule entry point: generate one file and put it under raw/."""
    started = time.perf_counter()
    config = load_config(os.environ)
    _logger.setLevel(config.log_level)
    warn_if_lambda_drops_metrics(os.environ)
    run_time = run_time_from_event(event, _utc_now())
    key, size = write_run(s3_client(), config, run_time)
    count = config.transactions_per_run
    _logger.info(
        "wrote raw transactions",
        extra={
            "bucket": config.bucket,
            "key": key,
            "records": count,
            "bytes": size,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        },
    )
    sys.stdout.write(metrics_line({"RecordsGenerated": (count, "Count")}, _utc_now()) + "\n")
    return {"bucket": config.bucket, "key": key, "count": count}
