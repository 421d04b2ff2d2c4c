"""The stack's alarms fire on a raised error, a stalled pipeline and a high quarantine rate, and stay OK
on a healthy run; the dashboard and alarms use the metrics the handlers really emit.

moto stores metrics and alarms but never evaluates an alarm, so `evaluate()` below applies CloudWatch's
documented rule for these single-period alarms (one evaluation period, one datapoint to alarm) to the
datapoints moto's get_metric_statistics returns for the alarm's own metric, statistic and period. The
datapoints come from the real handlers: their Embedded Metric Format lines (stdout) are turned into
metrics the way CloudWatch Logs does, and a handler that raises counts as one Lambda error, the way
the Lambda service counts it. What only AWS can show: that CloudWatch extracts the EMF lines from the
log group, that Lambda publishes Errors, and that the SNS e-mail arrives.
"""

from __future__ import annotations

import io
import json
import operator
from collections.abc import Callable, Iterator
from contextlib import redirect_stdout
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote_plus

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.conftest import BUCKET, REGION, load_event, load_lambda
from tests.infra.cfn import (
    CONSOLE_STACK_NAME,
    INFRA,
    console_values,
    load_template,
    resolve,
    resources_of_type,
)

TEMPLATE = load_template()
ALARMS = {
    name: resolve(r["Properties"], console_values(TEMPLATE))
    for name, r in resources_of_type(TEMPLATE, "AWS::CloudWatch::Alarm").items()
}
COMPARE: dict[str, Callable[[float, float], bool]] = {
    "GreaterThanOrEqualToThreshold": operator.ge,
    "GreaterThanThreshold": operator.gt,
    "LessThanThreshold": operator.lt,
    "LessThanOrEqualToThreshold": operator.le,
}
# The quarantine-rate alarm's metric math, evaluated here by the Python below.
QUARANTINE_RATE_EXPRESSION = "IF(readrecords > 0, 100 * quarantined / readrecords, 0)"


def evaluate(alarm: dict[str, Any], value: float | None) -> str:
    """CloudWatch's state for a one-period alarm given its period's statistic (None: no datapoint)."""
    assert alarm["EvaluationPeriods"] == 1
    assert alarm.get("DatapointsToAlarm", 1) == 1
    if value is None:
        missing = alarm.get("TreatMissingData", "missing")
        return {"breaching": "ALARM", "notBreaching": "OK"}.get(missing, "INSUFFICIENT_DATA")
    return "ALARM" if COMPARE[alarm["ComparisonOperator"]](value, float(alarm["Threshold"])) else "OK"


def emf_to_metric_data(line: str) -> tuple[str, list[dict[str, Any]]]:
    """What CloudWatch Logs extracts from one Embedded Metric Format line: namespace and datapoints."""
    document = json.loads(line)
    (directive,) = document["_aws"]["CloudWatchMetrics"]
    timestamp = datetime.fromtimestamp(document["_aws"]["Timestamp"] / 1000, tz=UTC)
    data = []
    for dimension_set in directive["Dimensions"]:
        for metric in directive["Metrics"]:
            data.append(
                {
                    "MetricName": metric["Name"],
                    "Dimensions": [{"Name": d, "Value": str(document[d])} for d in dimension_set],
                    "Timestamp": timestamp,
                    "Value": float(document[metric["Name"]]),
                    "Unit": metric.get("Unit", "None"),
                }
            )
    return directive["Namespace"], data


def publish_emf(cloudwatch: Any, stdout: str) -> set[tuple[str, str]]:
    """Put every EMF line of a handler's stdout into CloudWatch; the (namespace, metric) pairs seen."""
    seen = set()
    for line in stdout.splitlines():
        if '"_aws"' not in line:
            continue
        namespace, data = emf_to_metric_data(line)
        cloudwatch.put_metric_data(Namespace=namespace, MetricData=data)
        seen |= {(namespace, d["MetricName"]) for d in data}
    return seen


def period_statistic(
    cloudwatch: Any,
    *,
    namespace: str,
    metric: str,
    statistic: str,
    period: int,
    end: datetime,
    dimensions: list[dict[str, str]] | None = None,
) -> float | None:
    """The statistic of the period that ends at `end`, as CloudWatch computes it for the alarm."""
    response = cloudwatch.get_metric_statistics(
        Namespace=namespace,
        MetricName=metric,
        Dimensions=dimensions or [],
        StartTime=end - timedelta(seconds=period),
        EndTime=end,
        Period=period,
        Statistics=[statistic],
    )
    points = response["Datapoints"]
    assert len(points) <= 1
    return float(points[0][statistic]) if points else None


