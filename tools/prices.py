"""AWS public on-demand prices for us-east-1 that `make cost` uses: each with its unit, date and source.

The one place prices live. Every price was read on TAKEN from the AWS pricing page named in its
`source` (the pages render their tables in the browser; the figures were checked against the stored
copies the team can search, and against third-party summaries of the same pages dated 2026). When AWS
changes a price, change it here, update TAKEN, and rerun `make cost`.

Units: AWS bills storage and memory in binary units (1 GB = 2**30 bytes, a 512 MB function is 0.5 GB),
and Athena rounds each query up to a whole MB (2**20 bytes) with a 10 MB minimum; `GB`, `MB` and `TB`
below follow that reading.
"""

from __future__ import annotations

from dataclasses import dataclass

TAKEN = "2026-12-01"
REGION = "us-east-1"

MB = 2**20
GB = 2**30
TB = 2**40

S3_PAGE = "https://aws.amazon.com/s3/pricing/"
LAMBDA_PAGE = "https://aws.amazon.com/lambda/pricing/"
CLOUDWATCH_PAGE = "https://aws.amazon.com/cloudwatch/pricing/"
ATHENA_PAGE = "https://aws.amazon.com/athena/pricing/"
SQS_PAGE = "https://aws.amazon.com/sqs/pricing/"
SNS_PAGE = "https://aws.amazon.com/sns/pricing/"
EVENTBRIDGE_PAGE = "https://aws.amazon.com/eventbridge/pricing/"
GLUE_PAGE = "https://aws.amazon.com/glue/pricing/"
FREE_TIER_PAGE = "https://aws.amazon.com/free/"


@dataclass(frozen=True)
class Price:
    """`usd` for each `per` units of `unit`, e.g. Price(0.005, 1000, "request", ...)."""

    usd: float
    per: float
    unit: str
    source: str
    note: str = ""
    taken: str = TAKEN

    def of(self, quantity: float) -> float:
        """The charge for `quantity` units."""
        return self.usd * quantity / self.per


@dataclass(frozen=True)
class Allowance:
    """A monthly free-tier quantity of `unit`, subtracted before pricing."""

    quantity: float
    unit: str
    source: str
    note: str = ""
    taken: str = TAKEN


# --- S3 Standard ------------------------------------------------------------------------------------
S3_STORAGE = Price(0.023, 1, "GB-month", S3_PAGE, "S3 Standard, first 50 TB a month")
S3_TIER1_REQUESTS = Price(0.005, 1000, "request", S3_PAGE, "PUT, COPY, POST, LIST requests")
S3_TIER2_REQUESTS = Price(0.0004, 1000, "request", S3_PAGE, "GET, SELECT and all other requests (HEAD too)")
S3_DELETE_REQUESTS = Price(0.0, 1000, "request", S3_PAGE, "DELETE and CANCEL requests are free")

# --- Lambda (the stack's functions are x86_64: infra/template.yaml, Architectures) -------------------
LAMBDA_REQUESTS = Price(0.20, 1_000_000, "request", LAMBDA_PAGE)
LAMBDA_DURATION_X86 = Price(0.0000166667, 1, "GB-second", LAMBDA_PAGE, "x86_64, first 6 billion GB-s")
LAMBDA_DURATION_ARM = Price(0.0000133334, 1, "GB-second", LAMBDA_PAGE, "arm64, first 7.5 billion GB-s")
LAMBDA_EPHEMERAL = Price(0.0000000309, 1, "GB-second", LAMBDA_PAGE, "ephemeral storage above the free 512 MB")
# Since 2025-08-01 the INIT phase of on-demand functions on managed runtimes is billed like the handler.
LAMBDA_INIT_BILLED_SINCE = "2025-08-01"

