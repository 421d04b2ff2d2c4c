"""infra/template.yaml deployed into moto's CloudFormation, then what the stack created is inspected.

The handler code is packaged the way `aws cloudformation package` does it for `make deploy`: each
function's `Code` folder (lambda/generator/, lambda/transformer/, lambda/compactor/) is zipped, uploaded
to an artifacts bucket and `Code` is rewritten to point at it. So the deployed code is the repository's
handler file, byte for byte (its SHA-256 is compared).

moto 5.2.5 creates only some resource types from a template and skips the others with a warning.
MOTO_SKIPS names them; the test fails if the template gains or loses one, so nothing is skipped
silently. Their definitions are checked as data by the other files of tests/infra/ (alarms,
Glue tables, the console files). moto also ignores some properties of types it does create: the bucket's
NotificationConfiguration, PublicAccessBlock and lifecycle rules, and the functions' Layers and
LoggingConfig; the tests check those in the template, and say so where they do.

With moto's IAM enforcement on, the real handlers run under the stack's own roles: the policies are
enough for the pipeline and refuse writes outside each function's prefixes. moto checks actions and
resources but not the Null and StringLike conditions of the compactor's role, so every S3 request the
real compactor makes is recorded and evaluated against its policy's conditions here (`_allowed_by`).
"""

from __future__ import annotations

import ast
import base64
import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.core import disable_iam_authentication, enable_iam_authentication

from tests.conftest import REGION, ROOT, load_event, load_lambda
from tests.infra.cfn import INFRA, load_template, parameter_defaults, resolve

STACK = "ecommerce"
BUCKET = "my-pipeline-bucket"
ARTIFACTS = "my-deploy-artifacts"
ACCOUNT = "123456789012"  # moto's default account

# Resource types of the template that moto 5.2.5's CloudFormation does not create (it logs
# "No Moto CloudFormation support for ..." and goes on without them).
MOTO_SKIPS = {
    "AWS::S3::BucketPolicy",
    "AWS::Lambda::EventInvokeConfig",
    "AWS::Glue::Database",
    "AWS::Glue::Table",
    "AWS::Athena::WorkGroup",
    "AWS::SNS::Subscription",
    "AWS::CloudWatch::Alarm",
}

# moto warns each time it meets one of them; the first test below checks that list instead.
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")


@dataclass
class Stack:
    template: dict[str, Any]
    packaged_code: dict[str, bytes]  # logical id of each function -> the zip uploaded for it
    outputs: dict[str, str]
    resources: dict[str, Any]  # logical id -> its describe_stack_resources entry


def package(template: dict[str, Any], s3: Any, bucket: str) -> dict[str, bytes]:
    """What `aws cloudformation package` does to a function whose Code is a local folder."""
    packaged = {}
    for name, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Lambda::Function":
            continue
        code = resource["Properties"]["Code"]
        assert isinstance(code, str), f"{name}: Code must be a local folder that package uploads"
        folder = (INFRA / code).resolve()
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    archive.write(path, path.relative_to(folder).as_posix())
        key = f"{name}-{hashlib.md5(buffer.getvalue()).hexdigest()}.zip"  # noqa: S324 - package's own naming
        s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
        resource["Properties"]["Code"] = {"S3Bucket": bucket, "S3Key": key}
        packaged[name] = buffer.getvalue()
    return packaged


@pytest.fixture
def stack(aws_credentials: None) -> Iterator[Stack]:
    with mock_aws():
        template = load_template()
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=ARTIFACTS)
        packaged = package(template, s3, ARTIFACTS)
        cloudformation = boto3.client("cloudformation", region_name=REGION)
        cloudformation.create_stack(
            StackName=STACK,
            TemplateBody=json.dumps(template),
            Capabilities=["CAPABILITY_IAM"],
            Parameters=[
                {"ParameterKey": "BucketName", "ParameterValue": BUCKET},
                {"ParameterKey": "AlertEmail", "ParameterValue": "ops@example.com"},
            ],
        )
        (described,) = cloudformation.describe_stacks(StackName=STACK)["Stacks"]
        assert described["StackStatus"] == "CREATE_COMPLETE", described.get("StackStatusReason")
        resources = {
            r["LogicalResourceId"]: r
            for r in cloudformation.describe_stack_resources(StackName=STACK)["StackResources"]
            if "LogicalResourceId" in r  # moto lists skipped resources without one
        }
        yield Stack(
            template=load_template(),
            packaged_code=packaged,
            outputs={o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]},
            resources=resources,
        )


