"""The console path's files say what the stack does: same IAM grants, alarms and dashboard.

Each file under infra/iam/, infra/alarms/ and infra/dashboard.json is compared, as data, with the
template's resource resolved for a stack called `ecommerce` (the console path's names) with
the placeholders BUCKET_NAME, REGION and ACCOUNT_ID. The IAM documents are also held to least
privilege: no wildcard action or resource, writes only under the prefixes the issue allows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tests.conftest import REGION
from tests.infra.cfn import (
    CONSOLE_BUCKET_PLACEHOLDER,
    CONSOLE_STACK_NAME,
    INFRA,
    console_values,
    load_template,
    resolve,
    resources_of_type,
)

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
        ("s3:PutObject", f"{BUCKET_ARN}/state/compaction/dirty/*"),
    }
    sqs = {(a, r) for a, r, _ in grants if a.startswith("sqs:")}
    assert sqs == {("sqs:SendMessage", VALUES["TransformerFailureQueue.Arn"])}


def test_compactor_rewrites_only_processed_transactions_and_only_with_conditional_requests() -> None:
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
        "arn:aws:glue:REGION:ACCOUNT_ID:catalog",
        "arn:aws:glue:REGION:ACCOUNT_ID:database/ecommerce_db",
        "arn:aws:glue:REGION:ACCOUNT_ID:table/ecommerce_db/*",
    }
    assert not {a for a, _, _ in grants if a.startswith("glue:Delete")}


@pytest.mark.parametrize("role", sorted(ROLE_POLICY_FILES))
def test_each_function_writes_only_its_own_log_group(role: str) -> None:
    function = role.removesuffix("Role").lower()
    group = f"arn:aws:logs:REGION:ACCOUNT_ID:log-group:/aws/lambda/{CONSOLE_STACK_NAME}-{function}"

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
    # The console file is for us-east-1, the region of the default layer; README says what to change.
    values = {**VALUES, "AWS::Region": "us-east-1"}
    stack_body = json.loads(resolve(dashboard["Properties"]["DashboardBody"], values))

    assert _json(INFRA / "dashboard.json") == stack_body


def test_dashboard_metric_widgets_name_a_region_and_only_metrics_the_pipeline_has() -> None:
    body = _json(INFRA / "dashboard.json")
    functions = {f"{CONSOLE_STACK_NAME}-{name}" for name in ("generator", "transformer", "compactor")}
    queue = VALUES["TransformerFailureQueue.QueueName"]

    metric_widgets = [w for w in body["widgets"] if w["type"] == "metric"]
    assert metric_widgets
    for widget in metric_widgets:
        assert widget["properties"]["region"] == "us-east-1"
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


def fill(path: Path, bucket: str, account: str, region: str) -> str:
    """A console file with its placeholders replaced, as README's `fill` shell function does it."""
    text = path.read_text(encoding="utf-8")
    return text.replace("BUCKET_NAME", bucket).replace("ACCOUNT_ID", account).replace("REGION", region)


def test_console_files_are_accepted_by_the_aws_apis_readme_pastes_them_into(aws_credentials: None) -> None:
    bucket, account, region = "my-pipeline-bucket", "123456789012", REGION
    iam_dir = INFRA / "iam"
    with mock_aws():
        iam = boto3.client("iam", region_name=region)
        for role, trust, policy in [
            ("ecommerce-generator-role", "lambda-trust-policy.json", "generator-policy.json"),
            ("ecommerce-transformer-role", "lambda-trust-policy.json", "transformer-policy.json"),
            ("ecommerce-compactor-role", "lambda-trust-policy.json", "compactor-policy.json"),
            ("ecommerce-crawler-role", "glue-trust-policy.json", "crawler-policy.json"),
        ]:
            iam.create_role(
                RoleName=role, AssumeRolePolicyDocument=(iam_dir / trust).read_text(encoding="utf-8")
            )
            document = fill(iam_dir / policy, bucket, account, region)
            iam.put_role_policy(
                RoleName=role, PolicyName=policy.removesuffix("-policy.json"), PolicyDocument=document
            )
            assert "BUCKET_NAME" not in document
            assert "ACCOUNT_ID" not in document
            assert "REGION" not in document
        s3 = boto3.client("s3", region_name=region)
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_policy(
            Bucket=bucket, Policy=fill(iam_dir / "bucket-policy.json", bucket, account, region)
        )

        topic = boto3.client("sns", region_name=region).create_topic(Name=f"{CONSOLE_STACK_NAME}-alerts")[
            "TopicArn"
        ]
        cloudwatch = boto3.client("cloudwatch", region_name=region)
        for path in ALARM_FILES.values():
            cloudwatch.put_metric_alarm(**json.loads(fill(path, bucket, account, region)))
        dashboard_body = (INFRA / "dashboard.json").read_text(encoding="utf-8").replace("us-east-1", region)
        cloudwatch.put_dashboard(DashboardName=CONSOLE_STACK_NAME, DashboardBody=dashboard_body)

        alarms = cloudwatch.describe_alarms()["MetricAlarms"]
        assert len(alarms) == len(ALARM_FILES)
        for alarm in alarms:
            assert alarm["AlarmActions"] == [topic]
        assert json.loads(cloudwatch.get_dashboard(DashboardName=CONSOLE_STACK_NAME)["DashboardBody"])[
            "widgets"
        ]
