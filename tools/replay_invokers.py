"""How tools/replay.py runs the transformer and the compactor: AWS Lambda, or the handler files in process.

The commands talk to an Invoker; `LambdaInvoker` calls the deployed functions (the transformer
asynchronously, as S3 does, the compactor synchronously), `LocalInvoker` imports lambda/<name>/
lambda_function.py and calls its handler against the demo's embedded S3, so that the tool can be tried
with no AWS account. `RateLimiter` spaces invocations evenly.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from local.lambdas import load_lambda
from tools.replay_aws import ReplayError, describe, error_code

if TYPE_CHECKING:
    from mypy_boto3_lambda import LambdaClient

Function = Literal["transformer", "compactor"]

# Errors that would fail every invocation the same way: stop at the first one instead of counting them.
_FATAL_CODES = {
    "ResourceNotFoundException",
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "ExpiredTokenException",
    "KMSAccessDeniedException",
}


@dataclass(frozen=True)
class Outcome:
    """What one invocation gave: accepted or not, a status to count it under, and what it returned."""

    accepted: bool
    status: str  # "202" (queued by Lambda), "200" (ran), an AWS error code, or FunctionError:<type>
    detail: str = ""
    result: Any = None  # a synchronous invocation's return value
    at: datetime = field(default_factory=lambda: datetime.now(UTC))  # when the invocation was accepted


class Invoker(Protocol):
    """Runs a pipeline function on a payload; a context manager around a series of invocations."""

    asynchronous: bool  # True: the transformer's invocations are queued, not run, when invoke returns

    def name(self, function: Function) -> str: ...

    def invoke(self, function: Function, payload: Mapping[str, Any]) -> Outcome: ...

    def __enter__(self) -> Invoker: ...

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class LambdaInvoker:
    """The deployed functions: the transformer with InvocationType=Event (as S3 invokes it, with its
    retries and on-failure queue), the compactor with RequestResponse (its result is reported per day)."""

    asynchronous = True

    def __init__(self, client: LambdaClient, names: Mapping[Function, str]) -> None:
        self._client = client
        self._names = dict(names)

    def __enter__(self) -> LambdaInvoker:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def name(self, function: Function) -> str:
        return self._names[function]

    def invoke(self, function: Function, payload: Mapping[str, Any]) -> Outcome:
        name = self._names[function]
        kind: Literal["Event", "RequestResponse"] = (
            "Event" if function == "transformer" else "RequestResponse"
        )
        where = f"invoking Lambda function {name} ({kind}, region {self._client.meta.region_name})"
        try:
            response = self._client.invoke(
                FunctionName=name, InvocationType=kind, Payload=json.dumps(payload).encode("utf-8")
            )
        except ClientError as e:
            if error_code(e) in _FATAL_CODES:
                raise ReplayError(describe(e, where)) from e
            message = str(e.response.get("Error", {}).get("Message", ""))
            return Outcome(accepted=False, status=error_code(e) or "ClientError", detail=message)
        except BotoCoreError as e:
            raise ReplayError(f"{where}: {e}") from e
        status = int(response["StatusCode"])
        date_header = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        at = parsedate_to_datetime(date_header).astimezone(UTC) if date_header else datetime.now(UTC)
        if kind == "Event":
            return Outcome(accepted=status == 202, status=str(status), at=at)
        body = response["Payload"].read() if "Payload" in response else b""
        result = json.loads(body) if body else None
        if response.get("FunctionError"):
            error = result if isinstance(result, dict) else {}
            status_text = f"FunctionError:{error.get('errorType', response['FunctionError'])}"
            return Outcome(
                accepted=False, status=status_text, detail=str(error.get("errorMessage", "")), at=at
            )
        return Outcome(accepted=status == 200, status=str(status), result=result, at=at)


class LocalInvoker:
    """The handler files run in this process, synchronously, against the embedded S3 at `endpoint`.

    While the invoker is entered, the process environment is the handlers' (BUCKET_NAME, the endpoint,
    dummy credentials), as Lambda would set it; it is put back on exit. A handler that raises gives a
    FunctionError outcome, as a failed Lambda invocation would; its metric lines (stdout) are dropped.
    `endpoint` None: the S3 calls go where boto3 sends them (moto's in-process mock in the tests).
    """

    asynchronous = False
    _REMOVED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")

    def __init__(
        self,
        endpoint: str | None,
        bucket: str | None,
        names: Mapping[Function, str],
        handlers: Mapping[Function, ModuleType] | None = None,
        region: str = "us-east-1",
    ) -> None:
        self._names = dict(names)
        self._handlers: dict[Function, ModuleType] = dict(handlers or {})
        env = {"BUCKET_NAME": bucket} if bucket else {}
        if endpoint:
            env.update(
                AWS_ENDPOINT_URL=endpoint,
                AWS_ACCESS_KEY_ID="local",
                AWS_SECRET_ACCESS_KEY="local",  # noqa: S106 - moto's server accepts any credentials
                AWS_DEFAULT_REGION=region,
                AWS_EC2_METADATA_DISABLED="true",
            )
        self._env = env
        self._saved: dict[str, str | None] = {}

    def name(self, function: Function) -> str:
        return self._names[function]

    def _handler(self, function: Function) -> ModuleType:
        if function not in self._handlers:
            self._handlers[function] = load_lambda(function)
            self._handlers[function].s3_client.cache_clear()
        return self._handlers[function]

    def _clear_clients(self) -> None:
        for handler in self._handlers.values():
            handler.s3_client.cache_clear()  # a client made before points at another endpoint

    def __enter__(self) -> LocalInvoker:
        removed = self._REMOVED if "AWS_ENDPOINT_URL" in self._env else ()
        self._saved = {k: os.environ.get(k) for k in (*self._env, *removed)}
        for key in removed:
            os.environ.pop(key, None)
        os.environ.update(self._env)
        self._clear_clients()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._clear_clients()

    def invoke(self, function: Function, payload: Mapping[str, Any]) -> Outcome:
        handler = self._handler(function)
        at = datetime.now(UTC)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                # A copy, as Lambda hands each invocation its own deserialised event.
                result = handler.lambda_handler(copy.deepcopy(dict(payload)), None)
        except Exception as e:  # the handler failed: on Lambda, a failed invocation
            return Outcome(accepted=False, status=f"FunctionError:{type(e).__name__}", detail=str(e), at=at)
        return Outcome(accepted=True, status="200", result=result, at=at)


class RateLimiter:
    """At most `per_second` calls to wait() per second, evenly spaced (None: no limit).

    The clock and the sleep are injectable, so that tests check the spacing without waiting.
    """

    def __init__(
        self,
        per_second: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if per_second is not None and per_second <= 0:
            raise ReplayError(
                f"the rate must be a positive number of invocations per second, got {per_second:g}"
            )
        self._interval = 1 / per_second if per_second else 0.0
        self._clock, self._sleep = clock, sleep
        self._next: float | None = None

    def wait(self) -> None:
        if not self._interval:
            return
        now = self._clock()
        if self._next is not None and now < self._next:
            self._sleep(self._next - now)
            now = self._next
        self._next = now + self._interval
