"""tools/console_files.py: the values it accepts and refuses, and what it writes (make console-files)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT, load_lambda
from tools import console_files
from tools.console_files import ConsoleFilesError, check_account, check_bucket, check_region, render

GOOD = {"BUCKET": "acme-shop-pipeline", "REGION": "eu-west-1", "ACCOUNT": "123456789012"}


@pytest.mark.parametrize(
    "name",
    ["abc", "acme-shop-pipeline", "ecommerce-pipeline-123456789012", "a.b-c", "1bucket", "x" * 63],
)
def test_valid_bucket_names_are_accepted(name: str) -> None:
    assert check_bucket(name) == name


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("ab", "3 to 63 characters"),
        ("x" * 64, "3 to 63 characters"),
        ("My-Bucket", "lowercase letters, digits, dots and hyphens"),
        ("my_bucket", "lowercase letters, digits, dots and hyphens"),
        ("my bucket", "lowercase letters, digits, dots and hyphens"),
        ("-bucket", "begin and end with a letter or a digit"),
        ("bucket.", "begin and end with a letter or a digit"),
        ("my..bucket", "two dots in a row"),
        ("192.168.5.4", "IP address"),
        ("xn--bucket", "may not start with 'xn--'"),
        ("amzn-s3-demo-bucket", "may not start with 'amzn-s3-demo-'"),
        ("bucket-s3alias", "may not end with '-s3alias'"),
        ("bucket--x-s3", "may not end with '--x-s3'"),
        ("{{BUCKET}}", "lowercase letters"),
        ("", "3 to 63 characters"),
    ],
)
def test_an_invalid_bucket_name_is_refused_with_the_rule_it_breaks(name: str, rule: str) -> None:
    with pytest.raises(ConsoleFilesError, match="not a valid S3 bucket name") as raised:
        check_bucket(name)
    assert rule in str(raised.value)
    assert repr(name) in str(raised.value)


@pytest.mark.parametrize("name", ["ab", "My-Bucket", "my..bucket", "-bucket", "192.168.5.4", "a.b-c", "abc"])
def test_every_bucket_name_the_tool_accepts_the_transformer_accepts_too(name: str) -> None:
    transformer = load_lambda("transformer")
    try:
        check_bucket(name)
    except ConsoleFilesError:
        return
    assert transformer.load_config({"BUCKET_NAME": name}).output_bucket == name


@pytest.mark.parametrize(
    "region", ["us-east-1", "eu-west-1", "ap-southeast-5", "eu-central-2", "il-central-1"]
)
def test_standard_regions_are_accepted(region: str) -> None:
    assert check_region(region) == region


@pytest.mark.parametrize(
    ("region", "message"),
    [
        ("US-EAST-1", "not an AWS region name"),
        ("useast1", "not an AWS region name"),
        ("eu-west", "not an AWS region name"),
        ("cn-north-1", "aws-cn partition"),
        ("us-gov-west-1", "aws-us-gov partition"),
    ],
)
def test_a_region_the_files_cannot_serve_is_refused(region: str, message: str) -> None:
    with pytest.raises(ConsoleFilesError, match=message):
        check_region(region)


@pytest.mark.parametrize("account", ["12345678901", "1234567890123", "12345678901a", "1234-5678-9012"])
def test_an_account_that_is_not_12_digits_is_refused(account: str) -> None:
    with pytest.raises(ConsoleFilesError, match="not a 12-digit AWS account ID"):
        check_account(account)


def test_render_fills_every_placeholder_and_refuses_unknown_or_missing_ones() -> None:
    assert (
        render("arn:aws:s3:::{{BUCKET}}/raw/* {{ REGION }}", GOOD, "f")
        == "arn:aws:s3:::acme-shop-pipeline/raw/* eu-west-1"
    )
    with pytest.raises(ConsoleFilesError, match=r"f names unknown placeholder.*BUCKET_NAME"):
        render("{{BUCKET_NAME}}", GOOD, "f")
    with pytest.raises(ConsoleFilesError, match="f needs ACCOUNT"):
        render("{{ACCOUNT}}", {"BUCKET": "b"}, "f")
    with pytest.raises(ConsoleFilesError, match=r"f, line 2: \{\{ is left"):
        render("ok\n{{bucket-name}}", GOOD, "f")


def test_region_defaults_to_us_east_1(tmp_path: Path) -> None:
    console_files.render_all({"BUCKET": "acme-shop-pipeline", "ACCOUNT": "123456789012"}, tmp_path)

    assert '"region": "us-east-1"' in (tmp_path / "infra" / "dashboard.json").read_text(encoding="utf-8")


def test_without_account_it_names_the_files_that_need_one_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConsoleFilesError, match="ACCOUNT is required") as raised:
        console_files.render_all({"BUCKET": "acme-shop-pipeline"}, tmp_path / "out")

    assert "infra/iam/generator-policy.json" in str(raised.value)
    assert "infra/alarms/stalled.json" in str(raised.value)
    assert "sql/ddl" not in str(raised.value)  # the DDL names only the bucket
    assert not (tmp_path / "out").exists()


def test_a_bad_value_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConsoleFilesError, match="REGION"):
        console_files.render_all({**GOOD, "REGION": "eu-west"}, tmp_path / "out")
    with pytest.raises(ConsoleFilesError, match="BUCKET is required"):
        console_files.render_all({**GOOD, "BUCKET": "  "}, tmp_path / "out")

    assert not (tmp_path / "out").exists()


def test_a_source_file_with_an_unknown_placeholder_stops_the_run_before_anything_is_written(
    tmp_path: Path,
) -> None:
    root = tmp_path / "repo"
    (root / "infra" / "iam").mkdir(parents=True)
    (root / "infra" / "iam" / "a-policy.json").write_text('{"r": "{{BUCKET}}"}', encoding="utf-8")
    (root / "infra" / "iam" / "b-policy.json").write_text('{"r": "{{BUCKET_NAME}}"}', encoding="utf-8")

    with pytest.raises(ConsoleFilesError, match=r"infra/iam/b-policy.json names unknown placeholder"):
        console_files.render_all(GOOD, tmp_path / "out", root=root)
    assert not (tmp_path / "out").exists()


def test_the_command_line_reports_errors_on_stderr_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert console_files.main(["--bucket", "Bad_Name", "--out", str(tmp_path)]) == 2
    assert "console-files: BUCKET 'Bad_Name' is not a valid S3 bucket name" in capsys.readouterr().err

    args = ["--bucket", GOOD["BUCKET"], "--account", GOOD["ACCOUNT"], "--out", str(tmp_path / "out")]
    assert console_files.main(args) == 0
    out = capsys.readouterr().out
    assert f"{len(console_files.source_files())} files written" in out
    assert "infra/iam/generator-policy.json" in out


def test_the_tool_is_python_3_9_syntax_so_it_runs_in_cloudshell_without_the_venv() -> None:
    path = ROOT / "tools" / "console_files.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), feature_version=(3, 9))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert imported <= {
        "__future__",
        "argparse",
        "collections",
        "ipaddress",
        "json",
        "logging",
        "re",
        "sys",
        "pathlib",
    }