def _function_arn(name: str) -> str:
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"


def test_moto_creates_every_resource_except_the_named_unsupported_types(stack: Stack) -> None:
    resources = stack.template["Resources"]
    expected = {name for name, r in resources.items() if r["Type"] not in MOTO_SKIPS}

    assert set(stack.resources) == expected
    assert {r["ResourceStatus"] for r in stack.resources.values()} == {"CREATE_COMPLETE"}
    # The list names only types the template uses, so it cannot hide a type added later.
    assert {r["Type"] for r in resources.values()} >= MOTO_SKIPS


@dataclass(frozen=True)
class Expected:
    function: str
    memory: int
    timeout: int
    environment: dict[str, str]
    reserved_concurrency: int


@pytest.mark.parametrize(
    ("logical_id", "expected"),
    [
        (
            "GeneratorFunction",
            Expected("generator", 128, 30, {"BUCKET_NAME": BUCKET, "TRANSACTIONS_PER_RUN": "1"}, 1),
        ),
        ("TransformerFunction", Expected("transformer", 512, 120, {"BUCKET_NAME": BUCKET}, 5)),
        (
            "CompactorFunction",
            Expected(
                "compactor",
                1024,
                300,
                {
                    "BUCKET_NAME": BUCKET,
                    "COMPACT_AFTER_HOURS": "2",
                    "COMPACT_LOOKBACK_DAYS": "7",
                    "COMPACT_ROW_GROUP_ROWS": "1000000",
                },
                1,
            ),
        ),
    ],
)
def test_function_runs_the_repositorys_handler_file_with_the_stacks_settings(
    stack: Stack, logical_id: str, expected: Expected
) -> None:
    function = expected.function
    client = boto3.client("lambda", region_name=REGION)
    name = f"{STACK}-{function}"

    config = client.get_function_configuration(FunctionName=name)
    concurrency = client.get_function_concurrency(FunctionName=name)

    assert stack.outputs[f"{logical_id}Name"] == name
    assert config["Handler"] == "lambda_function.lambda_handler"
    assert config["Runtime"] == "python3.12"
    assert (config["MemorySize"], config["Timeout"]) == (expected.memory, expected.timeout)
    assert {k: str(v) for k, v in config["Environment"]["Variables"].items()} == expected.environment
    assert concurrency["ReservedConcurrentExecutions"] == expected.reserved_concurrency
    assert (
        config["Role"].split("/")[-1]
        == stack.resources[logical_id.replace("Function", "Role")]["PhysicalResourceId"]
    )
    # The deployed zip holds the handler file of the repository and nothing else that runs.
    code = stack.packaged_code[logical_id]
    assert config["CodeSha256"] == base64.b64encode(hashlib.sha256(code).digest()).decode()
    with zipfile.ZipFile(io.BytesIO(code)) as archive:
        assert [n for n in archive.namelist() if n.endswith(".py")] == ["lambda_function.py"]
        handler = (ROOT / "lambda" / function / "lambda_function.py").read_bytes()
        assert archive.read("lambda_function.py") == handler


def test_function_properties_moto_ignores_are_set_in_the_template(stack: Stack) -> None:
    # moto drops Layers, LoggingConfig and EphemeralStorage; CloudFormation passes them to Lambda as
    # written here.
    functions = {
        n: stack.template["Resources"][n]["Properties"]
        for n in ("GeneratorFunction", "TransformerFunction", "CompactorFunction")
    }

    for name, properties in functions.items():
        log_group = name.replace("Function", "LogGroup")
        assert properties["LoggingConfig"] == {
            "LogFormat": "JSON",
            "LogGroup": {"Ref": log_group},
            "ApplicationLogLevel": "INFO",
            "SystemLogLevel": "WARN",
        }
    assert "Layers" not in functions["GeneratorFunction"], (
        "the generator needs the standard library and boto3 only"
    )
    assert functions["TransformerFunction"]["Layers"] == [{"Ref": "PandasLayerArn"}]
    # The compactor uses the layer's pyarrow, and stages a day's files in /tmp
    assert functions["CompactorFunction"]["Layers"] == [{"Ref": "PandasLayerArn"}]
    assert functions["CompactorFunction"]["EphemeralStorage"] == {"Size": 1024}


