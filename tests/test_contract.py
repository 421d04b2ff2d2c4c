"""The schema is written three times (generator, transformer, DDL); these tests keep the copies in step with
each other and with docs/contract.md."""

from __future__ import annotations

import json

import pyarrow as pa

from tests.conftest import ROOT, load_lambda

gen = load_lambda("generator")
tr = load_lambda("transformer")

CONTRACT = (ROOT / "docs" / "contract.md").read_text(encoding="utf-8")
PARQUET_TYPES = {
    "string": pa.string(),
    "timestamp(ms, UTC)": pa.timestamp("ms", tz="UTC"),
    "int32": pa.int32(),
    "decimal(10,2)": pa.decimal128(10, 2),
}


def contract_table(heading: str) -> list[list[str]]:
    """The cells of the first table under a `## heading` of docs/contract.md, header and rule excluded."""
    lines = CONTRACT.split(f"\n## {heading}\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[start + 2 : end]]


# docs/contract.md, "Processed table": column, Parquet type (the partition keys live only in the key).
CONTRACT_PROCESSED = [
    (column, PARQUET_TYPES[parquet])
    for column, parquet, *_ in contract_table("Processed table")
    if "," not in column
]
# docs/contract.md, "Rejected records": the reasons, in the order the rules are checked.
CONTRACT_REASONS = [row[0].strip("`") for row in contract_table("Rejected records")]
# docs/contract.md, "Raw record": the example record's fields, in order.
CONTRACT_RAW_FIELDS = tuple(
    json.loads(CONTRACT.split("## Raw record", 1)[1].split("```json", 1)[1].split("```", 1)[0])
)


def test_the_contract_page_is_read():
    assert len(CONTRACT_PROCESSED) == 11
    assert len(CONTRACT_REASONS) == 9


def test_generator_writes_the_contracts_raw_record():
    assert gen.RAW_FIELDS == CONTRACT_RAW_FIELDS


def test_generator_and_transformer_agree_on_the_raw_record():
    assert gen.RAW_FIELDS == tr.RAW_FIELDS


def test_transformer_writes_the_contracts_processed_schema():
    assert [(f.name, f.type) for f in tr.PROCESSED_SCHEMA] == CONTRACT_PROCESSED


def test_processed_columns_are_the_raw_fields_plus_derived_ones():
    assert tr.PROCESSED_SCHEMA.names == [*gen.RAW_FIELDS, "hour", "day_of_week"]


def test_reason_codes_are_the_contracts_in_the_order_the_rules_are_checked():
    assert list(tr.REASONS) == CONTRACT_REASONS


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
