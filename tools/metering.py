"""Meters for `make cost`: S3 requests by API and key prefix, handler CPU time, log bytes and EMF metrics.

The S3 counter hooks botocore's event system, so it counts the calls the handlers really make, with no
change to them: `before-parameter-build` reads the call's parameters (bucket, key, prefix) and
`after-call` counts the call once S3 has answered, with the HTTP status (S3 bills a request that fails
with 404 or 412 as well). A call that never reaches S3 (a connection error) is not counted. Retries of
one call would be separate requests on S3; the local run has none.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

_logger = logging.getLogger(__name__)

# Lambda gives a function CPU in proportion to its memory: 1,769 MB is one full vCPU.
MB_PER_VCPU = 1769

BUCKET_LEVEL = "(bucket)"
NO_PREFIX = "(no prefix)"

# Request classes as S3 prices them (tools/prices.py): tier 1 = PUT, COPY, POST, LIST; tier 2 = GET and
# every other request; DELETE and CANCEL are free.
TIER1 = "PUT/COPY/POST/LIST"
TIER2 = "GET and other"
FREE = "DELETE (free)"
_TIER1_PREFIXES = ("Put", "Copy", "Post", "List", "Create", "Complete", "Upload", "Restore", "Select")
_FREE_OPERATIONS = {"AbortMultipartUpload"}


def request_class(operation: str) -> str:
    """The S3 price class of an API operation, e.g. PutObject -> tier 1, HeadObject -> tier 2."""
    if operation.startswith("Delete") or operation in _FREE_OPERATIONS:
        return FREE
    if operation.startswith(_TIER1_PREFIXES):
        return TIER1
    return TIER2


def key_prefix(key: str) -> str:
    """The top-level folder of a key, e.g. raw/year=2026/... -> raw/."""
    head, sep, _ = key.partition("/")
    return f"{head}/" if sep else NO_PREFIX


def call_prefix(params: Mapping[str, Any]) -> str:
    """The top-level folder an S3 call touches, from its parameters (Key, Prefix, or the keys deleted)."""
    if isinstance(params.get("Key"), str):
        return key_prefix(params["Key"])
    if "Prefix" in params:
        return key_prefix(str(params["Prefix"])) if params["Prefix"] else BUCKET_LEVEL
    objects = params.get("Delete", {}).get("Objects") if isinstance(params.get("Delete"), dict) else None
    if objects:
        return key_prefix(str(objects[0].get("Key", "")))
    return BUCKET_LEVEL


@dataclass(frozen=True)
class Request:
    function: str
    operation: str
    prefix: str
    status: int


class S3RequestCounter:
    """Counts every S3 call made by clients of the sessions it is attached to, labelled by `function`.

    Attach it to a session before the clients are created: botocore copies the session's event handlers
    into each new client.
    """

    def __init__(self) -> None:
        self.function = "-"
        self.requests: Counter[Request] = Counter()

    def attach(self, events: Any) -> None:
        """Register on a botocore event emitter (session.events, or client.meta.events)."""
        events.register("before-parameter-build.s3", self._before_parameter_build)
        events.register("after-call.s3", self._after_call)

    def _before_parameter_build(self, params: Mapping[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["cost_prefix"] = call_prefix(params)

    def _after_call(self, http_response: Any, model: Any, context: Mapping[str, Any], **_: Any) -> None:
        status = int(getattr(http_response, "status_code", 0))
        prefix = str(context.get("cost_prefix", BUCKET_LEVEL))
        self.requests[Request(self.function, model.name, prefix, status)] += 1

    @contextlib.contextmanager
    def labelled(self, function: str) -> Iterator[None]:
        previous, self.function = self.function, function
        try:
            yield
        finally:
            self.function = previous

    def total(
        self, function: str | None = None, operation: str | None = None, prefix: str | None = None
    ) -> int:
        return sum(
            n
            for r, n in self.requests.items()
            if (function is None or r.function == function)
            and (operation is None or r.operation == operation)
            and (prefix is None or r.prefix == prefix)
        )

    def by(self, *fields: str, function: str | None = None) -> Counter[tuple[Any, ...]]:
        """Counts grouped by the given Request fields, e.g. by("operation", "prefix")."""
        grouped: Counter[tuple[Any, ...]] = Counter()
        for r, n in self.requests.items():
            if function is None or r.function == function:
                grouped[tuple(getattr(r, f) for f in fields)] += n
        return grouped


# --- Logs as Lambda's JSON log format writes them ------------------------------------------------------

# LogRecord attributes that are not `extra=` fields (the runtime's JSON formatter leaves them out).
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
REQUEST_ID = "8f5e3c1a-2b4d-4e6f-9a0b-1c2d3e4f5a6b"  # a request id has this length


class LambdaJsonFormatter(logging.Formatter):
    """One JSON object per record with the fields the Python runtime's JSON log format writes.

    timestamp, level, message, logger, requestId, the `extra=` fields, and for an exception its type,
    message, stack trace and location (the runtime's own formatter lives in awslambdaric).
    """

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC)
        document: dict[str, Any] = {
            "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
            "level": logging.getLevelName(min(50, max(0, record.levelno)) // 10 * 10),
            "message": record.getMessage(),
            "logger": record.name,
            "requestId": REQUEST_ID,
        }
        if record.exc_info and record.exc_info[0] is not None:
            document["errorType"] = record.exc_info[0].__name__
            document["errorMessage"] = str(record.exc_info[1])
            document["stackTrace"] = traceback.format_tb(record.exc_info[2])
            document["location"] = f"{record.pathname}:{record.funcName}:{record.lineno}"
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in document and value is not None:
                document[key] = value
        return json.dumps(document, ensure_ascii=False, default=str)


@dataclass
class Invocation:
    """What one handler invocation cost: CPU seconds, log lines as CloudWatch receives them."""

    function: str
    cpu_seconds: float
    log_lines: list[str] = field(default_factory=list)

    @property
    def log_bytes(self) -> int:
        return sum(len(line.encode("utf-8")) for line in self.log_lines)


class _ListHandler(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(level=logging.NOTSET)
        self.lines = lines
        self.setFormatter(LambdaJsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def metered(function: str) -> Iterator[Invocation]:
    """Measure one handler call: the process's CPU time (all threads) and every log line it writes.

    Log lines are the root logger's records at the level the handler set (INFO unless LOG_LEVEL says
    otherwise), formatted as Lambda's JSON log format, plus whatever it writes to stdout (its EMF
    metric lines). The S3 server must run in another process, or its CPU would be counted here.
    """
    invocation = Invocation(function, 0.0)
    root = logging.getLogger()
    handler = _ListHandler(invocation.log_lines)
    handler.setLevel(root.level)
    stdout = io.StringIO()
    root.addHandler(handler)
    started = time.process_time()
    try:
        with contextlib.redirect_stdout(stdout):
            yield invocation
    finally:
        invocation.cpu_seconds = time.process_time() - started
        root.removeHandler(handler)
        invocation.log_lines.extend(line for line in stdout.getvalue().splitlines() if line)


def vcpu_share(memory_mb: int) -> float:
    """The share of one vCPU a function of `memory_mb` gets (1,769 MB and above: one full vCPU)."""
    if memory_mb <= 0:
        raise ValueError(f"memory must be positive, got {memory_mb} MB")
    return min(1.0, memory_mb / MB_PER_VCPU)


def billed_ms(cpu_seconds: float, memory_mb: int) -> int:
    """Lambda's billed duration for work that takes `cpu_seconds` on one full core, rounded up to 1 ms.

    The work is CPU-bound at the function's vCPU share; waiting on the network is not in it.
    """
    if cpu_seconds < 0:
        raise ValueError(f"CPU time cannot be negative, got {cpu_seconds}")
    return max(1, math.ceil(cpu_seconds / vcpu_share(memory_mb) * 1000 - 1e-9))


@dataclass(frozen=True)
class Metric:
    namespace: str
    name: str
    dimensions: tuple[tuple[str, str], ...]  # (name, value) pairs: each combination is its own metric


def emf_metrics(line: str) -> set[Metric]:
    """The CloudWatch metrics one Embedded Metric Format line creates (name x each dimension set)."""
    try:
        document = json.loads(line)
    except ValueError:
        return set()
    aws = document.get("_aws") if isinstance(document, dict) else None
    if not isinstance(aws, dict):
        return set()
    found = set()
    for directive in aws.get("CloudWatchMetrics", []):
        for dimension_set in directive.get("Dimensions", [[]]) or [[]]:
            for metric in directive.get("Metrics", []):
                values = tuple((d, str(document.get(d))) for d in dimension_set)
                found.add(Metric(directive["Namespace"], metric["Name"], values))
    return found