@pytest.mark.parametrize(
    ("function", "expression"), [("generator", "rate(5 minutes)"), ("compactor", "cron(0 3 * * ? *)")]
)
def test_schedule_invokes_its_function_and_only_eventbridge_may(
    stack: Stack, function: str, expression: str
) -> None:
    events = boto3.client("events", region_name=REGION)
    client = boto3.client("lambda", region_name=REGION)
    rule_name = stack.resources[f"{function.capitalize()}Schedule"]["PhysicalResourceId"]

    rule = events.describe_rule(Name=rule_name)
    targets = events.list_targets_by_rule(Rule=rule_name)["Targets"]
    (statement,) = json.loads(client.get_policy(FunctionName=f"{STACK}-{function}")["Policy"])["Statement"]

    assert rule["ScheduleExpression"] == expression
    assert rule["State"] == "ENABLED"
    assert [t["Arn"] for t in targets] == [_function_arn(f"{STACK}-{function}")]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Condition"]["ArnLike"]["AWS:SourceArn"] == rule["Arn"]


def test_s3_may_invoke_the_transformer_only_for_the_pipelines_bucket(stack: Stack) -> None:
    client = boto3.client("lambda", region_name=REGION)

    (statement,) = json.loads(client.get_policy(FunctionName=f"{STACK}-transformer")["Policy"])["Statement"]

    assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
    assert statement["Condition"]["ArnLike"]["AWS:SourceArn"] == f"arn:aws:s3:::{BUCKET}"
    assert statement["Condition"]["StringEquals"]["AWS:SourceAccount"] == ACCOUNT


