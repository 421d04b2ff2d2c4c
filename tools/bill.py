"""A month's usage priced with tools/prices.py, with or without the always-free allowances."""

from __future__ import annotations

from dataclasses import dataclass

from tools import prices as p


@dataclass(frozen=True)
class Usage:
    """One month of the pipeline's billable usage (quantities in the prices' units)."""

    s3_tier1_requests: float = 0.0  # PUT, COPY, POST, LIST
    s3_tier2_requests: float = 0.0  # GET, HEAD and all other
    s3_delete_requests: float = 0.0
    s3_gb_months: float = 0.0
    lambda_requests: float = 0.0
    lambda_gb_seconds: float = 0.0
    lambda_ephemeral_gb_seconds: float = 0.0  # the part of ephemeral storage above 512 MB
    lambda_architecture: str = "x86_64"
    cw_metric_months: float = 0.0
    cw_alarm_metrics: float = 0.0
    cw_dashboards: float = 0.0
    logs_ingested_gb: float = 0.0
    logs_stored_gb_months: float = 0.0
    athena_billed_bytes: float = 0.0  # already rounded per query (tools.athena_scan.billed_bytes)
    sqs_requests: float = 0.0
    sns_emails: float = 0.0
    eventbridge_events: float = 0.0
    glue_objects: float = 0.0
    glue_requests: float = 0.0


@dataclass(frozen=True)
class Line:
    service: str
    item: str
    quantity: float
    unit: str
    usd: float


def _billable(quantity: float, allowance: p.Allowance | None) -> float:
    return max(0.0, quantity - allowance.quantity) if allowance is not None else quantity


def lambda_duration_price(architecture: str) -> p.Price:
    if architecture == "x86_64":
        return p.LAMBDA_DURATION_X86
    if architecture == "arm64":
        return p.LAMBDA_DURATION_ARM
    raise ValueError(f"unknown Lambda architecture {architecture!r}: expected x86_64 or arm64")


def price(usage: Usage, free_tier: bool) -> list[Line]:
    """The month's bill, line by line; `free_tier` subtracts the always-free allowances first.

    Glue's first million catalog objects and requests are free for every account, so they are
    subtracted either way (they are the price, not a free tier). S3 has no always-free allowance.
    """

    def free(allowance: p.Allowance) -> p.Allowance | None:
        return allowance if free_tier else None

    logs_free = p.FREE_CW_LOGS.quantity if free_tier else 0.0
    logs_ingested = max(0.0, usage.logs_ingested_gb - logs_free)
    logs_stored = max(0.0, usage.logs_stored_gb_months - max(0.0, logs_free - usage.logs_ingested_gb))
    duration = lambda_duration_price(usage.lambda_architecture)
    return [
        Line("S3", "PUT, COPY, POST, LIST requests", usage.s3_tier1_requests, "requests",
             p.S3_TIER1_REQUESTS.of(usage.s3_tier1_requests)),
        Line("S3", "GET, HEAD and other requests", usage.s3_tier2_requests, "requests",
             p.S3_TIER2_REQUESTS.of(usage.s3_tier2_requests)),
        Line("S3", "DELETE requests (free)", usage.s3_delete_requests, "requests",
             p.S3_DELETE_REQUESTS.of(usage.s3_delete_requests)),
        Line("S3", "Standard storage", usage.s3_gb_months, "GB-months", p.S3_STORAGE.of(usage.s3_gb_months)),
        Line("Lambda", "requests", usage.lambda_requests, "requests",
             p.LAMBDA_REQUESTS.of(_billable(usage.lambda_requests, free(p.FREE_LAMBDA_REQUESTS)))),
        Line("Lambda", f"duration ({usage.lambda_architecture})", usage.lambda_gb_seconds, "GB-s",
             duration.of(_billable(usage.lambda_gb_seconds, free(p.FREE_LAMBDA_GB_SECONDS)))),
        Line("Lambda", "ephemeral storage over 512 MB", usage.lambda_ephemeral_gb_seconds, "GB-s",
             p.LAMBDA_EPHEMERAL.of(usage.lambda_ephemeral_gb_seconds)),
        Line("CloudWatch", "custom metrics", usage.cw_metric_months, "metric-months",
             p.CW_CUSTOM_METRICS.of(_billable(usage.cw_metric_months, free(p.FREE_CW_METRICS)))),
        Line("CloudWatch", "alarms", usage.cw_alarm_metrics, "alarm metrics",
             p.CW_ALARM_METRICS.of(_billable(usage.cw_alarm_metrics, free(p.FREE_CW_ALARM_METRICS)))),
        Line("CloudWatch", "dashboard", usage.cw_dashboards, "dashboards",
             p.CW_DASHBOARDS.of(_billable(usage.cw_dashboards, free(p.FREE_CW_DASHBOARDS)))),
        Line("CloudWatch", "logs ingested", usage.logs_ingested_gb, "GB",
             p.CW_LOGS_INGESTION.of(logs_ingested)),
        Line("CloudWatch", "logs stored", usage.logs_stored_gb_months, "GB-months",
             p.CW_LOGS_STORAGE.of(logs_stored)),
        Line("Athena", "data scanned", usage.athena_billed_bytes / p.TB, "TB",
             p.ATHENA_SCANNED.of(usage.athena_billed_bytes / p.TB)),
        Line("SQS", "requests", usage.sqs_requests, "requests",
             p.SQS_REQUESTS.of(_billable(usage.sqs_requests, free(p.FREE_SQS_REQUESTS)))),
        Line("SNS", "email notifications", usage.sns_emails, "emails",
             p.SNS_EMAIL.of(_billable(usage.sns_emails, free(p.FREE_SNS_EMAIL)))),
        Line("EventBridge", "scheduled events (free)", usage.eventbridge_events, "events",
             p.EVENTBRIDGE_SCHEDULED.of(usage.eventbridge_events)),
        Line("Glue", "catalog objects and requests", usage.glue_objects + usage.glue_requests, "count",
             p.GLUE_CATALOG_OBJECTS.of(_billable(usage.glue_objects, p.FREE_GLUE_OBJECTS))
             + p.GLUE_CATALOG_REQUESTS.of(_billable(usage.glue_requests, p.FREE_GLUE_REQUESTS))),
    ]  # fmt: skip


def total(lines: list[Line]) -> float:
    return sum(line.usd for line in lines)


def s3_first_year_saving(usage: Usage) -> float:
    """What S3's 12-month offer (accounts created before 2025-07-15, first year only) takes off the bill."""
    return (
        p.S3_TIER1_REQUESTS.of(min(usage.s3_tier1_requests, p.S3_FIRST_YEAR_TIER1.quantity))
        + p.S3_TIER2_REQUESTS.of(min(usage.s3_tier2_requests, p.S3_FIRST_YEAR_TIER2.quantity))
        + p.S3_STORAGE.of(min(usage.s3_gb_months, p.S3_FIRST_YEAR_STORAGE_GB.quantity))
    )
