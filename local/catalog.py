"""The Athena catalog rebuilt on DuckDB: sql/ddl/ read by sqlglot, sql/queries/ run unchanged.

A local copy of the bucket (raw/, processed/, quarantine/) is exposed as DuckDB views named exactly
like the Athena tables (ecommerce_db.transactions, ...). Each view is derived from the table's DDL:
its columns and types, its storage (Parquet or JSON Lines) and its location. Queries are written once,
in Athena's dialect, and translated by sqlglot; there is no second, DuckDB-only copy of any query.

What Athena does and the views imitate:
- partition projection: only files under the template's year=/month=/day= folders are read, and
  those three values become integer columns;
- the "$path" pseudo-column: the object's s3:// URL;
- the OpenX JSON SerDe with ignore.malformed.json: one row per non-blank line, NULL columns where the
  line is not a JSON object, values read as the column's type (NULL when they do not convert).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp

from tools.console_files import placeholder, render

if TYPE_CHECKING:
    import pandas as pd

_logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
SQL_DIR = ROOT / "sql"
DDL_DIR = SQL_DIR / "ddl"
QUERIES_DIR = SQL_DIR / "queries"

# How sql/ddl/*.sql names the bucket (tools/console_files.py defines the convention).
BUCKET_PLACEHOLDER = placeholder("BUCKET")
DATABASE = "ecommerce_db"
PARTITION_RE = re.compile(r"year=(\d{4})/month=(\d{2})/day=(\d{2})/[^/]+$")


class SqlFileError(ValueError):
    """A file in sql/ cannot be used: it does not parse, or it is not what its folder promises."""


@dataclass(frozen=True)
class Column:
    name: str
    athena_type: str  # as Athena spells it, e.g. "decimal(10,2)"
    duckdb_type: str


@dataclass(frozen=True)
class TableDef:
    """What a CREATE EXTERNAL TABLE statement says about a table."""

    database: str
    name: str
    columns: tuple[Column, ...]
    partitions: tuple[Column, ...]
    storage: str  # "parquet" or "jsonl"
    location: str  # s3://{{BUCKET}}/prefix/

    def prefix(self) -> str:
        """The key prefix under the bucket, e.g. processed/transactions/."""
        match = re.fullmatch(r"s3://[^/]+/(.*)", self.location)
        if match is None:
            raise SqlFileError(f"table {self.name}: LOCATION {self.location!r} is not an s3:// URL")
        return match.group(1)


def ddl_files(ddl_dir: Path = DDL_DIR) -> list[Path]:
    """The DDL in the order it must run (database first)."""
    return sorted(ddl_dir.glob("*.sql"))


def query_files() -> list[Path]:
    return sorted(QUERIES_DIR.glob("*.sql"))


def read_sql(path: Path, bucket: str | None = None) -> str:
    """A file's text, with the bucket placeholder filled in when `bucket` is given."""
    text = path.read_text(encoding="utf-8")
    return render(text, {"BUCKET": bucket}, str(path)) if bucket else text


def parse_athena(sql: str, where: str) -> exp.Expr:
    """Parse exactly one Athena statement; a syntax error or a second statement names the file."""
    try:
        statements = [s for s in sqlglot.parse(sql, read="athena") if s is not None]
    except sqlglot.errors.ParseError as e:
        raise SqlFileError(f"{where}: not valid Athena SQL: {e}") from e
    if len(statements) != 1:
        raise SqlFileError(f"{where}: expected exactly one statement, found {len(statements)}")
    return statements[0]


def _column(node: exp.ColumnDef) -> Column:
    kind = node.args.get("kind")
    if not isinstance(kind, exp.DataType):
        raise SqlFileError(f"column {node.name} has no type")
    return Column(
        name=node.name,
        athena_type=kind.sql("hive").lower().replace(" ", ""),
        duckdb_type=kind.sql("duckdb"),
    )


def table_def(path: Path) -> TableDef:
    """Read a CREATE EXTERNAL TABLE file into a TableDef."""
    statement = parse_athena(read_sql(path), str(path))
    if not isinstance(statement, exp.Create) or statement.kind != "TABLE":
        raise SqlFileError(f"{path}: expected CREATE EXTERNAL TABLE")
    schema = statement.this
    if not isinstance(schema, exp.Schema) or not isinstance(schema.this, exp.Table):
        raise SqlFileError(f"{path}: CREATE TABLE without a column list")
    table = schema.this
    columns = tuple(_column(c) for c in schema.expressions if isinstance(c, exp.ColumnDef))
    properties = statement.args.get("properties")
    partitions: tuple[Column, ...] = ()
    storage = ""
    location = ""
    for prop in properties.expressions if isinstance(properties, exp.Properties) else []:
        if isinstance(prop, exp.PartitionedByProperty) and isinstance(prop.this, exp.Schema):
            partitions = tuple(_column(c) for c in prop.this.expressions if isinstance(c, exp.ColumnDef))
        elif isinstance(prop, exp.FileFormatProperty) and prop.name.upper() == "PARQUET":
            storage = "parquet"
        elif isinstance(prop, exp.RowFormatSerdeProperty) and "json" in prop.name.lower():
            storage = "jsonl"
        elif isinstance(prop, exp.LocationProperty):
            location = prop.this.name
    if not storage:
        raise SqlFileError(f"{path}: neither STORED AS PARQUET nor a JSON SerDe")
    if not location:
        raise SqlFileError(f"{path}: no LOCATION")
    return TableDef(
        database=table.db,
        name=table.name,
        columns=columns,
        partitions=partitions,
        storage=storage,
        location=location,
    )