def test_bucket_is_created_encrypted_and_its_notification_targets_raw_json_only(stack: Stack) -> None:
    s3 = boto3.client("s3", region_name=REGION)

    encryption = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]
    assert encryption["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert stack.outputs["BucketName"] == BUCKET

    # moto creates the bucket without its NotificationConfiguration: the template's is checked as data.
    assert "LambdaFunctionConfigurations" not in s3.get_bucket_notification_configuration(Bucket=BUCKET)
    properties = resolve(
        stack.template["Resources"]["DataBucket"]["Properties"],
        {
            **parameter_defaults(stack.template),
            "BucketName": BUCKET,
            "TransformerFunction.Arn": _function_arn(f"{STACK}-transformer"),
        },
    )
    (notification,) = properties["NotificationConfiguration"]["LambdaConfigurations"]
    assert notification == {
        "Event": "s3:ObjectCreated:*",
        "Function": _function_arn(f"{STACK}-transformer"),
        "Filter": {
            "S3Key": {"Rules": [{"Name": "prefix", "Value": "raw/"}, {"Name": "suffix", "Value": ".json"}]}
        },
    }
    assert properties["PublicAccessBlockConfiguration"] == dict.fromkeys(
        ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"), True
    )
    expiring = {r["Prefix"] for r in properties["LifecycleConfiguration"]["Rules"] if "ExpirationInDays" in r}
    assert expiring == {"raw/", "athena-results/"}


def test_log_groups_queue_topic_and_dashboard_exist_with_their_settings(stack: Stack) -> None:
    logs = boto3.client("logs", region_name=REGION)
    sqs = boto3.client("sqs", region_name=REGION)
    sns = boto3.client("sns", region_name=REGION)
    cloudwatch = boto3.client("cloudwatch", region_name=REGION)

    groups = {
        g["logGroupName"]: g for g in logs.describe_log_groups(logGroupNamePrefix="/aws/lambda/")["logGroups"]
    }
    queue_attributes = sqs.get_queue_attributes(
        QueueUrl=stack.outputs["FailureQueueUrl"], AttributeNames=["All"]
    )
    dashboard = cloudwatch.get_dashboard(DashboardName=STACK)

    assert {name: g["retentionInDays"] for name, g in groups.items()} == {
        f"/aws/lambda/{STACK}-generator": 30,
        f"/aws/lambda/{STACK}-transformer": 30,
        f"/aws/lambda/{STACK}-compactor": 30,
    }
    assert queue_attributes["Attributes"]["MessageRetentionPeriod"] == "1209600"
    assert stack.outputs["AlertTopicArn"] in {t["TopicArn"] for t in sns.list_topics()["Topics"]}
    # moto resolved the dashboard's Fn::Sub itself: for this stack name and region it is the console file.
    with (INFRA / "dashboard.json").open(encoding="utf-8") as f:
        assert json.loads(dashboard["DashboardBody"]) == json.load(f)


def _stack_policy(stack: Stack, logical_id: str) -> dict[str, Any]:
    """The inline policy of a role of the template, resolved for this stack."""
    (policy,) = stack.template["Resources"][logical_id]["Properties"]["Policies"]
    values = {
        "AWS::Partition": "aws",
        "AWS::Region": REGION,
        "AWS::AccountId": ACCOUNT,
        "AWS::StackName": STACK,
        "BucketName": BUCKET,
        "TransformerFailureQueue.Arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{STACK}-transformer-failures",
    }
    document: dict[str, Any] = resolve(policy["PolicyDocument"], values)
    return document


@pytest.fixture
def role_credentials(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, dict[str, str]]]:
    """Credentials of each stack role, from sts:AssumeRole; moto's IAM enforcement on while in use."""
    sts = boto3.client("sts", region_name=REGION)
    iam = boto3.client("iam", region_name=REGION)
    credentials = {}
    for logical_id in ("GeneratorRole", "TransformerRole", "CompactorRole"):
        role = stack.resources[logical_id]["PhysicalResourceId"]
        # moto 5.2.5 stores the inline policies of a role made by CloudFormation as the Python repr of
        # the document, which its own IAM enforcement cannot read (KeyError 'policy_document'). The
        # document is read back, checked against the template, and put again through the IAM API.
        (name,) = iam.list_role_policies(RoleName=role)["PolicyNames"]
        stored = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        document = ast.literal_eval(stored) if isinstance(stored, str) else stored
        assert document == _stack_policy(stack, logical_id)
        iam.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=json.dumps(document))
        arn = iam.get_role(RoleName=role)["Role"]["Arn"]
        c = sts.assume_role(RoleArn=arn, RoleSessionName=logical_id)["Credentials"]
        credentials[logical_id] = {
            "AWS_ACCESS_KEY_ID": c["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": c["SecretAccessKey"],
            "AWS_SESSION_TOKEN": c["SessionToken"],
        }
    with enable_iam_authentication():
        yield credentials


def _act_as(role: dict[str, str], monkeypatch: pytest.MonkeyPatch, *modules: Any) -> Any:
    for name, value in role.items():
        monkeypatch.setenv(name, value)
    # boto3's default session keeps the credentials it resolved first; a new one reads the environment.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    for module in modules:
        module.s3_client.cache_clear()
    return boto3.client(
        "s3",
        region_name=REGION,
        aws_access_key_id=role["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=role["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=role["AWS_SESSION_TOKEN"],
    )


def _s3_event(bucket: str, key: str) -> dict[str, Any]:
    event = load_event("s3_put_event.json")
    record = event["Records"][0]
    record["s3"]["bucket"]["name"] = bucket
    record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
    record["s3"]["object"]["key"] = quote_plus(key, safe="/")  # S3 URL-encodes keys in events
    return event


def _denied(call: Any, **kwargs: Any) -> bool:
    try:
        call(**kwargs)
    except ClientError as e:
        return e.response["Error"]["Code"] == "AccessDenied"
    return False


# The S3 operations the compactor calls, as the IAM actions S3 authorizes them with.
S3_ACTIONS = {
    "ListObjectsV2": "s3:ListBucket",
    "GetObject": "s3:GetObject",
    "PutObject": "s3:PutObject",
    "DeleteObject": "s3:DeleteObject",
}


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def _condition_holds(operator: str, key: str, expected: str | list[str], context: dict[str, str]) -> bool:
    if operator == "Null":  # "false": the key is present in the request
        return (key not in context) == (expected == "true")
    if operator == "StringLike":
        return key in context and any(fnmatchcase(context[key], p) for p in _as_list(expected))
    raise AssertionError(f"the test does not evaluate the condition operator {operator}")


def _allowed_by(document: dict[str, Any], action: str, resource: str, context: dict[str, str]) -> bool:
    """IAM's rule for an Allow-only identity policy: a statement matches action, resource and conditions."""
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow"
        if action not in _as_list(statement["Action"]):
            continue
        if not any(fnmatchcase(resource, pattern) for pattern in _as_list(statement["Resource"])):
            continue
        conditions = statement.get("Condition", {})
        if all(
            _condition_holds(operator, key, value, context)
            for operator, block in conditions.items()
            for key, value in block.items()
        ):
            return True
    return False


def _request_context(operation: str, params: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    """The action, resource and condition keys IAM sees for one S3 API call."""
    bucket = f"arn:aws:s3:::{params['Bucket']}"
    resource = f"{bucket}/{params['Key']}" if "Key" in params else bucket
    keys = {"Prefix": "s3:prefix", "IfMatch": "s3:if-match", "IfNoneMatch": "s3:if-none-match"}
    context = {condition: str(params[name]) for name, condition in keys.items() if name in params}
    return S3_ACTIONS[operation], resource, context


@pytest.mark.integration
def test_handlers_run_under_the_stacks_roles_and_cannot_write_elsewhere(
    stack: Stack, role_credentials: dict[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    generator, transformer = load_lambda("generator"), load_lambda("transformer")
    monkeypatch.setenv("BUCKET_NAME", BUCKET)

    # GIVEN the generator's role: a scheduled run writes under raw/, and nothing else is allowed
    as_generator = _act_as(role_credentials["GeneratorRole"], monkeypatch, generator)
    written = generator.lambda_handler(load_event("scheduled_event.json"), None)
    # (a file with one bad line, as a user might upload it: raw/ is where the generator role may put)
    hand_made = "raw/year=2026/month=11/day=25/uploaded-by-hand.json"
    as_generator.put_object(Bucket=BUCKET, Key=hand_made, Body=b"not json\n")
    assert _denied(as_generator.put_object, Bucket=BUCKET, Key="processed/transactions/x.parquet", Body=b"x")
    assert _denied(as_generator.get_object, Bucket=BUCKET, Key=written["key"])

    # WHEN the transformer's role handles the S3 events of both objects
    as_transformer = _act_as(role_credentials["TransformerRole"], monkeypatch, transformer)
    good = transformer.lambda_handler(_s3_event(BUCKET, written["key"]), None)
    bad = transformer.lambda_handler(_s3_event(BUCKET, hand_made), None)

    # THEN the rows are in processed/, the bad line in quarantine/, and the transformer may neither
    # write raw/ nor delete anything
    assert good["processed"][0]["rows_written"] == written["count"]
    assert bad["processed"][0]["quarantined"] == 1
    assert _denied(
        as_transformer.put_object, Bucket=BUCKET, Key="raw/year=2026/month=11/day=25/x.json", Body=b"{}"
    )
    assert _denied(as_transformer.delete_object, Bucket=BUCKET, Key=written["key"])

    # WHEN the compactor's role runs the daily schedule's event, every S3 request recorded
    compactor = load_lambda("compactor")
    as_compactor = _act_as(role_credentials["CompactorRole"], monkeypatch, compactor)
    requests: list[tuple[str, dict[str, Any]]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        requests.append((model.name, dict(params)))

    compactor.s3_client().meta.events.register("provide-client-params.s3", record)
    event = load_event("compactor_scheduled_event.json")
    compacted = compactor.lambda_handler(event, None)

    # THEN the generated day is one compacted file holding every processed row, its manifest copy is
    # outside the table, and the other days of the window had nothing to do
    day = written["key"].split("/")[1:4]  # year=YYYY, month=MM, day=DD
    by_day = {r["date"]: r for r in compacted["days"]}
    (done,) = [r for r in by_day.values() if r["action"] != "noop"]
    assert done["action"] == "compacted"
    assert done["rows"] == written["count"]
    with disable_iam_authentication():
        admin = boto3.client("s3", region_name=REGION)
        partition = admin.list_objects_v2(Bucket=BUCKET, Prefix="processed/transactions/" + "/".join(day))
        assert [o["Key"] for o in partition["Contents"]] == [done["key"]]
        admin.head_object(Bucket=BUCKET, Key="compaction/transactions/" + "/".join(day) + "/manifest.jsonl")
    # AND every request it made is allowed by its policy, conditions included (moto checks only actions
    # and resources); its writes and deletes in the table are allowed only with their conditional headers
    policy = _stack_policy(stack, "CompactorRole")
    assert {operation for operation, _ in requests} == set(S3_ACTIONS)
    for operation, params in requests:
        action, resource, context = _request_context(operation, params)
        assert _allowed_by(policy, action, resource, context), (operation, params)
        if action in {"s3:PutObject", "s3:DeleteObject"} and "/processed/" in resource:
            assert not _allowed_by(policy, action, resource, {}), f"unconditional {operation} {resource}"
    # AND the schedule's sample event is the stack's rule's
    rule = stack.resources["CompactorSchedule"]["PhysicalResourceId"]
    assert event["resources"] == [f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{rule}"]
    # AND it may not touch raw/ or quarantine/, nor write a file that looks like the transformer's
    source_like = "processed/transactions/" + "/".join(day) + "/transactions-x.parquet"
    assert _denied(as_compactor.get_object, Bucket=BUCKET, Key=written["key"])
    assert _denied(as_compactor.delete_object, Bucket=BUCKET, Key=written["key"], IfMatch="*")
    assert _denied(as_compactor.put_object, Bucket=BUCKET, Key=source_like, Body=b"x", IfNoneMatch="*")
    assert _denied(
        as_compactor.put_object, Bucket=BUCKET, Key="quarantine/x.jsonl", Body=b"x", IfNoneMatch="*"
    )
    assert not _allowed_by(policy, "s3:ListBucket", f"arn:aws:s3:::{BUCKET}", {"s3:prefix": "raw/"})

    # AND of everything in the bucket, only the raw files match the S3 trigger: no recursion
    (notification,) = stack.template["Resources"]["DataBucket"]["Properties"]["NotificationConfiguration"][
        "LambdaConfigurations"
    ]
    rules = {r["Name"]: r["Value"] for r in notification["Filter"]["S3Key"]["Rules"]}
    with disable_iam_authentication():
        keys = [
            o["Key"]
            for o in boto3.client("s3", region_name=REGION).list_objects_v2(Bucket=BUCKET)["Contents"]
        ]
    prefixes = {k.split("/")[0] for k in keys}
    assert prefixes == {"raw", "processed", "quarantine", "compaction", "state"}
    for key in keys:
        assert (key.startswith(rules["prefix"]) and key.endswith(rules["suffix"])) == key.startswith(
            "raw/"
        ), key
    for module in (generator, transformer, compactor):
        module.s3_client.cache_clear()


def test_packaging_uses_the_handler_folders_and_nothing_is_inlined() -> None:
    template = load_template()
    functions = {
        n: r["Properties"] for n, r in template["Resources"].items() if r["Type"] == "AWS::Lambda::Function"
    }

    assert {n: p["Code"] for n, p in functions.items()} == {
        "GeneratorFunction": "../lambda/generator/",
        "TransformerFunction": "../lambda/transformer/",
        "CompactorFunction": "../lambda/compactor/",
    }
    assert "ZipFile" not in (INFRA / "template.yaml").read_text(encoding="utf-8")
    for code in ("../lambda/generator/", "../lambda/transformer/", "../lambda/compactor/"):
        assert Path(INFRA / code / "lambda_function.py").is_file()


def test_resources_moto_skips_are_as_the_issue_asks(stack: Stack) -> None:
    # Alarms and Glue tables have their own test files; the rest of MOTO_SKIPS is checked here as data.
    values = {
        **parameter_defaults(stack.template),
        "AWS::Partition": "aws",
        "AWS::StackName": STACK,
        "BucketName": BUCKET,
        "DataBucket": BUCKET,
        "AlertEmail": "ops@example.com",
        "AlertTopic": stack.outputs["AlertTopicArn"],
        "TransformerFunction": f"{STACK}-transformer",
        "TransformerFailureQueue.Arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{STACK}-transformer-failures",
    }
    resources = stack.template["Resources"]

    def properties(name: str) -> dict[str, Any]:
        resolved: dict[str, Any] = resolve(resources[name]["Properties"], values)
        return resolved

    # TLS only: every request without aws:SecureTransport is denied, on the bucket and its objects
    (statement,) = properties("DataBucketPolicy")["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny"
    assert statement["Principal"] == "*"
    assert statement["Action"] == "s3:*"
    assert set(statement["Resource"]) == {f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"}
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}

    # Asynchronous invocation of the transformer: two retries, an hour at most, then the queue
    assert properties("TransformerInvokeConfig") == {
        "FunctionName": f"{STACK}-transformer",
        "Qualifier": "$LATEST",
        "MaximumRetryAttempts": 2,
        "MaximumEventAgeInSeconds": 3600,
        "DestinationConfig": {"OnFailure": {"Destination": values["TransformerFailureQueue.Arn"]}},
    }

    # Athena: results under athena-results/, encrypted, the workgroup's settings enforced, scans capped
    workgroup = properties("AthenaWorkGroup")["WorkGroupConfiguration"]
    assert workgroup["ResultConfiguration"] == {
        "OutputLocation": f"s3://{BUCKET}/athena-results/",
        "EncryptionConfiguration": {"EncryptionOption": "SSE_S3"},
    }
    assert workgroup["EnforceWorkGroupConfiguration"] is True
    assert workgroup["BytesScannedCutoffPerQuery"] == 1024**3

    # Alerts go to the address given at deploy time
    assert properties("AlertSubscription") == {
        "TopicArn": stack.outputs["AlertTopicArn"],
        "Protocol": "email",
        "Endpoint": "ops@example.com",
    }
