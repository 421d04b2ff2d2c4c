"""The console path's files say what the stack does, and are accepted by the APIs they are pasted into.

Each file under infra/iam/, infra/alarms/ and infra/dashboard.json is compared, as data, with the
template's resource resolved for a stack called `ecommerce` (the console path's names) with the
placeholders {{BUCKET}}, {{REGION}} and {{ACCOUNT}}. The IAM documents are also held to least
privilege: no wildcard action or resource, writes only under the prefixes the issue allows. Then every
file `make console-files` fills in (those and sql/ddl/, events/) is given to the API that takes it, on
moto: IAM, S3, CloudWatch, the handlers themselves, and the DDL to sqlglot's Athena dialect and DuckDB.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import boto3
import pytest
from moto import mock_aws

from local import catalog
from local.pipeline import download_bucket
from tests.conftest import ROOT, load_lambda
from tests.infra.cfn import (
    CONSOLE_ACCOUNT_PLACEHOLDER,
    CONSOLE_BUCKET_PLACEHOLDER,
    CONSOLE_REGION_PLACEHOLDER,
    CONSOLE_STACK_NAME,
    INFRA,
    console_values,
    load_template,
    resolve,
    resources_of_type,
)
from tools import console_files

TEMPLATE = load_template()
VALUES = console_values(TEMPLATE)
BUCKET_ARN = f"arn:aws:s3:::{CONSOLE_BUCKET_PLACEHOLDER}"

ROLE_POLICY_FILES = {
    "GeneratorRole": INFRA / "iam" / "generator-policy.json",
    "TransformerRole": INFRA / "iam" / "transformer-policy.json",
    "CompactorRole": INFRA / "iam" / "compactor-policy.json",
}
ALARM_FILES = {
    "GeneratorErrorsAlarm": INFRA / "alarms" / "generator-errors.json",
    "TransformerErrorsAlarm": INFRA / "alarms" / "transformer-errors.json",
    "CompactorErrorsAlarm": INFRA / "alarms" / "compactor-errors.json",
    "FailedEventsAlarm": INFRA / "alarms" / "failed-events.json",
    "StalledPipelineAlarm": INFRA / "alarms" / "stalled.json",
    "QuarantineRateAlarm": INFRA / "alarms" / "quarantine-rate.json",
}


def _json(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _grants(document: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(action, resource, condition) triples an Allow-only policy document grants."""
    grants = set()
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow", statement
        condition = json.dumps(statement.get("Condition", {}), sort_keys=True)
        for action in _as_list(statement["Action"]):
            for resource in _as_list(statement["Resource"]):
                grants.add((action, resource, condition))
    return grants


def _template_role_policy(role: str) -> dict[str, Any]:
    (policy,) = TEMPLATE["Resources"][role]["Properties"]["Policies"]
    document: dict[str, Any] = resolve(policy["PolicyDocument"], VALUES)
    return document


def _all_policy_files() -> Iterator[Path]:
    # Identity policies only: the trust policies and the bucket policy (a Deny) are checked on their own.
    skip = {"bucket-policy.json", "lambda-trust-policy.json", "glue-trust-policy.json"}
    yield from sorted(p for p in (INFRA / "iam").glob("*-policy.json") if p.name not in skip)


@pytest.mark.parametrize("role", sorted(ROLE_POLICY_FILES))
def test_console_policy_grants_exactly_what_the_stack_role_grants(role: str) -> None:
    console = _json(ROLE_POLICY_FILES[role])
    stack = _template_role_policy(role)

    assert _grants(console) == _grants(stack)
    assert {a for a, _, _ in _grants(console)} == {a for a, _, _ in _grants(stack)}


def test_the_template_defines_no_other_role_or_policy() -> None:
    roles = resources_of_type(TEMPLATE, "AWS::IAM::Role")
    assert set(roles) == set(ROLE_POLICY_FILES)
    for role in roles.values():
        assert "ManagedPolicyArns" not in role["Properties"], "no managed policy: the grants are in the files"
    for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::IAM::User", "AWS::IAM::Group"):
        assert resources_of_type(TEMPLATE, kind) == {}


@pytest.mark.parametrize("path", list(_all_policy_files()), ids=lambda p: p.name)
def test_console_policy_has_no_wildcard_action_no_bare_wildcard_resource_and_no_managed_policy(
    path: Path,
) -> None:
    text = path.read_text(encoding="utf-8")
    grants = _grants(json.loads(text))

    assert "FullAccess" not in text
    for action, resource, _ in grants:
        service, _, name = action.partition(":")
        assert "*" not in name, f"{path.name}: wildcard action {action}"
        assert resource != "*", f"{path.name}: {action} on every resource"
        assert resource.startswith(f"arn:aws:{service}:"), f"{path.name}: {action} on {resource}"


