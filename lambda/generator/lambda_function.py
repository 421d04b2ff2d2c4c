"""Generator Lambda: writes one JSON Lines file of synthetic e-commerce transactions to s3://BUCKET/raw/.

Standard library and boto3 only, so it pastes into the Lambda console and runs with no layer.
Invoked every five minutes by an EventBridge schedule; the run time is the event's `time`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config as BotoConfig

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_logger = logging.getLogger()
_logger.setLevel(os.environ.get("LOG_LEVEL", "INFO"))

RAW_PREFIX = "raw/"
WINDOW = timedelta(minutes=5)
MAX_TRANSACTIONS_PER_RUN = 100_000
METRICS_NAMESPACE = "EcommercePipeline"

# The raw record as CONTRACT.md fixes it; tests check that the transformer and the DDL agree.
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


class ConfigError(ValueError):
    """An environment variable is missing or has an invalid value."""


class EventError(ValueError):
    """The invoking event cannot be understood."""


@dataclass(frozen=True)
class Config:
    bucket: str
    transactions_per_run: int
    seed: int | None


def load_config(env: Mapping[str, str]) -> Config:
    """Read and validate the generator's configuration from the environment, in one place."""
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
    return Config(bucket=bucket, transactions_per_run=count, seed=seed)


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


def generate_transactions(run_time: datetime, count: int, rng: random.Random) -> list[dict[str, Any]]:
    """`count` transactions with timestamps in the five minutes before `run_time`, oldest first."""
    start_ms = int((run_time - WINDOW).timestamp() * 1000)
    window_ms = int(WINDOW.total_seconds() * 1000)
    offsets = sorted(rng.randrange(window_ms) for _ in range(count))
    products = rng.choices(CATALOG, weights=_PRODUCT_WEIGHTS, k=count)
    customers = rng.choices(range(1, CUSTOMER_COUNT + 1), weights=_CUSTOMER_WEIGHTS, k=count)
    quantities = rng.choices(_QUANTITIES, weights=_QUANTITY_WEIGHTS, k=count)
    records = []
    for offset, product, customer, quantity in zip(offsets, products, customers, quantities, strict=True):
        moment = datetime.fromtimestamp((start_ms + offset) / 1000, tz=UTC)
        records.append(
            {
                "transaction_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "timestamp": format_timestamp(moment),
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


def to_json_lines(records: Sequence[Mapping[str, Any]]) -> bytes:
    """One JSON object per line, UTF-8, money as JSON numbers with at most two decimals.

    A two-decimal Decimal converts to the float whose shortest repr is that same decimal text
    (Decimal("49.98") -> 49.98), so the file carries exact money, never 49.980000000000004.
    """
    lines = [
        json.dumps(
            {key: float(v) if isinstance(v, Decimal) else v for key, v in record.items()},
            ensure_ascii=False,
        )
        for record in records
    ]
    return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""


def raw_key(run_time: datetime, token: str) -> str:
    """raw/year=YYYY/month=MM/day=DD/transactions-YYYYMMDDTHHMMSSZ-<8 hex>.json, the run's UTC date."""
    t = run_time.astimezone(UTC)
    return f"{RAW_PREFIX}year={t:%Y}/month={t:%m}/day={t:%d}/transactions-{t:%Y%m%dT%H%M%SZ}-{token}.json"


def metrics_line(metrics: Mapping[str, tuple[float, str]], at: datetime) -> str:
    """One CloudWatch Embedded Metric Format record (namespace EcommercePipeline, no dimensions)."""
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


def generate_run(config: Config, run_time: datetime) -> tuple[str, bytes, int]:
    """The whole run as data: the object key, its body and its record count."""
    rng = make_rng(config.seed, run_time)
    records = generate_transactions(run_time, config.transactions_per_run, rng)
    token = f"{rng.getrandbits(32):08x}"
    return raw_key(run_time, token), to_json_lines(records), len(records)


@functools.cache
def s3_client() -> S3Client:
    """One client per container, created on first use; standard retry mode for throttling."""
    client: S3Client = boto3.client("s3", config=BotoConfig(retries={"mode": "standard", "max_attempts": 5}))
    return client


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """EventBridge schedule entry point: generate one file and put it under raw/."""
    started = time.perf_counter()
    config = load_config(os.environ)
    run_time = run_time_from_event(event, datetime.now(UTC))
    key, body, count = generate_run(config, run_time)
    s3_client().put_object(Bucket=config.bucket, Key=key, Body=body, ContentType="application/x-ndjson")
    duration_ms = round((time.perf_counter() - started) * 1000, 1)
    _logger.info(
        "wrote raw transactions",
        extra={"bucket": config.bucket, "key": key, "records": count, "duration_ms": duration_ms},
    )
    sys.stdout.write(metrics_line({"RecordsGenerated": (count, "Count")}, run_time) + "\n")
    return {"bucket": config.bucket, "key": key, "count": count}