# --- CloudWatch ------------------------------------------------------------------------------------
CW_CUSTOM_METRICS = Price(
    0.30, 1, "metric-month", CLOUDWATCH_PAGE, "first 10,000; prorated by the hour a metric is sent in"
)
CW_ALARM_METRICS = Price(
    0.10, 1, "alarm-metric-month", CLOUDWATCH_PAGE, "standard resolution; each metric of a math alarm counts"
)
CW_DASHBOARDS = Price(3.00, 1, "dashboard-month", CLOUDWATCH_PAGE)
CW_LOGS_INGESTION = Price(0.50, 1, "GB", CLOUDWATCH_PAGE, "Standard log class (Lambda logs: first 10 TB)")
CW_LOGS_STORAGE = Price(0.03, 1, "GB-month", CLOUDWATCH_PAGE, "archived (compressed) log data")

# --- Athena ----------------------------------------------------------------------------------------
ATHENA_SCANNED = Price(5.00, 1, "TB scanned", ATHENA_PAGE, "SQL queries; DDL and failed queries are free")
ATHENA_MINIMUM_BYTES = 10 * MB  # each query is billed at least 10 MB, rounded up to a whole MB

# --- Others the stack creates ------------------------------------------------------------------------
SQS_REQUESTS = Price(0.40, 1_000_000, "request", SQS_PAGE, "standard queue")
SNS_EMAIL = Price(2.00, 100_000, "notification", SNS_PAGE, "email and email-JSON")
EVENTBRIDGE_SCHEDULED = Price(
    0.0, 1_000_000, "event", EVENTBRIDGE_PAGE, "events from AWS services, scheduled rules included, are free"
)
GLUE_CATALOG_OBJECTS = Price(1.00, 100_000, "object-month", GLUE_PAGE, "above the first million objects")
GLUE_CATALOG_REQUESTS = Price(1.00, 1_000_000, "request", GLUE_PAGE, "above the first million a month")

# --- Free tier: the "always free" monthly allowances every account has --------------------------------
FREE_LAMBDA_REQUESTS = Allowance(1_000_000, "request", LAMBDA_PAGE)
FREE_LAMBDA_GB_SECONDS = Allowance(400_000, "GB-second", LAMBDA_PAGE, "shared by x86_64 and arm64")
FREE_CW_METRICS = Allowance(10, "metric-month", CLOUDWATCH_PAGE)
FREE_CW_ALARM_METRICS = Allowance(10, "alarm-metric-month", CLOUDWATCH_PAGE, "standard resolution")
FREE_CW_DASHBOARDS = Allowance(3, "dashboard-month", CLOUDWATCH_PAGE, "up to 50 metrics each")
FREE_CW_LOGS = Allowance(5, "GB", CLOUDWATCH_PAGE, "ingestion, archive storage and Logs Insights together")
FREE_SQS_REQUESTS = Allowance(1_000_000, "request", SQS_PAGE)
FREE_SNS_EMAIL = Allowance(1_000, "notification", SNS_PAGE)
FREE_GLUE_OBJECTS = Allowance(1_000_000, "object-month", GLUE_PAGE)
FREE_GLUE_REQUESTS = Allowance(1_000_000, "request", GLUE_PAGE)

# S3 has no always-free allowance. Accounts created before 2025-07-15 had, for their first 12 months,
# 5 GB of Standard storage, 20,000 GET and 2,000 PUT/COPY/POST/LIST requests a month; accounts created
# since get credits instead (FREE_TIER_PAGE). `make cost` prints this offer's effect on its own line.
S3_FIRST_YEAR_STORAGE_GB = Allowance(
    5, "GB-month", FREE_TIER_PAGE, "12-month offer, accounts before 2025-07-15"
)
S3_FIRST_YEAR_TIER2 = Allowance(
    20_000, "request", FREE_TIER_PAGE, "12-month offer, accounts before 2025-07-15"
)
S3_FIRST_YEAR_TIER1 = Allowance(
    2_000, "request", FREE_TIER_PAGE, "12-month offer, accounts before 2025-07-15"
)
