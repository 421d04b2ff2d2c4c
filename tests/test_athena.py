"""The Athena runner's wiring: the statement and parameters it sends, and its errors, against moto.

moto records Athena query executions but does not run them, so results are not tested here: the SQL's
numbers are tested on DuckDB in test_sql.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import awswrangler as wr
import boto3
import pandas as pd
import pytest
from moto import mock_aws

from local.catalog import DDL_DIR, QUERIES_DIR
from tools import run_athena

REGION = "us-east-1"
DATA_BUCKET = "acme-shop-pipeline"
RESULTS = f"s3://{DATA_BUCKET}/athena-results/"


@pytest.fixture
def aws(aws_credentials: None) -> Iterator[dict[str, Any]]:
    """moto with the data bucket and the Glue database, but no tables yet."""
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=DATA_BUCKET)
        glue = boto3.client("glue", region_name=REGION)
        glue.create_database(DatabaseInput={"Name": "ecommerce_db"})
        yield {"glue": glue, "athena": boto3.client("athena", region_name=REGION)}


def _create_table(glue: Any, name: str) -> None:
    glue.create_table(
        DatabaseName="ecommerce_db",
        TableInput={
            "Name": name,
            "StorageDescriptor": {
                "Columns": [{"Name": "x", "Type": "string"}],
                "Location": f"s3://{DATA_BUCKET}/",
            },
        },
    )


def _executions(athena: Any) -> list[dict[str, Any]]:
    ids = athena.list_query_executions()["QueryExecutionIds"]
    return [athena.get_query_execution(QueryExecutionId=i)["QueryExecution"] for i in ids]


def test_ddl_is_sent_with_the_bucket_name_database_workgroup_and_output_location(aws, capsys):
    ddl = DDL_DIR / "02_create_table_transactions.sql"
    args = [str(ddl), "--bucket", DATA_BUCKET, "--s3-output", RESULTS, "--workgroup", "primary"]
    code = run_athena.main([*args, "--region", REGION])
    assert code == 0
    [execution] = _executions(aws["athena"])
    expected_sql = ddl.read_text(encoding="utf-8").replace("{{BUCKET}}", DATA_BUCKET).strip()
    assert execution["Query"] == expected_sql
    assert "{{" not in execution["Query"]
    assert execution["QueryExecutionContext"]["Database"] == "ecommerce_db"
    query_id = execution["QueryExecutionId"]
    assert execution["ResultConfiguration"]["OutputLocation"] == f"{RESULTS}{query_id}.csv"
    assert execution["WorkGroup"] == "primary"
    assert "SUCCEEDED" in capsys.readouterr().out


def test_a_query_on_a_missing_table_fails_clearly_before_anything_is_sent(aws, capsys):
    query = QUERIES_DIR / "sales_by_category.sql"
    code = run_athena.main([str(query), "--s3-output", RESULTS, "--region", REGION])
    assert code == 2
    err = capsys.readouterr().err
    assert "table ecommerce_db.transactions does not exist in the Glue Data Catalog" in err
    assert "sql/ddl/" in err
    assert _executions(aws["athena"]) == []


def test_reconciliation_needs_all_three_tables(aws, capsys):
    _create_table(aws["glue"], "transactions")
    _create_table(aws["glue"], "raw_transactions")
    code = run_athena.main([str(QUERIES_DIR / "dq_reconciliation_by_day.sql"), "--region", REGION])
    assert code == 2
    assert "ecommerce_db.quarantine does not exist" in capsys.readouterr().err


def test_a_query_goes_to_read_sql_query_with_the_files_text_and_the_options(aws, capsys, monkeypatch):
    for table in ("transactions", "raw_transactions", "quarantine"):
        _create_table(aws["glue"], table)
    calls: list[dict[str, Any]] = []

    def read_sql_query(**kwargs: Any) -> pd.DataFrame:  # moto runs no query: record what is sent
        calls.append(kwargs)
        return pd.DataFrame({"category": ["Books"], "transaction_count": [3]})

    monkeypatch.setattr(wr.athena, "read_sql_query", read_sql_query)
    query = QUERIES_DIR / "sales_by_category.sql"
    args = ["--database", "ecommerce_db", "--workgroup", "analysts", "--s3-output", RESULTS]
    code = run_athena.main([str(query), *args, "--region", REGION])
    assert code == 0
    [call] = calls
    assert call["sql"] == query.read_text(encoding="utf-8").strip()
    assert call["database"] == "ecommerce_db"
    assert call["workgroup"] == "analysts"
    assert call["s3_output"] == RESULTS
    assert call["ctas_approach"] is False
    assert call["boto3_session"].region_name == REGION
    out = capsys.readouterr().out
    assert "Books" in out
    assert "transaction_count" in out


def test_a_file_naming_the_bucket_placeholder_needs_bucket(aws, capsys):
    code = run_athena.main([str(DDL_DIR / "04_create_table_quarantine.sql"), "--region", REGION])
    assert code == 2
    assert "pass --bucket" in capsys.readouterr().err
    assert _executions(aws["athena"]) == []


def test_a_file_that_is_not_athena_sql_is_refused(aws, tmp_path: Path, capsys):
    broken = tmp_path / "broken.sql"
    broken.write_text("SELECT category, FROM WHERE", encoding="utf-8")
    assert run_athena.main([str(broken), "--region", REGION]) == 2
    assert "not valid Athena SQL" in capsys.readouterr().err
    assert run_athena.main([str(tmp_path / "missing.sql"), "--region", REGION]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_output_location_must_be_s3(aws, capsys):
    query = QUERIES_DIR / "revenue_by_hour.sql"
    assert run_athena.main([str(query), "--s3-output", "athena-results/", "--region", REGION]) == 2
    assert "--s3-output must be an s3:// URL" in capsys.readouterr().err


def test_tables_read_leaves_out_the_querys_own_ctes():
    sql = (QUERIES_DIR / "dq_reconciliation_by_day.sql").read_text(encoding="utf-8")
    assert run_athena.tables_read(sql, "ecommerce_db") == [
        ("ecommerce_db", "quarantine"),
        ("ecommerce_db", "raw_transactions"),
        ("ecommerce_db", "transactions"),
    ]
