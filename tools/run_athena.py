"""Run one sql/ file on Amazon Athena and print its result, with AWS SDK for pandas (awswrangler).

    .venv/bin/python -m tools.run_athena sql/queries/sales_by_category.sql \\
        --bucket ecommerce-pipeline-123456789012 --workgroup primary \\
        --s3-output s3://ecommerce-pipeline-123456789012/athena-results/ --region us-east-1

The file's {{BUCKET}} is replaced by --bucket; the SQL is checked as Athena SQL before it is sent;
the tables a query reads are looked up in the Glue Data Catalog first, so a missing table gives a clear
error instead of a failed query. DDL (CREATE ...) runs with start_query_execution and waits; a query
runs with read_sql_query (ctas_approach=False: no temporary tables) and its rows are printed.
Credentials come from the usual AWS chain (environment, profile, role).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awswrangler as wr
import boto3
import pandas as pd
from sqlglot import exp

from local.catalog import BUCKET_PLACEHOLDER, DATABASE, SqlFileError, parse_athena
from tools.console_files import ConsoleFilesError, check_bucket, render

_logger = logging.getLogger(__name__)


class AthenaRunError(RuntimeError):
    """The file cannot be run on Athena as asked; the message says what to do."""


@dataclass(frozen=True)
class Request:
    path: Path
    sql: str
    database: str
    workgroup: str
    s3_output: str | None
    is_query: bool  # True for SELECT/WITH, False for DDL


def prepare(path: Path, bucket: str | None, database: str, workgroup: str, s3_output: str | None) -> Request:
    """Read the file, put the bucket name in, and check that it is one statement of Athena SQL."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise AthenaRunError(f"cannot read {path}: {e.strerror or e}") from e
    if BUCKET_PLACEHOLDER in text:
        if not bucket:
            raise AthenaRunError(
                f"{path} names the bucket as {BUCKET_PLACEHOLDER}: pass --bucket YOUR-BUCKET"
            )
        try:
            text = render(text, {"BUCKET": check_bucket(bucket)}, str(path))
        except ConsoleFilesError as e:
            raise AthenaRunError(str(e)) from e
    if s3_output is not None and not s3_output.startswith("s3://"):
        raise AthenaRunError(f"--s3-output must be an s3:// URL, got {s3_output!r}")
    try:
        statement = parse_athena(text, str(path))
    except SqlFileError as e:
        raise AthenaRunError(str(e)) from e
    return Request(
        path=path,
        sql=text.strip().rstrip(";"),
        database=database,
        workgroup=workgroup,
        s3_output=s3_output,
        is_query=isinstance(statement, exp.Query),
    )


def tables_read(sql: str, default_database: str) -> list[tuple[str, str]]:
    """The catalog tables a query reads (CTE names excluded), as (database, table)."""
    statement = parse_athena(sql, "query")
    ctes = {cte.alias for cte in statement.find_all(exp.CTE)}
    found = set()
    for table in statement.find_all(exp.Table):
        if not table.db and table.name in ctes:
            continue
        found.add((table.db or default_database, table.name))
    return sorted(found)


def check_tables(request: Request, session: boto3.Session) -> None:
    """Fail before sending a query whose tables are not in the Glue Data Catalog."""
    if not request.is_query:
        return
    for database, table in tables_read(request.sql, request.database):
        if not wr.catalog.does_table_exist(database=database, table=table, boto3_session=session):
            raise AthenaRunError(
                f"table {database}.{table} does not exist in the Glue Data Catalog "
                f"(region {session.region_name}): create it first by running the files of sql/ddl/ in order"
            )


def run(request: Request, session: boto3.Session) -> pd.DataFrame | dict[str, Any]:
    """Send the statement to Athena: rows for a query, the finished execution for DDL."""
    check_tables(request, session)
    if request.is_query:
        frame = wr.athena.read_sql_query(
            sql=request.sql,
            database=request.database,
            ctas_approach=False,
            s3_output=request.s3_output,
            workgroup=request.workgroup,
            boto3_session=session,
        )
        if not isinstance(frame, pd.DataFrame):
            raise AthenaRunError("expected one result table from Athena")
        return frame
    execution = wr.athena.start_query_execution(
        sql=request.sql,
        database=request.database,
        s3_output=request.s3_output,
        workgroup=request.workgroup,
        boto3_session=session,
        wait=True,
    )
    if not isinstance(execution, dict):
        raise AthenaRunError("expected a finished query execution from Athena")
    return execution


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.run_athena", description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="a file of sql/ddl/ or sql/queries/")
    parser.add_argument("--bucket", help=f"the pipeline's bucket, put in place of {BUCKET_PLACEHOLDER}")
    parser.add_argument("--database", default=DATABASE, help=f"default database (default {DATABASE})")
    parser.add_argument("--workgroup", default="primary", help="Athena workgroup (default primary)")
    parser.add_argument(
        "--s3-output",
        help="query result location, e.g. s3://BUCKET/athena-results/ (default: the workgroup's setting)",
    )
    parser.add_argument("--region", help="AWS region (default: from the AWS configuration)")
    parser.add_argument("--profile", help="AWS profile (default: from the AWS configuration)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        request = prepare(args.file, args.bucket, args.database, args.workgroup, args.s3_output)
        session = boto3.Session(region_name=args.region, profile_name=args.profile)
        result = run(request, session)
    except (AthenaRunError, SqlFileError) as e:
        print(f"run_athena: {e}", file=sys.stderr)
        return 2
    except wr.exceptions.QueryFailed as e:
        print(f"run_athena: Athena could not run {args.file}: {e}", file=sys.stderr)
        return 1
    if isinstance(result, pd.DataFrame):
        with pd.option_context("display.width", 200, "display.max_columns", 30):
            print(result.to_string(index=False) if not result.empty else "(no rows)")
    else:
        status = result.get("Status", {})
        print(f"{args.file}: {status.get('State', 'UNKNOWN')} (query id {result.get('QueryExecutionId')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