def alarm_value(cloudwatch: Any, alarm: dict[str, Any], end: datetime) -> float | None:
    return period_statistic(
        cloudwatch,
        namespace=alarm["Namespace"],
        metric=alarm["MetricName"],
        statistic=alarm["Statistic"],
        period=alarm["Period"],
        end=end,
        dimensions=alarm.get("Dimensions"),
    )


def quarantine_rate(cloudwatch: Any, alarm: dict[str, Any], end: datetime) -> float | None:
    (expression,) = [m for m in alarm["Metrics"] if m.get("ReturnData")]
    assert expression["Expression"] == QUARANTINE_RATE_EXPRESSION
    stats = {
        m["Id"]: period_statistic(
            cloudwatch,
            namespace=m["MetricStat"]["Metric"]["Namespace"],
            metric=m["MetricStat"]["Metric"]["MetricName"],
            statistic=m["MetricStat"]["Stat"],
            period=m["MetricStat"]["Period"],
            end=end,
        )
        for m in alarm["Metrics"]
        if "MetricStat" in m
    }
    if stats["readrecords"] is None or stats["quarantined"] is None:
        return None  # metric math over missing data gives no datapoint
    return 100 * stats["quarantined"] / stats["readrecords"] if stats["readrecords"] > 0 else 0.0


def _s3_event(key: str) -> dict[str, Any]:
    event = load_event("s3_put_event.json")
    event["Records"][0]["s3"]["bucket"]["name"] = BUCKET
    event["Records"][0]["s3"]["object"]["key"] = quote_plus(key, safe="/")
    return event