def test_generator_may_only_put_objects_under_raw() -> None:
    grants = _grants(_json(ROLE_POLICY_FILES["GeneratorRole"]))

    s3 = {(a, r) for a, r, _ in grants if a.startswith("s3:")}
    assert s3 == {("s3:PutObject", f"{BUCKET_ARN}/raw/*")}
    assert {a for a, _, _ in grants} == {
        "s3:PutObject",
        "logs:CreateLogGroup",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    }


def test_transformer_reads_raw_and_writes_only_its_outputs_and_bookkeeping() -> None:
    grants = _grants(_json(ROLE_POLICY_FILES["TransformerRole"]))

    s3 = {(a, r) for a, r, _ in grants if a.startswith("s3:")}
    assert s3 == {
        ("s3:GetObject", f"{BUCKET_ARN}/raw/*"),
        # Without ListBucket, S3 answers AccessDenied for a deleted object, which the contract skips
        # as NoSuchKey; ListBucket reveals key names, never data.
        ("s3:ListBucket", BUCKET_ARN),
        # Replacing a raw file deletes the outputs its new content no longer produces
        ("s3:PutObject", f"{BUCKET_ARN}/processed/transactions/*"),
        ("s3:DeleteObject", f"{BUCKET_ARN}/processed/transactions/*"),
        ("s3:PutObject", f"{BUCKET_ARN}/quarantine/*"),
        ("s3:DeleteObject", f"{BUCKET_ARN}/quarantine/*"),
        # The per-raw-key state (what is in place, and the lock) and the compactor's dirty-day markers
        ("s3:GetObject", f"{BUCKET_ARN}/state/transformer/*"),
        ("s3:PutObject", f"{BUCKET_ARN}/state/transformer/*"),
        ("s3:GetObject", f"{BUCKET_ARN}/state/compaction/dirty/*"),  # to keep a replay's drop_unclaimed
        ("s3:PutObject", f"{BUCKET_ARN}/state/compaction/dirty/*"),
    }
    sqs = {(a, r) for a, r, _ in grants if a.startswith("sqs:")}
    assert sqs == {("sqs:SendMessage", VALUES["TransformerFailureQueue.Arn"])}


def test_compactor_rewrites_only_its_own_files_and_deletes_only_with_conditional_requests() -> None:
    grants = _grants(_json(ROLE_POLICY_FILES["CompactorRole"]))
    table = f"{BUCKET_ARN}/processed/transactions"

    def condition(key: str) -> str:
        return json.dumps({"Null": {key: "false"}}, sort_keys=True)

    s3 = {(a, r, c) for a, r, c in grants if a.startswith("s3:")}
    assert s3 == {
        # Listing only the table's day partitions
        ("s3:ListBucket", BUCKET_ARN, json.dumps({"StringLike": {"s3:prefix": "processed/transactions/*"}})),
        ("s3:GetObject", f"{table}/*", "{}"),
        # Its own compacted-*.parquet files only, created only if absent or replaced only if unchanged:
        # it can never overwrite a transformer's file or a compacted file it has not read
        ("s3:PutObject", f"{table}/*/compacted-*.parquet", condition("s3:if-none-match")),
        ("s3:PutObject", f"{table}/*/compacted-*.parquet", condition("s3:if-match")),
        # Deletes only with If-Match: only the version it read and merged
        ("s3:DeleteObject", f"{table}/*", condition("s3:if-match")),
        # The manifest copies, outside the table
        ("s3:PutObject", f"{BUCKET_ARN}/compaction/transactions/*", "{}"),
        # The dirty-day markers: listed, read, and deleted only with If-Match (a newer one survives)
        ("s3:ListBucket", BUCKET_ARN, json.dumps({"StringLike": {"s3:prefix": "state/compaction/dirty/*"}})),
        ("s3:GetObject", f"{BUCKET_ARN}/state/compaction/dirty/*", "{}"),
        ("s3:DeleteObject", f"{BUCKET_ARN}/state/compaction/dirty/*", condition("s3:if-match")),
        # The transformer's state objects: read only (listing one key tells absent from denied)
        ("s3:ListBucket", BUCKET_ARN, json.dumps({"StringLike": {"s3:prefix": "state/transformer/*"}})),
        ("s3:GetObject", f"{BUCKET_ARN}/state/transformer/*", "{}"),
    }
    assert {a for a, _, _ in grants if not a.startswith("s3:")} == {
        "logs:CreateLogGroup",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    }


