"""Shared fixtures: fake AWS credentials, function-scoped moto S3, sample events and the handlers."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

# The one loader of the handler files, shared with the demo and the benchmark; re-exported for the tests.
from local.lambdas import load_lambda
from tools.console_files import render

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
# The values the tests fill the events' {{BUCKET}}, {{REGION}} and {{ACCOUNT}} with (ACCOUNT is moto's).
BUCKET = "ecommerce-test-bucket"
REGION = "us-east-1"
ACCOUNT = "123456789012"

__all__ = ["ACCOUNT", "BUCKET", "EVENTS", "REGION", "ROOT", "load_event", "load_lambda"]


def load_event(name: str) -> dict[str, Any]:
    """A sample event from events/, filled in as `make console-files` fills in what a console user pastes."""
    text = (EVENTS / name).read_text(encoding="utf-8")
    event: dict[str, Any] = json.loads(
        render(text, {"BUCKET": BUCKET, "REGION": REGION, "ACCOUNT": ACCOUNT}, name)
    )
    return event


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and region, so that nothing can reach a real account."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "BUCKET_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(autouse=True)
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's temporary files in its own folder: the compactor clears what it takes for a killed
    invocation's leftovers in the temporary directory, which another test process may be using."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


@pytest.fixture
def s3(aws_credentials: None) -> Iterator[Any]:
    """A moto S3 client with an empty bucket; nothing is shared between tests."""
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET)
        yield client
