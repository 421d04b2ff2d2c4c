"""The bytes an Athena query would scan: the columns it reads, of the files in the partitions it reads.

Athena bills the bytes it reads from S3. For Parquet that is each file's footer plus the column chunks
of the columns the query needs; a JSON Lines table is read whole. This module finds, with sqlglot, every
scan of a table in a query (a CTE referenced three times is scanned three times: Athena's engine inlines
CTEs), the data columns each scan references (partition keys and pseudo-columns such as "$path" are not
in the files), and the partitions its WHERE clause keeps; then it sums those bytes over the files.

What it does not model: partitions pruned through a join condition, and columns the engine could drop
because an outer query never uses them (the estimate counts every column a scan's own SELECT names).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlglot import exp
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, build_scope

from local.catalog import TableDef, parse_athena
from tools.prices import ATHENA_MINIMUM_BYTES, MB

# Athena's pseudo-columns: metadata of the file a row comes from, not stored in it.
PSEUDO_COLUMNS = ("$path", "$file_size", "$file_modified_time")
_PARQUET_TAIL = 8  # footer length (4 bytes, little endian) + "PAR1"


class QueryScanError(ValueError):
    """A query cannot be analysed (it reads a table the catalog does not have, or does not parse)."""


@dataclass(frozen=True)
class DataFile:
    """One object of a table: its partition values and what reading each column of it costs."""

    key: str
    partition: Mapping[str, int]
    size: int
    column_bytes: Mapping[str, int] | None = None  # Parquet: compressed bytes per column; None: read whole
    footer_bytes: int = 0

    def bytes_read(self, columns: frozenset[str]) -> int:
        """Bytes a scan that needs `columns` reads of this file."""
        if self.column_bytes is None:
            return self.size
        return self.footer_bytes + sum(self.column_bytes.get(c, 0) for c in columns)


def partition_of(key: str, names: Sequence[str]) -> dict[str, int]:
    """The partition values in a key, e.g. {"year": 2026, "month": 11, "day": 24}; {} if not partitioned."""
    values = {}
    for name in names:
        match = re.search(rf"(?:^|/){re.escape(name)}=(\d+)/", key)
        if match is None:
            return {}
        values[name] = int(match.group(1))
    return values


def parquet_file(key: str, partition_names: Sequence[str], size: int, tail: bytes) -> DataFile:
    """A Parquet DataFile from the end of the object (at least its footer and the 8 bytes after it)."""
    if len(tail) < _PARQUET_TAIL or tail[-4:] != b"PAR1":
        raise QueryScanError(f"{key}: not a Parquet file (no PAR1 at the end)")
    footer = int.from_bytes(tail[-8:-4], "little") + _PARQUET_TAIL
    if footer > len(tail):
        raise QueryScanError(f"{key}: the footer is {footer} bytes, only {len(tail)} were given")
    metadata: Any = pq.read_metadata(pa.BufferReader(tail[-footer:]))
    column_bytes: dict[str, int] = {}
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        for c in range(group.num_columns):
            chunk = group.column(c)
            name = chunk.path_in_schema.split(".")[0]
            column_bytes[name] = column_bytes.get(name, 0) + int(chunk.total_compressed_size)
    return DataFile(key, partition_of(key, partition_names), size, column_bytes, footer)


def text_file(key: str, partition_names: Sequence[str], size: int) -> DataFile:
    """A JSON Lines (or any text) DataFile: Athena reads it whole whatever the columns."""
    return DataFile(key, partition_of(key, partition_names), size)


@dataclass(frozen=True)
class TableScan:
    """One read of a table by a query: the data columns it needs and its conditions on partition keys."""

    table: TableDef
    columns: frozenset[str]
    partition_filters: tuple[exp.Expr, ...]

    def reads(self, partition: Mapping[str, int]) -> bool:
        """Whether this scan reads a partition (a condition it cannot evaluate keeps the partition)."""
        return all(_holds(condition, partition) is not False for condition in self.partition_filters)


def _schema(tables: Sequence[TableDef]) -> dict[str, object]:
    schema: dict[str, dict[str, dict[str, str]]] = {}
    for t in tables:
        columns = {c.name: c.athena_type for c in (*t.columns, *t.partitions)}
        columns.update(dict.fromkeys(PSEUDO_COLUMNS, "string"))
        schema.setdefault(t.database, {})[t.name] = columns
    return dict(schema)


def _conjuncts(condition: exp.Expr | None) -> Iterator[exp.Expr]:
    if condition is None:
        return
    if isinstance(condition, exp.And):
        yield from _conjuncts(condition.left)
        yield from _conjuncts(condition.right)
    elif isinstance(condition, exp.Paren):
        yield from _conjuncts(condition.this)
    else:
        yield condition


def _scans(scope: Scope, by_name: Mapping[tuple[str, str], TableDef]) -> Iterator[TableScan]:
    where = scope.expression.args.get("where")
    for alias, (_, source) in scope.selected_sources.items():
        if isinstance(source, Scope):
            yield from _scans(source, by_name)
            continue
        table = by_name.get((source.db, source.name))
        if table is None:
            raise QueryScanError(f"the query reads {source.db}.{source.name}, which sql/ddl/ does not define")
        data = {c.name for c in table.columns}
        partitions = {c.name for c in table.partitions}
        columns = frozenset(c.name for c in scope.columns if c.table == alias and c.name in data)
        filters = tuple(
            c
            for c in _conjuncts(where.this if isinstance(where, exp.Where) else None)
            if (refs := list(c.find_all(exp.Column)))
            and all(r.table == alias and r.name in partitions for r in refs)
        )
        yield TableScan(table, columns, filters)
    for child in (*scope.subquery_scopes, *scope.set_operation_scopes):
        yield from _scans(child, by_name)


def table_scans(sql: str, tables: Sequence[TableDef], where: str = "query") -> list[TableScan]:
    """Every read of a catalog table in one Athena query, in the order the query names them."""
    statement = parse_athena(sql, where)
    try:
        qualified = qualify(statement, schema=_schema(tables), dialect="athena")
    except Exception as e:
        raise QueryScanError(f"{where}: cannot resolve the query's columns: {e}") from e
    root = build_scope(qualified)
    if root is None:
        raise QueryScanError(f"{where}: not a query")
    return list(_scans(root, {(t.database, t.name): t for t in tables}))


def _value(node: exp.Expr, partition: Mapping[str, int]) -> int | str | None:
    if isinstance(node, exp.Column):
        return partition.get(node.name)
    if isinstance(node, exp.Literal):
        text = str(node.this)
        try:
            return int(text) if re.fullmatch(r"-?\d+", text) else text
        except ValueError:
            return None
    if isinstance(node, exp.Paren):
        return _value(node.this, partition)
    return None


_COMPARE: dict[type[exp.Expr], Callable[[Any, Any], bool]] = {
    exp.EQ: lambda a, b: a == b,
    exp.NEQ: lambda a, b: a != b,
    exp.GT: lambda a, b: a > b,
    exp.GTE: lambda a, b: a >= b,
    exp.LT: lambda a, b: a < b,
    exp.LTE: lambda a, b: a <= b,
}


def _holds(condition: exp.Expr, partition: Mapping[str, int]) -> bool | None:
    """True or False when the condition can be evaluated on the partition's values, else None."""
    if isinstance(condition, exp.Not):
        inner = _holds(condition.this, partition)
        return None if inner is None else not inner
    if isinstance(condition, exp.Or):
        left, right = _holds(condition.left, partition), _holds(condition.right, partition)
        if left is True or right is True:
            return True
        return None if left is None or right is None else False
    if isinstance(condition, exp.Paren):
        return _holds(condition.this, partition)
    compare = _COMPARE.get(type(condition))
    if compare is not None and isinstance(condition, exp.Binary):
        a, b = _value(condition.left, partition), _value(condition.right, partition)
        if isinstance(a, int) and isinstance(b, int):
            return bool(compare(a, b))
        return None
    if isinstance(condition, exp.Between):
        v, lo, hi = (_value(condition.args[k], partition) for k in ("this", "low", "high"))
        if isinstance(v, int) and isinstance(lo, int) and isinstance(hi, int):
            return lo <= v <= hi
        return None
    if isinstance(condition, exp.In) and not condition.args.get("query"):
        v = _value(condition.this, partition)
        options = [_value(o, partition) for o in condition.expressions]
        if isinstance(v, int) and all(isinstance(o, int) for o in options):
            return v in options
    return None


def bytes_scanned(scans: Sequence[TableScan], files: Mapping[str, Sequence[DataFile]]) -> int:
    """The bytes the scans read, `files` giving each table's objects by "database.table"."""
    total = 0
    for scan in scans:
        for f in files.get(f"{scan.table.database}.{scan.table.name}", ()):
            if scan.reads(f.partition):
                total += f.bytes_read(scan.columns)
    return total


def billed_bytes(scanned: int) -> int:
    """What Athena bills for a query that scanned `scanned` bytes: whole MB, at least 10 MB."""
    if scanned < 0:
        raise ValueError(f"bytes scanned cannot be negative, got {scanned}")
    return max(ATHENA_MINIMUM_BYTES, math.ceil(scanned / MB) * MB)