@pytest.fixture
def handlers(s3: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    """The real generator and transformer against moto's S3 (the `s3` fixture's mock is active)."""
    monkeypatch.setenv("BUCKET_NAME", BUCKET)
    generator, transformer = load_lambda("generator"), load_lambda("transformer")
    for module in (generator, transformer):
        module.s3_client.cache_clear()
    yield generator, transformer
    for module in (generator, transformer):
        module.s3_client.cache_clear()


@pytest.fixture
def compactor(s3: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The real compactor against moto's S3 (the `s3` fixture's mock is active)."""
    monkeypatch.setenv("BUCKET_NAME", BUCKET)
    module = load_lambda("compactor")
    module.s3_client.cache_clear()
    yield module
    module.s3_client.cache_clear()


def run(handler: Callable[[dict[str, Any], Any], Any], event: dict[str, Any]) -> tuple[Any, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        result = handler(event, None)
    return result, out.getvalue()


def test_every_alarm_mails_the_alert_topic_on_alarm_and_on_recovery() -> None:
    topic = console_values(TEMPLATE)["AlertTopic"]
    for alarm in ALARMS.values():
        assert alarm["AlarmActions"] == [topic]
        assert alarm["OKActions"] == [topic]


@pytest.mark.parametrize("function", ["generator", "transformer", "compactor"])
def test_a_raised_error_fires_the_functions_errors_alarm(
    handlers: tuple[Any, Any], compactor: Any, s3: Any, function: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    generator, transformer = handlers
    cloudwatch = boto3.client("cloudwatch", region_name=REGION)
    alarm = ALARMS[f"{function.capitalize()}ErrorsAlarm"]
    now = datetime.now(UTC).replace(microsecond=0)

    # GIVEN a healthy period: no error datapoint, so the alarm is OK
    assert evaluate(alarm, alarm_value(cloudwatch, alarm, now)) == "OK"

    # WHEN the handler fails (its bucket is gone) it raises, as the contract requires
    s3.delete_bucket(Bucket=BUCKET)
    handler, event = {
        "generator": (generator.lambda_handler, load_event("scheduled_event.json")),
        "transformer": (transformer.lambda_handler, _s3_event("raw/x/t.json")),
        "compactor": (compactor.lambda_handler, load_event("compactor_scheduled_event.json")),
    }[function]
    with pytest.raises((ClientError, transformer.TransformerError, compactor.CompactionError)):
        handler(event, None)
    # ... and the Lambda service counts a raised invocation as one error of the function
    (dimension,) = alarm["Dimensions"]
    cloudwatch.put_metric_data(
        Namespace="AWS/Lambda",
        MetricData=[{"MetricName": "Errors", "Dimensions": [dimension], "Value": 1.0, "Timestamp": now}],
    )

    # THEN the alarm's own metric, statistic and period put it in ALARM
    assert dimension == {"Name": "FunctionName", "Value": f"{CONSOLE_STACK_NAME}-{function}"}
    assert evaluate(alarm, alarm_value(cloudwatch, alarm, now + timedelta(seconds=1))) == "ALARM"


def test_a_healthy_run_keeps_every_alarm_ok_and_a_stalled_pipeline_fires(handlers: tuple[Any, Any]) -> None:
    generator, transformer = handlers
    cloudwatch = boto3.client("cloudwatch", region_name=REGION)
    stalled = ALARMS["StalledPipelineAlarm"]

    # GIVEN one scheduled run and the transformation of its file, metrics from their EMF lines
    written, generator_out = run(generator.lambda_handler, load_event("scheduled_event.json"))
    _, transformer_out = run(transformer.lambda_handler, _s3_event(written["key"]))
    publish_emf(cloudwatch, generator_out)
    publish_emf(cloudwatch, transformer_out)
    end = datetime.now(UTC) + timedelta(seconds=1)

    # THEN within the stall period records were written: OK, and no record was quarantined: OK
    assert evaluate(stalled, alarm_value(cloudwatch, stalled, end)) == "OK"
    rate_alarm = ALARMS["QuarantineRateAlarm"]
    assert evaluate(rate_alarm, quarantine_rate(cloudwatch, rate_alarm, end)) == "OK"

    # WHEN nothing more is written for a whole stall period (schedule stopped, trigger broken, or the
    # transformer failing: all stop RecordsWritten), THEN the missing data breaches
    later = end + timedelta(seconds=stalled["Period"] + 60)
    assert alarm_value(cloudwatch, stalled, later) is None
    assert evaluate(stalled, alarm_value(cloudwatch, stalled, later)) == "ALARM"


def test_all_records_quarantined_fires_the_stall_and_quarantine_rate_alarms(
    handlers: tuple[Any, Any], s3: Any
) -> None:
    _, transformer = handlers
    cloudwatch = boto3.client("cloudwatch", region_name=REGION)
    key = "raw/year=2026/month=11/day=25/uploaded-by-hand.json"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b'not json\n{"transaction_id": "x"}\n')

    _, out = run(transformer.lambda_handler, _s3_event(key))
    publish_emf(cloudwatch, out)
    end = datetime.now(UTC) + timedelta(seconds=1)

    stalled, rate_alarm = ALARMS["StalledPipelineAlarm"], ALARMS["QuarantineRateAlarm"]
    # RecordsWritten is there but 0: no new processed data is a stall even though files arrive
    assert alarm_value(cloudwatch, stalled, end) == 0
    assert evaluate(stalled, alarm_value(cloudwatch, stalled, end)) == "ALARM"
    assert quarantine_rate(cloudwatch, rate_alarm, end) == 100
    assert evaluate(rate_alarm, quarantine_rate(cloudwatch, rate_alarm, end)) == "ALARM"


def test_no_failed_event_keeps_the_failed_events_alarm_ok_and_one_fires_it() -> None:
    alarm = ALARMS["FailedEventsAlarm"]

    assert alarm["Namespace"] == "AWS/SQS"
    assert alarm["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert evaluate(alarm, None) == "OK"
    assert evaluate(alarm, 0) == "OK"
    assert evaluate(alarm, 1) == "ALARM"


def test_dashboard_and_alarms_use_only_metrics_the_handlers_emit(
    handlers: tuple[Any, Any], compactor: Any
) -> None:
    generator, transformer = handlers
    cloudwatch = boto3.client("cloudwatch", region_name=REGION)
    written, generator_out = run(generator.lambda_handler, load_event("scheduled_event.json"))
    _, transformer_out = run(transformer.lambda_handler, _s3_event(written["key"]))
    # The next night's run compacts the generated day
    compacted, compactor_out = run(compactor.lambda_handler, load_event("compactor_scheduled_event.json"))
    assert "compacted" in {day["action"] for day in compacted["days"]}

    emitted = set()
    for out in (generator_out, transformer_out, compactor_out):
        emitted |= publish_emf(cloudwatch, out)

    with (INFRA / "dashboard.json").open(encoding="utf-8") as f:
        dashboard = json.load(f)
    used = {
        (m[0], m[1])
        for widget in dashboard["widgets"]
        if widget["type"] == "metric"
        for m in widget["properties"]["metrics"]
        if isinstance(m[0], str) and m[0] == "EcommercePipeline"
    }
    for alarm in ALARMS.values():
        if alarm.get("Namespace") == "EcommercePipeline":
            used.add((alarm["Namespace"], alarm["MetricName"]))
        for m in alarm.get("Metrics", []):
            if "MetricStat" in m:
                used.add((m["MetricStat"]["Metric"]["Namespace"], m["MetricStat"]["Metric"]["MetricName"]))

    assert used == emitted
    assert {name for _, name in emitted} == {
        "RecordsGenerated",
        "RecordsRead",
        "RecordsWritten",
        "RecordsQuarantined",
        "RawBytes",
        "FilesProcessed",
        "PartitionsCompacted",
        "FilesCompacted",
        "RowsCompacted",
        "SourcesDeleted",
    }