def test_crawler_reads_only_processed_and_touches_only_ecommerce_db() -> None:
    grants = _grants(_json(INFRA / "iam" / "crawler-policy.json"))

    s3 = {(a, r) for a, r, _ in grants if a.startswith("s3:")}
    assert s3 == {("s3:GetObject", f"{BUCKET_ARN}/processed/*"), ("s3:ListBucket", BUCKET_ARN)}
    (list_condition,) = {c for a, _, c in grants if a == "s3:ListBucket"}
    assert all(p.startswith("processed") for p in json.loads(list_condition)["StringLike"]["s3:prefix"])
    glue_resources = {r for a, r, _ in grants if a.startswith("glue:")}
    assert glue_resources == {
        "arn:aws:glue:{{REGION}}:{{ACCOUNT}}:catalog",
        "arn:aws:glue:{{REGION}}:{{ACCOUNT}}:database/ecommerce_db",
        "arn:aws:glue:{{REGION}}:{{ACCOUNT}}:table/ecommerce_db/*",
    }
    assert not {a for a, _, _ in grants if a.startswith("glue:Delete")}


@pytest.mark.parametrize("role", sorted(ROLE_POLICY_FILES))
def test_each_function_writes_only_its_own_log_group(role: str) -> None:
    function = role.removesuffix("Role").lower()
    region, account = CONSOLE_REGION_PLACEHOLDER, CONSOLE_ACCOUNT_PLACEHOLDER
    group = f"arn:aws:logs:{region}:{account}:log-group:/aws/lambda/{CONSOLE_STACK_NAME}-{function}"

    logs = {r for a, r, _ in _grants(_json(ROLE_POLICY_FILES[role])) if a.startswith("logs:")}

    assert logs == {group, f"{group}:*"}


@pytest.mark.parametrize("trust", ["lambda-trust-policy.json", "glue-trust-policy.json"])
def test_trust_policies_let_only_their_service_assume_the_role(trust: str) -> None:
    (statement,) = _json(INFRA / "iam" / trust)["Statement"]
    service = trust.split("-", maxsplit=1)[0]

    assert statement == {
        "Effect": "Allow",
        "Principal": {"Service": f"{service}.amazonaws.com"},
        "Action": "sts:AssumeRole",
    }


def test_stack_roles_trust_the_same_principal_as_the_console_trust_policy() -> None:
    console = _json(INFRA / "iam" / "lambda-trust-policy.json")
    for role in ROLE_POLICY_FILES:
        assert TEMPLATE["Resources"][role]["Properties"]["AssumeRolePolicyDocument"] == console


@pytest.mark.parametrize("alarm", sorted(ALARM_FILES))
def test_console_alarm_file_is_the_stacks_alarm(alarm: str) -> None:
    stack = resolve(TEMPLATE["Resources"][alarm]["Properties"], VALUES)

    assert _json(ALARM_FILES[alarm]) == stack


def test_every_alarm_of_the_stack_has_a_console_file() -> None:
    assert set(resources_of_type(TEMPLATE, "AWS::CloudWatch::Alarm")) == set(ALARM_FILES)
    assert {p.name for p in (INFRA / "alarms").glob("*.json")} == {p.name for p in ALARM_FILES.values()}


def test_console_dashboard_is_the_stacks_dashboard() -> None:
    (dashboard,) = resources_of_type(TEMPLATE, "AWS::CloudWatch::Dashboard").values()
    stack_body = json.loads(resolve(dashboard["Properties"]["DashboardBody"], VALUES))

    assert _json(INFRA / "dashboard.json") == stack_body


def test_dashboard_metric_widgets_name_a_region_and_only_metrics_the_pipeline_has() -> None:
    body = _json(INFRA / "dashboard.json")
    functions = {f"{CONSOLE_STACK_NAME}-{name}" for name in ("generator", "transformer", "compactor")}
    queue = VALUES["TransformerFailureQueue.QueueName"]

    metric_widgets = [w for w in body["widgets"] if w["type"] == "metric"]
    assert metric_widgets
    for widget in metric_widgets:
        assert widget["properties"]["region"] == CONSOLE_REGION_PLACEHOLDER
        for metric in widget["properties"]["metrics"]:
            names = [m for m in metric if isinstance(m, str)]
            if not names:  # a metric math expression
                continue
            namespace, _name, *dimensions = names
            if namespace == "AWS/Lambda":
                assert dimensions[0] == "FunctionName"
                assert dimensions[1] in functions
            elif namespace == "AWS/SQS":
                assert dimensions == ["QueueName", queue]
            else:
                assert namespace == "EcommercePipeline"
                assert dimensions == [], "the handlers' metrics have no dimensions"