def table_defs(ddl_dir: Path = DDL_DIR) -> list[TableDef]:
    return [
        table_def(p) for p in ddl_files(ddl_dir) if "CREATE EXTERNAL TABLE" in p.read_text(encoding="utf-8")
    ]


def to_duckdb(sql: str, where: str = "query") -> str:
    """Athena SQL translated to DuckDB by sqlglot (the query text itself is never duplicated)."""
    statement = parse_athena(sql, where)
    return statement.sql(dialect="duckdb")


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _partition_files(root: Path, prefix: str, suffix: str) -> list[Path]:
    """Files Athena's partition projection would read: under year=/month=/day= folders of the prefix."""
    base = root / prefix
    if not base.is_dir():
        return []
    found = []
    for path in sorted(base.rglob(f"*{suffix}")):
        relative = path.relative_to(root).as_posix()
        if path.is_file() and PARTITION_RE.search(relative):
            found.append(path)
    return found


def _select_list(table: TableDef, source: str) -> str:
    """Columns cast to the DDL's types, then the partitions and "$path", from a relation `source`."""
    parts = []
    for column in table.columns:
        parts.append(
            f"TRY_CAST({source}.{_quote(column.name)} AS {column.duckdb_type}) AS {_quote(column.name)}"
        )
    for index, column in enumerate(table.partitions, start=1):
        parts.append(
            f"CAST(regexp_extract({source}.__key, {_literal(PARTITION_RE.pattern)}, {index}) "
            f"AS {column.duckdb_type}) AS {_quote(column.name)}"
        )
    parts.append(f'{source}.__url AS "$path"')
    return ",\n  ".join(parts)


def _empty_view(table: TableDef) -> str:
    columns = [*table.columns, *table.partitions]
    parts = [f"CAST(NULL AS {c.duckdb_type}) AS {_quote(c.name)}" for c in columns]
    parts.append('CAST(NULL AS VARCHAR) AS "$path"')
    return "SELECT " + ", ".join(parts) + " WHERE false"


def _view_sql(table: TableDef, root: Path, bucket: str) -> str:
    suffix = ".parquet" if table.storage == "parquet" else ""
    files = _partition_files(root, table.prefix(), suffix)
    if table.storage == "jsonl":
        files = [f for f in files if not f.name.startswith(".")]
    if not files:
        return _empty_view(table)
    file_list = "[" + ", ".join(_literal(f.as_posix()) for f in files) + "]"
    root_prefix = _literal(root.as_posix().rstrip("/") + "/")
    url_prefix = _literal(f"s3://{bucket}/")
    key = f"substr(filename, length({root_prefix}) + 1)"
    if table.storage == "parquet":
        source = (
            f"(SELECT *, {key} AS __key, {url_prefix} || {key} AS __url "  # noqa: S608 (values escaped by _literal)
            f"FROM read_parquet({file_list}, filename = true, hive_partitioning = false))"
        )
    else:
        # One row per non-blank line; a line that is not a JSON object gives a row of NULLs.
        extracted = ", ".join(
            f"json_extract_string(obj, {_literal('$.' + c.name)}) AS {_quote(c.name)}" for c in table.columns
        )
        source = (
            f"(SELECT {extracted}, __key, __url FROM ("  # noqa: S608 (values escaped by _literal)
            f"SELECT CASE WHEN json_type(CASE WHEN json_valid(line) THEN line END) = 'OBJECT' "
            f"THEN line END AS obj, __key, __url FROM ("
            f"SELECT rtrim(unnest(string_split(content, chr(10))), chr(13)) AS line, "
            f"{key} AS __key, {url_prefix} || {key} AS __url FROM read_text({file_list})"
            f") WHERE trim(line) <> ''))"
        )
    return f"SELECT\n  {_select_list(table, 'src')}\nFROM {source} AS src"


def connect(root: Path, bucket: str, ddl_dir: Path = DDL_DIR) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection where the Athena tables exist as views over the bucket copied to `root`.

    The views follow the DDL in `ddl_dir` (sql/ddl/, or a copy filled in by make console-files).
    """
    if not root.is_dir():
        raise FileNotFoundError(f"no local copy of the bucket at {root}")
    con = duckdb.connect()
    # Athena runs in UTC; so must every timestamp conversion here.
    con.execute("SET TimeZone = 'UTC'")
    created: set[str] = set()
    for table in table_defs(ddl_dir):
        if table.database not in created:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(table.database)}")
            created.add(table.database)
        view = f"{_quote(table.database)}.{_quote(table.name)}"
        con.execute(f"CREATE VIEW {view} AS {_view_sql(table, root.resolve(), bucket)}")
        _logger.debug("created view", extra={"view": view})
    return con


def run_query(con: duckdb.DuckDBPyConnection, path: Path) -> pd.DataFrame:
    """Run one sql/queries/ file, translated from Athena's dialect, and return its result."""
    translated = to_duckdb(read_sql(path), str(path))
    try:
        relation = con.sql(translated)
        types = [str(t) for t in relation.types]
        table = relation.to_arrow_table()
    except duckdb.Error as e:
        raise SqlFileError(f"{path.name}: DuckDB could not run the translated query: {e}") from e
    # Arrow keeps decimals exact (pandas gets Decimal objects, as from Athena's decimal columns).
    # DuckDB sums and counts integers as HUGEINT where Athena returns bigint: cast those back.
    for index, kind in enumerate(types):
        if kind == "HUGEINT":
            table = table.set_column(index, table.field(index).name, pc.cast(table.column(index), pa.int64()))
    return table.to_pandas()
