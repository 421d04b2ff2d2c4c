"""Draws images/architecture.png, the pipeline's services and data flow, with `diagrams` and graphviz.

Run by `make images` (which installs what it needs); CI never runs it, the PNG is committed.
The picture follows infra/template.yaml: one bucket (SSE-S3, TLS only, no public access) whose five
prefixes are drawn where the data passes, three functions (generator, transformer, daily compactor), the
S3 trigger, the on-failure queue, the catalog and workgroup, and the monitoring that mails the alert topic.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from diagrams import Cluster, Diagram, Edge
from diagrams.aws.analytics import Athena, GlueDataCatalog
from diagrams.aws.compute import LambdaFunction
from diagrams.aws.general import User
from diagrams.aws.integration import (
    EventbridgeScheduler,
    SimpleNotificationServiceSnsTopic,
    SimpleQueueServiceSqsQueue,
)
from diagrams.aws.management import Cloudwatch, CloudwatchAlarm, CloudwatchLogs
from diagrams.aws.storage import SimpleStorageServiceS3Bucket

_logger = logging.getLogger(__name__)

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "images" / "architecture.png"

GRAPH = {"fontsize": "22", "pad": "0.4", "nodesep": "0.55", "ranksep": "0.9", "splines": "spline"}
NODE = {"fontsize": "13"}
EDGE = {"fontsize": "11"}
DATA = "#1f6fb2"  # the records' path
CONTROL = "#7a7a7a"  # invocations, queries and metrics
ALERT = "#c0392b"


def draw(output: Path) -> Path:
    """Render the architecture diagram to `output` (a .png path) and return it."""
    if output.suffix != ".png":
        raise ValueError(f"output must be a .png file, got {output}")
    output.parent.mkdir(parents=True, exist_ok=True)
    with Diagram(
        "Serverless e-commerce data pipeline",
        filename=str(output.with_suffix("")),
        outformat="png",
        show=False,
        direction="LR",
        graph_attr=GRAPH,
        node_attr=NODE,
        edge_attr=EDGE,
    ):
        with Cluster("Ingest"):
            schedule = EventbridgeScheduler("EventBridge schedule\nrate(5 minutes)")
            generator = LambdaFunction("generator\n(Python 3.12)")
        raw = SimpleStorageServiceS3Bucket("s3://BUCKET/raw/\nJSON Lines")

        with Cluster("Transform"):
            transformer = LambdaFunction("transformer\n(Python 3.12 +\nAWSSDKPandas layer)")
            failures = SimpleQueueServiceSqsQueue("on-failure queue\n(after 2 retries)")

        processed = SimpleStorageServiceS3Bucket("s3://BUCKET/processed/\nParquet, one folder a day")

        with Cluster("Compact (daily)"):
            nightly = EventbridgeScheduler("EventBridge schedule\ncron(0 3 * * ? *)")
            compactor = LambdaFunction("compactor\n(Python 3.12 +\nAWSSDKPandas layer)")
        manifests = SimpleStorageServiceS3Bucket("s3://BUCKET/compaction/\nmanifest copies")
        quarantine = SimpleStorageServiceS3Bucket("s3://BUCKET/quarantine/\nrejected lines + reason")

        with Cluster("Query"):
            catalog = GlueDataCatalog("Glue Data Catalog\necommerce_db: 3 tables,\npartition projection")
            athena = Athena("Athena workgroup\n(scan limit,\nencrypted results)")
        results = SimpleStorageServiceS3Bucket("s3://BUCKET/athena-results/")
        analyst = User("analyst")

        with Cluster("Operate"):
            logs = CloudwatchLogs("CloudWatch Logs\nJSON logs + EMF metrics")
            dashboard = Cloudwatch("dashboard")
            alarms = CloudwatchAlarm(
                "alarms: errors (3 functions),\nfailed events, stalled pipeline,\nquarantine rate"
            )
            topic = SimpleNotificationServiceSnsTopic("SNS topic\n(e-mail)")

        schedule >> Edge(color=CONTROL, label="invoke") >> generator
        generator >> Edge(color=DATA, label="put") >> raw
        raw >> Edge(color=DATA, label="ObjectCreated\nraw/*.json") >> transformer
        transformer >> Edge(color=DATA, label="valid rows") >> processed
        transformer >> Edge(color=DATA, label="rejects") >> quarantine
        transformer >> Edge(color=ALERT, style="dashed", label="failed event") >> failures

        nightly >> Edge(color=CONTROL, label="invoke") >> compactor
        processed >> Edge(color=DATA, reverse=True, label="read a finished day,\nput one file") >> compactor
        compactor >> Edge(color=DATA, label="manifest") >> manifests

        [processed, quarantine] >> Edge(color=DATA, style="dotted", label="read") >> athena
        catalog >> Edge(color=CONTROL, label="schema") >> athena
        athena >> Edge(color=CONTROL, label="results") >> results
        athena >> Edge(color=CONTROL, label="SQL") >> analyst

        [generator, transformer, compactor] >> Edge(color=CONTROL, style="dotted") >> logs
        logs >> Edge(color=CONTROL) >> dashboard
        logs >> Edge(color=CONTROL, label="metrics") >> alarms
        failures >> Edge(color=ALERT, style="dashed") >> alarms
        alarms >> Edge(color=ALERT, label="ALARM / OK") >> topic
    _logger.info("wrote %s", output)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("output", nargs="?", type=Path, default=DEFAULT_OUTPUT, help="PNG file to write")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    draw(args.output)


if __name__ == "__main__":
    main()