def test_console_bucket_policy_is_the_stacks_tls_only_policy() -> None:
    stack = resolve(TEMPLATE["Resources"]["DataBucketPolicy"]["Properties"]["PolicyDocument"], VALUES)

    assert _json(INFRA / "iam" / "bucket-policy.json") == stack


# --- Filled in by make console-files, then given to the API each file is pasted into --------------------

# Not the tests' defaults, so that a value written into a file instead of a placeholder shows.
FILLED = {"BUCKET": "acme-shop-pipeline", "REGION": "eu-west-1", "ACCOUNT": "123456789012"}


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    out = tmp_path / "console"
    console_files.render_all(FILLED, out)
    return out


def test_every_file_a_console_user_pastes_is_filled_in_with_no_placeholder_left(filled: Path) -> None:
    sources = console_files.source_files()
    written = sorted(p.relative_to(filled) for p in filled.rglob("*") if p.is_file())

    assert written == sorted(p.relative_to(ROOT) for p in sources)
    for source in sources:
        before = source.read_text(encoding="utf-8")
        after = (filled / source.relative_to(ROOT)).read_text(encoding="utf-8")
        assert "{{" not in after, source
        for name, value in FILLED.items():
            # Every placeholder became its value (the value may also have been there before).
            assert after.count(value) == before.count(value) + before.count("{{" + name + "}}"), (
                source,
                name,
            )


