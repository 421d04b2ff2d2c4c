"""The schema is written three times (generator, transformer, DDL); these tests keep the copies in step."""

from __future__ import annotations

import pyarrow as pa

from tests.conftest import load_lambda

gen = load_lambda("generator")
tr = load_lambda("transformer")

# CONTRACT.md, "Processed table": column, Parquet type.
CONTRACT_PROCESSED = [
    ("transaction_id", pa.string()),
    ("timestamp", pa.timestamp("ms", tz="UTC")),
    ("customer_id", pa.string()),
    ("product_id", pa.string()),
    ("product_name", pa.string()),
    ("category", pa.string()),
    ("quantity", pa.int32()),
    ("price", pa.decimal128(10, 2)),
    ("total_amount", pa.decimal128(10, 2)),
    ("hour", pa.int32()),
    ("day_of_week", pa.int32()),
]
CONTRACT_REASONS = {
    "malformed_json",
    "not_an_object",
    "missing_field",
    "invalid_type",
    "invalid_timestamp",
    "invalid_quantity",
    "invalid_price",
    "total_mismatch",
    "duplicate_transaction_id",
}


def test_generator_and_transformer_agree_on_the_raw_record():
    assert gen.RAW_FIELDS == tr.RAW_FIELDS


def test_transformer_writes_the_contracts_processed_schema():
    assert [(f.name, f.type) for f in tr.PROCESSED_SCHEMA] == CONTRACT_PROCESSED


def test_processed_columns_are_the_raw_fields_plus_derived_ones():
    assert tr.PROCESSED_SCHEMA.names == [*gen.RAW_FIELDS, "hour", "day_of_week"]


def test_reason_codes_are_the_contracts():
    assert set(tr.REASONS) == CONTRACT_REASONS


def test_both_handlers_use_the_same_layout_and_metrics_namespace():
    assert gen.RAW_PREFIX == tr.RAW_PREFIX == "raw/"
    assert gen.METRICS_NAMESPACE == tr.METRICS_NAMESPACE == "EcommercePipeline"


def test_the_three_handlers_read_log_level_alike():
    # Each handler pastes into the console alone, so each carries its own copy of this rule.
    handlers = [load_lambda(name) for name in ("generator", "transformer", "compactor")]
    assert all(h.LOG_LEVELS == handlers[0].LOG_LEVELS for h in handlers)
    assert all(
        h._LAMBDA_LEVELS_THAT_DROP_METRICS == handlers[0]._LAMBDA_LEVELS_THAT_DROP_METRICS for h in handlers
    )
