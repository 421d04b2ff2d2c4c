"""The bare reference the transformer is measured against: get, read_json, derive, write_table, put.

No validation and no quarantine: this is the floor set by pyarrow and S3 alone, with the contract's
types (decimal money read exactly, timestamp(ms, UTC), int32s) and the same snappy Parquet output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MONEY = pa.decimal128(10, 2)
READ_SCHEMA = pa.schema(
    [
        ("transaction_id", pa.string()),
        ("timestamp", pa.timestamp("ms", tz="UTC")),
        ("customer_id", pa.string()),
        ("product_id", pa.string()),
        ("product_name", pa.string()),
        ("category", pa.string()),
        ("quantity", pa.int32()),
        ("price", MONEY),
        ("total_amount", MONEY),
    ]
)

_write_table: Any = pq.write_table


def transform(s3: S3Client, bucket: str, key: str) -> int:
    """One raw object to one Parquet object under bench-reference/; returns the row count."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    table = pa_json.read_json(
        pa.BufferReader(body), parse_options=pa_json.ParseOptions(explicit_schema=READ_SCHEMA)
    )
    del body
    ts = table["timestamp"]
    table = table.append_column("hour", pc.cast(pc.hour(ts), pa.int32())).append_column(
        "day_of_week", pc.cast(pc.day_of_week(ts, count_from_zero=True, week_start=1), pa.int32())
    )
    sink = pa.BufferOutputStream()
    _write_table(table, sink, compression="snappy")
    rows: int = table.num_rows
    del table
    stem = key.rsplit("/", 1)[-1].removesuffix(".json")
    s3.put_object(Bucket=bucket, Key=f"bench-reference/{stem}.parquet", Body=sink.getvalue().to_pybytes())
    return rows