@pytest.mark.parametrize("source", console_files.source_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_a_console_file_names_deployment_values_only_as_placeholders(source: Path) -> None:
    text = re.sub(r"\{\{[A-Z]+\}\}", "", source.read_text(encoding="utf-8"))

    assert not re.search(r"\b\d{12}\b", text), "an account ID written out: use {{ACCOUNT}}"
    assert not re.search(r"\b(us|eu|ap|sa|ca|me|af|il|mx)-[a-z]+-\d\b", text), (
        "a region written out: use {{REGION}}"
    )
    for spelling in (
        "BUCKET_NAME",
        "YOUR_BUCKET",
        "your-ecommerce-bucket",
        "my-ecommerce-bucket",
        "ACCOUNT_ID",
    ):
        assert spelling not in text, f"{spelling}: the bucket is {{{{BUCKET}}}}, the account {{{{ACCOUNT}}}}"


def test_the_filled_iam_documents_are_accepted_by_iam_and_the_bucket_policy_by_s3(
    filled: Path, aws_credentials: None
) -> None:
    iam_dir = filled / "infra" / "iam"
    region: Any = FILLED["REGION"]
    with mock_aws():
        iam = boto3.client("iam", region_name=region)
        for role, trust, policy in [
            ("ecommerce-generator-role", "lambda-trust-policy.json", "generator-policy.json"),
            ("ecommerce-transformer-role", "lambda-trust-policy.json", "transformer-policy.json"),
            ("ecommerce-compactor-role", "lambda-trust-policy.json", "compactor-policy.json"),
            ("ecommerce-crawler-role", "glue-trust-policy.json", "crawler-policy.json"),
        ]:
            document = (iam_dir / policy).read_text(encoding="utf-8")
            iam.create_role(
                RoleName=role, AssumeRolePolicyDocument=(iam_dir / trust).read_text(encoding="utf-8")
            )
            iam.put_role_policy(
                RoleName=role, PolicyName=policy.removesuffix("-policy.json"), PolicyDocument=document
            )
            arn = iam.create_policy(PolicyName=f"{role}-managed", PolicyDocument=document)["Policy"]["Arn"]
            assert iam.get_role_policy(RoleName=role, PolicyName=policy.removesuffix("-policy.json"))[
                "PolicyDocument"
            ] == json.loads(document)
            assert arn.endswith(f":policy/{role}-managed")
        s3 = boto3.client("s3", region_name=region)
        s3.create_bucket(Bucket=FILLED["BUCKET"], CreateBucketConfiguration={"LocationConstraint": region})
        s3.put_bucket_policy(
            Bucket=FILLED["BUCKET"], Policy=(iam_dir / "bucket-policy.json").read_text(encoding="utf-8")
        )
        stored = json.loads(s3.get_bucket_policy(Bucket=FILLED["BUCKET"])["Policy"])
        assert {r for st in stored["Statement"] for r in st["Resource"]} == {
            f"arn:aws:s3:::{FILLED['BUCKET']}",
            f"arn:aws:s3:::{FILLED['BUCKET']}/*",
        }


def test_the_filled_alarms_and_dashboard_are_accepted_by_cloudwatch(
    filled: Path, aws_credentials: None
) -> None:
    region = FILLED["REGION"]
    with mock_aws():
        topic = boto3.client("sns", region_name=region).create_topic(Name=f"{CONSOLE_STACK_NAME}-alerts")[
            "TopicArn"
        ]
        cloudwatch = boto3.client("cloudwatch", region_name=region)
        for path in sorted((filled / "infra" / "alarms").glob("*.json")):
            cloudwatch.put_metric_alarm(**json.loads(path.read_text(encoding="utf-8")))
        body = (filled / "infra" / "dashboard.json").read_text(encoding="utf-8")
        cloudwatch.put_dashboard(DashboardName=CONSOLE_STACK_NAME, DashboardBody=body)

        alarms = cloudwatch.describe_alarms()["MetricAlarms"]
        assert len(alarms) == len(ALARM_FILES)
        for alarm in alarms:
            assert alarm["AlarmActions"] == [topic]
            assert alarm["OKActions"] == [topic]
        widgets = json.loads(cloudwatch.get_dashboard(DashboardName=CONSOLE_STACK_NAME)["DashboardBody"])[
            "widgets"
        ]
        assert {w["properties"]["region"] for w in widgets if w["type"] == "metric"} == {region}


def _handlers_on(monkeypatch: pytest.MonkeyPatch, bucket: str) -> dict[str, Any]:
    handlers = {name: load_lambda(name) for name in ("generator", "transformer", "compactor")}
    monkeypatch.setenv("BUCKET_NAME", bucket)
    for handler in handlers.values():
        handler.s3_client.cache_clear()
    return handlers


def test_the_filled_events_drive_the_handlers_and_the_filled_ddl_reads_what_they_wrote(
    filled: Path, tmp_path: Path, aws_credentials: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = FILLED["BUCKET"]
    events = filled / "events"

    def event(name: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((events / name).read_text(encoding="utf-8"))
        return loaded

    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=bucket)
        handlers = _handlers_on(monkeypatch, bucket)
        try:
            # The generator's Test event: the run time is the event's.
            generated = handlers["generator"].lambda_handler(event("scheduled_event.json"), None)
            assert generated["bucket"] == bucket
            assert generated["key"].startswith("raw/year=2026/month=11/day=25/transactions-20261125T140500Z-")
            # The transformer's Test event names the bucket and a key: give that key the generator's file.
            put = event("s3_put_event.json")
            key = unquote_plus(put["Records"][0]["s3"]["object"]["key"])
            assert put["Records"][0]["s3"]["bucket"]["name"] == bucket
            s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": generated["key"]})
            monkeypatch.delenv("BUCKET_NAME")  # the output goes to the event's bucket
            handlers["transformer"].s3_client.cache_clear()
            result = handlers["transformer"].lambda_handler(put, None)
            assert [item["rows_written"] for item in result["processed"]] == [1]
            skipped = handlers["transformer"].lambda_handler(event("s3_test_event.json"), None)
            assert not skipped.get("processed")
            monkeypatch.setenv("BUCKET_NAME", bucket)
            handlers["compactor"].s3_client.cache_clear()
            compacted = handlers["compactor"].lambda_handler(event("compactor_scheduled_event.json"), None)
            assert {d["date"]: d["action"] for d in compacted["days"]}["2026-11-25"] == "compacted"
            copy = tmp_path / "bucket"
            download_bucket(s3, bucket, copy)
        finally:
            for handler in handlers.values():
                handler.s3_client.cache_clear()

    ddl_dir = filled / "sql" / "ddl"
    for path in catalog.ddl_files(ddl_dir):
        catalog.parse_athena(path.read_text(encoding="utf-8"), path.name)  # one statement of Athena SQL
    for table in catalog.table_defs(ddl_dir):
        assert table.location.startswith(f"s3://{bucket}/"), table
    con = catalog.connect(copy, bucket, ddl_dir)
    counts = con.sql(
        "SELECT (SELECT count(*) FROM ecommerce_db.raw_transactions), "
        "(SELECT count(*) FROM ecommerce_db.transactions)"
    ).fetchall()
    assert counts == [(2, 1)]  # the generator's file and its copy under the event's key; one row processed
