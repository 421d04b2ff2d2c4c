"""The template's Glue database and tables are the DDL in sql/ddl/, read by sqlglot (Athena dialect).

Console users run the DDL in Athena; the stack creates the same tables as AWS::Glue::Table. Columns and
types in order, partition keys, location, storage (SerDe, input and output formats, SerDe parameters)
and table properties (partition projection) must agree, so that a query in sql/queries/ means the same
on either path. The processed table is also checked against docs/contract.md's column list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlglot
from sqlglot import exp

from tests.conftest import ROOT, load_lambda
from tests.infra.cfn import console_values, load_template, resolve, resources_of_type
from tools.console_files import render

DDL_DIR = ROOT / "sql" / "ddl"
BUCKET = "my-pipeline-bucket"

# What Athena records in the catalog for STORED AS PARQUET (the Hive classes it names).
PARQUET_STORAGE = {
    "serde": "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
    "input_format": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
    "output_format": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
}
# A parameter the stack's tables hold besides the DDL's: the data format label the Glue console shows.
# (EXTERNAL=TRUE, which Athena records for CREATE EXTERNAL TABLE, is compared like the others.)
CATALOG_ONLY_PARAMETERS = {"classification"}

# docs/contract.md, "Processed table": column -> Athena type, in order; year/month/day are partition keys.
CONTRACT_PROCESSED_COLUMNS = [
    ("transaction_id", "string"),
    ("timestamp", "timestamp"),
    ("customer_id", "string"),
    ("product_id", "string"),
    ("product_name", "string"),
    ("category", "string"),
    ("quantity", "int"),
    ("price", "decimal(10,2)"),
    ("total_amount", "decimal(10,2)"),
    ("hour", "int"),
    ("day_of_week", "int"),
]
CONTRACT_PARTITIONS = [("year", "int"), ("month", "int"), ("day", "int")]
# docs/contract.md, "Rejected records": the fields of one quarantine line.
CONTRACT_QUARANTINE_FIELDS = ["source_key", "line", "reason", "detail", "record"]


@dataclass
class Table:
    """A table as the catalog stores it, whichever path created it."""

    database: str
    name: str
    columns: list[tuple[str, str]]
    partitions: list[tuple[str, str]]
    location: str
    serde: str
    input_format: str
    output_format: str
    serde_parameters: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)


def _type(kind: exp.DataType) -> str:
    return kind.sql("hive").lower().replace(" ", "")


def _columns(schema: exp.Schema) -> list[tuple[str, str]]:
    return [(c.name, _type(c.args["kind"])) for c in schema.expressions if isinstance(c, exp.ColumnDef)]


def _properties(node: exp.Expression | None) -> dict[str, str]:
    if node is None:
        return {}
    return {p.this.name: p.args["value"].name for p in node.expressions if isinstance(p, exp.Property)}


def table_from_ddl(path: Path, bucket: str) -> Table:
    """Read one CREATE EXTERNAL TABLE file the way Athena would record it in the Glue catalog."""
    sql = render(path.read_text(encoding="utf-8"), {"BUCKET": bucket}, path.name)
    statement = sqlglot.parse_one(sql, dialect="athena")
    assert isinstance(statement, exp.Create), f"{path.name}: not a CREATE statement"
    assert statement.kind == "TABLE", f"{path.name}: not CREATE TABLE"
    schema = statement.this
    assert isinstance(schema, exp.Schema), f"{path.name}: no column list"
    table = Table(
        database=schema.this.db,
        name=schema.this.name,
        columns=_columns(schema),
        partitions=[],
        location="",
        serde="",
        input_format="",
        output_format="",
    )
    for prop in statement.args["properties"].expressions:
        if isinstance(prop, exp.ExternalProperty):
            table.parameters["EXTERNAL"] = "TRUE"
        elif isinstance(prop, exp.PartitionedByProperty):
            table.partitions = _columns(prop.this)
        elif isinstance(prop, exp.LocationProperty):
            table.location = prop.this.name
        elif isinstance(prop, exp.RowFormatSerdeProperty):
            table.serde = prop.this.name
            table.serde_parameters = _properties(prop.args.get("serde_properties"))
        elif isinstance(prop, exp.FileFormatProperty):
            if isinstance(prop.this, exp.InputOutputFormat):
                table.input_format = prop.this.args["input_format"].name
                table.output_format = prop.this.args["output_format"].name
            else:
                assert prop.name.upper() == "PARQUET", f"{path.name}: STORED AS {prop.name} is not handled"
                table.serde = PARQUET_STORAGE["serde"]
                table.input_format = PARQUET_STORAGE["input_format"]
                table.output_format = PARQUET_STORAGE["output_format"]
        elif isinstance(prop, exp.Property):
            table.parameters[prop.this.name] = prop.args["value"].name
        else:
            raise AssertionError(f"{path.name}: table property {prop.sql('athena')} is not compared yet")
    return table


def table_from_template(resource: dict[str, Any], values: dict[str, Any]) -> Table:
    properties = resolve(resource["Properties"], values)
    table_input = properties["TableInput"]
    storage = table_input["StorageDescriptor"]
    assert table_input["TableType"] == "EXTERNAL_TABLE"
    return Table(
        database=properties["DatabaseName"],
        name=table_input["Name"],
        columns=[(c["Name"], c["Type"]) for c in storage["Columns"]],
        partitions=[(c["Name"], c["Type"]) for c in table_input["PartitionKeys"]],
        location=storage["Location"],
        serde=storage["SerdeInfo"]["SerializationLibrary"],
        input_format=storage["InputFormat"],
        output_format=storage["OutputFormat"],
        serde_parameters=dict(storage["SerdeInfo"].get("Parameters", {})),
        parameters={k: v for k, v in table_input["Parameters"].items() if k not in CATALOG_ONLY_PARAMETERS},
    )


TEMPLATE = load_template()
VALUES = {**console_values(TEMPLATE), "BucketName": BUCKET}
DDL_TABLES = sorted(p for p in DDL_DIR.glob("*.sql") if "create_table" in p.name)


def _template_tables() -> dict[str, Table]:
    tables = [
        table_from_template(r, VALUES) for r in resources_of_type(TEMPLATE, "AWS::Glue::Table").values()
    ]
    return {t.name: t for t in tables}


def test_ddl_folder_has_the_three_tables_of_the_contract() -> None:
    names = {table_from_ddl(p, BUCKET).name for p in DDL_TABLES}
    assert names == {"transactions", "raw_transactions", "quarantine"}


def test_the_stack_creates_a_table_for_each_ddl_file_and_no_other() -> None:
    assert set(_template_tables()) == {table_from_ddl(p, BUCKET).name for p in DDL_TABLES}


@pytest.mark.parametrize("ddl", DDL_TABLES, ids=lambda p: p.name)
def test_stack_table_is_the_ddl_table(ddl: Path) -> None:
    from_sql = table_from_ddl(ddl, BUCKET)
    from_stack = _template_tables()[from_sql.name]

    assert from_stack.database == from_sql.database == "ecommerce_db"
    assert from_stack.columns == from_sql.columns
    assert from_stack.partitions == from_sql.partitions
    assert from_stack.location == from_sql.location
    assert (from_stack.serde, from_stack.input_format, from_stack.output_format) == (
        from_sql.serde,
        from_sql.input_format,
        from_sql.output_format,
    )
    assert from_stack.serde_parameters == from_sql.serde_parameters
    assert from_stack.parameters == from_sql.parameters


def test_partition_projection_covers_each_partition_key_and_the_key_layout() -> None:
    for table in _template_tables().values():
        parameters = table.parameters
        assert parameters["projection.enabled"] == "true"
        for key, _ in table.partitions:
            assert parameters[f"projection.{key}.type"] == "integer"
        assert parameters["storage.location.template"] == (
            table.location + "year=${year}/month=${month}/day=${day}"
        )
        # Month and day are zero-padded in the keys (docs/contract.md), so projection must pad them too.
        assert parameters["projection.month.digits"] == parameters["projection.day.digits"] == "2"


def test_processed_table_is_the_contracts_and_the_transformers_parquet_schema() -> None:
    transformer = load_lambda("transformer")
    arrow_to_athena = {
        "string": "string",
        "timestamp[ms, tz=UTC]": "timestamp",
        "int32": "int",
        "decimal128(10, 2)": "decimal(10,2)",
    }
    table = _template_tables()["transactions"]

    assert table.columns == CONTRACT_PROCESSED_COLUMNS
    assert table.partitions == CONTRACT_PARTITIONS
    assert [(f.name, arrow_to_athena[str(f.type)]) for f in transformer.PROCESSED_SCHEMA] == table.columns


def test_raw_table_has_the_generators_fields_and_quarantine_table_the_contracts() -> None:
    generator = load_lambda("generator")
    tables = _template_tables()

    assert [name for name, _ in tables["raw_transactions"].columns] == list(generator.RAW_FIELDS)
    assert [name for name, _ in tables["quarantine"].columns] == CONTRACT_QUARANTINE_FIELDS


def test_glue_database_is_the_ddls_database() -> None:
    statement = sqlglot.parse_one(
        (DDL_DIR / "01_create_database.sql").read_text(encoding="utf-8"), dialect="athena"
    )
    (database,) = resources_of_type(TEMPLATE, "AWS::Glue::Database").values()

    assert isinstance(statement, exp.Create)
    assert statement.kind == "DATABASE"
    assert database["Properties"]["DatabaseInput"]["Name"] == statement.this.name
