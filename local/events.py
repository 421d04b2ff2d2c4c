"""Events in the exact shapes AWS delivers them: EventBridge scheduled events and S3 notifications."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus

ACCOUNT = "123456789012"
REGION = "us-east-1"
RULE_NAME = "ecommerce-generator-schedule"


def iso_z(moment: datetime, milliseconds: bool = False) -> str:
    """UTC ISO 8601 with a Z, as AWS writes event times."""
    utc = moment.astimezone(UTC)
    if milliseconds:
        return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def scheduled_event(tick: datetime, region: str = REGION) -> dict[str, Any]:
    """The EventBridge "Scheduled Event" a rate(5 minutes) rule sends at `tick`."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT,
        "time": iso_z(tick),
        "region": region,
        "resources": [f"arn:aws:events:{region}:{ACCOUNT}:rule/{RULE_NAME}"],
        "detail": {},
    }


def s3_put_event(
    bucket: str,
    *,
    key: str,
    size: int,
    etag: str,
    sequencer: str,
    event_time: datetime,
    region: str = REGION,
) -> dict[str, Any]:
    """The ObjectCreated:Put notification S3 sends for `key`; the key is URL-encoded as S3 encodes it."""
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": region,
                "eventTime": iso_z(event_time, milliseconds=True),
                "eventName": "ObjectCreated:Put",
                "userIdentity": {"principalId": "AWS:AROAEXAMPLEROLEID:ecommerce-generator"},
                "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                "responseElements": {
                    "x-amz-request-id": uuid.uuid4().hex[:16].upper(),
                    "x-amz-id-2": uuid.uuid4().hex,
                },
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "raw-json-to-transformer",
                    "bucket": {
                        "name": bucket,
                        "ownerIdentity": {"principalId": "A3NL1KOZZKEXAMPLE"},
                        "arn": f"arn:aws:s3:::{bucket}",
                    },
                    "object": {
                        "key": quote_plus(key, safe="/"),
                        "size": size,
                        "eTag": etag.strip('"'),
                        "sequencer": sequencer,
                    },
                },
            }
        ]
    }
