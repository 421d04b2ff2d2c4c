"""Draws images/architecture.png, the pipeline's services and every read and write path, with `diagrams`.

Run by `make images` (which installs what it needs: the `diagrams` package in .venv-images, graphviz's
`dot` with apt-get when run as root); CI never runs it, the PNG is committed. The picture follows
infra/template.yaml and docs/contract.md: what invokes each function, which prefix of the one bucket each
function, tool and table reads and writes (state/ is the transformer's bookkeeping and the dirty-day
markers the compactor reads), the on-failure queue, and the monitoring that mails the alert topic.

Sized for a README about 800 px wide: at dpi 72 every text is 22 px high in a PNG about 1,400 px wide,
so about 13 px at README width. Each icon's label is inside its node (an HTML-like table), so graphviz
keeps labels apart and none overflows its box. The same graphviz gives the same bytes.
"""

from __future__ import annotations

import argparse
import html
import logging
from pathlib import Path
from typing import Any

import diagrams
from diagrams import Cluster, Diagram, Edge, Node, getdiagram
from diagrams.aws.analytics import Athena, GlueDataCatalog
from diagrams.aws.compute import LambdaFunction
from diagrams.aws.integration import (
    EventbridgeScheduler,
    SimpleNotificationServiceSnsTopic,
    SimpleQueueServiceSqsQueue,
)
from diagrams.aws.management import Cloudwatch
from diagrams.onprem.client import User
from diagrams.programming.language import Python

_logger = logging.getLogger(__name__)

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "images" / "architecture.png"

FONT = "DejaVu Sans"
# dpi 72: a point is a pixel, so the font sizes below are the text's height in the PNG.
GRAPH = {
    "fontname": FONT,
    "fontsize": "30",
    "pad": "0.3",
    "nodesep": "0.3",
    "ranksep": "0.9",
    "splines": "spline",
    "compound": "true",
    "newrank": "true",
    "dpi": "72",
}
NODE = {"fontname": FONT, "fontsize": "22"}
EDGE_FONT = {"fontname": FONT, "fontsize": "22"}
CLUSTER = {"fontname": FONT, "fontsize": "22", "margin": "16"}
# The boxes are named in the legend, not on themselves: graphviz routes edges across a box's own title.
FUNCTIONS_BOX = {**CLUSTER, "label": "", "bgcolor": "#E5F5FD", "pencolor": "#AEB6BE"}
BUCKET_BOX = {**CLUSTER, "label": "", "bgcolor": "#EEF6E8", "pencolor": "#AEB6BE"}

DATA = "#1f6fb2"  # the records' path
CONTROL = "#5f6368"  # invocations, queries and metrics
STATE = "#7d3c98"  # bookkeeping
ALERT = "#c0392b"


def _icon(kind: type[Node], label: str, nodeid: str, size: int = 72) -> Node:
    """An icon with its label under it, in one HTML-like table: the node's box holds both, so no label
    can overflow it and graphviz keeps every label clear of its neighbours."""
    icon = Path(diagrams.__file__).resolve().parent.parent / str(kind._icon_dir) / str(kind._icon)
    text = "<BR/>".join(html.escape(line) for line in label.split("\n"))
    table = (
        f'<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="2">'
        f'<TR><TD FIXEDSIZE="TRUE" WIDTH="{size}" HEIGHT="{size}"><IMG SRC="{icon}" SCALE="TRUE"/></TD></TR>'
        f"<TR><TD>{text}</TD></TR></TABLE>>"
    )
    attrs = {"shape": "plain", "fixedsize": "false", "width": "0", "height": "0", "margin": "0"}
    return Node(table, nodeid=nodeid, **attrs)


def _prefix(label: str, nodeid: str, fill: str = "#ffffff") -> Node:
    """One prefix of the bucket: a box sized to its text (no icon)."""
    attrs: dict[str, Any] = {
        "shape": "box",
        "style": "rounded,filled",
        "fillcolor": fill,
        "color": "#3f8624",
        "penwidth": "2",
        "fixedsize": "false",
        "width": "1.5",
        "height": "0.8",
        "margin": "0.15,0.08",
        "labelloc": "c",
    }
    return Node(label, nodeid=nodeid, **attrs)


def _edge(color: str, label: str = "", *, both: bool = False, back: bool = False, **attrs: Any) -> Edge:
    """An edge; `back`: drawn head to tail (a path against the rows, e.g. from raw/ up to the transformer)."""
    return Edge(
        color=color,
        fontcolor=color,
        label=label,
        forward=not back,
        reverse=both or back,
        penwidth="2",
        arrowsize="1.1",
        **EDGE_FONT,
        **attrs,
    )


def _legend(boxes: list[tuple[dict[str, str], str]], lines: list[tuple[str, str, str]]) -> Node:
    """What the boxes, colours and line styles mean: a swatch and a text per row."""
    marks = {"solid": "───", "dotted": "┈┈┈", "dashed": "╌╌╌"}
    rows = [
        f'<TR><TD BGCOLOR="{box["bgcolor"]}" BORDER="1" COLOR="{box["pencolor"]}" STYLE="ROUNDED"> </TD>'
        f'<TD ALIGN="LEFT">{html.escape(text)}</TD></TR>'
        for box, text in boxes
    ]
    rows += [
        f'<TR><TD><FONT COLOR="{color}">{marks[style]}</FONT></TD>'
        f'<TD ALIGN="LEFT">{html.escape(text)}</TD></TR>'
        for color, style, text in lines
    ]
    table = (
        '<<TABLE BORDER="1" COLOR="#c8c8c8" CELLBORDER="0" CELLSPACING="2" CELLPADDING="2">'
        + "".join(rows)
        + "</TABLE>>"
    )
    return Node(table, nodeid="legend", shape="plain", fixedsize="false", width="0", height="0")


def _rows(*rows: list[Node]) -> None:
    """Each list of nodes on one row (rank=same); the real edges order the rows, dot the nodes in a row.

    (Forcing an order within a row too makes dot route edges around each other.)
    """
    dot = getdiagram().dot
    for row in rows:
        with dot.subgraph() as same:
            same.attr(rank="same")
            for node in row:
                same.node(node.nodeid)


def draw(output: Path) -> Path:
    """Render the architecture diagram to `output` (a .png path) and return it."""
    if output.suffix != ".png":
        raise ValueError(f"output must be a .png file, got {output}")
    output.parent.mkdir(parents=True, exist_ok=True)
    with Diagram(
        "",
        filename=str(output.with_suffix("")),
        outformat="png",
        show=False,
        direction="TB",
        graph_attr=GRAPH,
        node_attr=NODE,
    ):
        every_5 = _icon(EventbridgeScheduler, "EventBridge\nevery 5 minutes", "every_5")
        replay = _icon(Python, "tools/replay.py\n(an operator)", "replay")
        daily = _icon(EventbridgeScheduler, "EventBridge\ndaily 03:00 UTC", "daily")

        with Cluster("functions", graph_attr=FUNCTIONS_BOX):
            generator = _icon(LambdaFunction, "generator", "generator")
            transformer = _icon(LambdaFunction, "transformer\n+ pandas layer", "transformer")
            failures = _icon(SimpleQueueServiceSqsQueue, "on-failure\nqueue (SQS)", "failures")
            compactor = _icon(LambdaFunction, "compactor\n+ pandas layer", "compactor")

        with Cluster("bucket", graph_attr=BUCKET_BOX):
            results = _prefix("athena-results/", "results")
            raw = _prefix("raw/\nJSON Lines", "raw")
            quarantine = _prefix("quarantine/\nrejects", "quarantine")
            processed = _prefix("processed/\nParquet", "processed")
            state = _prefix("state/\nbookkeeping", "state", fill="#f4ecf7")
            manifests = _prefix("compaction/\nmanifests", "manifests")

        cloudwatch = _icon(Cloudwatch, "CloudWatch\nlogs, metrics,\n6 alarms", "cloudwatch")
        topic = _icon(SimpleNotificationServiceSnsTopic, "SNS topic\n(e-mail)", "topic")
        analyst = _icon(User, "analyst", "analyst")
        athena = _icon(Athena, "Athena\nworkgroup", "athena")
        catalog = _icon(GlueDataCatalog, "Glue Data Catalog\n3 tables", "catalog")
        legend = _legend(
            [
                (FUNCTIONS_BOX, "Lambda functions, Python 3.12"),
                (BUCKET_BOX, "the S3 bucket (SSE-S3, TLS only)"),
            ],
            [
                (DATA, "solid", "records: put, get, rewrite"),
                (STATE, "solid", "state/: bookkeeping, dirty days"),
                (DATA, "dotted", "read by Athena's tables"),
                (CONTROL, "solid", "invocations, queries, metrics"),
                (ALERT, "dashed", "failures and alerts"),
            ],
        )

        _rows(
            [every_5, replay, daily],
            [generator, transformer, failures, compactor, cloudwatch],
            [results, raw, quarantine, processed, state, manifests, topic],
            [legend, analyst, athena, catalog],
        )
        legend >> Edge(style="invis") >> analyst  # the legend in the empty corner, bottom left

        # Edges between the functions and the bucket carry no label (the arrows say who reads and who
        # writes): a label is a node of its own for dot, and would bend the edges around each other.
        every_5 >> _edge(CONTROL, "invoke") >> generator
        generator >> _edge(DATA) >> raw
        transformer - _edge(DATA, back=True) - raw  # the S3 event, then a get
        transformer >> _edge(DATA) >> quarantine
        transformer >> _edge(DATA) >> processed
        transformer >> _edge(STATE, both=True) >> state
        transformer >> _edge(ALERT, "failed\nevent", style="dashed") >> failures

        daily >> _edge(CONTROL, "invoke") >> compactor
        compactor >> _edge(DATA, both=True) >> processed
        compactor >> _edge(STATE, both=True) >> state  # reads the dirty-day markers, deletes them
        compactor >> _edge(DATA) >> manifests
        replay >> _edge(CONTROL, "invoke") >> transformer
        replay >> _edge(CONTROL, "invoke") >> compactor
        # It lists raw/ and state/, marks days dirty and deletes orphaned outputs: an edge to the whole bucket
        replay >> _edge(STATE, "list, mark days,\ndelete orphans", both=True, lhead="cluster_bucket") >> state

        # Query: the raw table and reconciliation read raw/ as well
        for prefix in (raw, quarantine, processed):
            prefix >> _edge(DATA, style="dotted") >> athena
        results - _edge(CONTROL, "results", back=True) - athena
        analyst >> _edge(CONTROL, "SQL") >> athena
        athena - _edge(CONTROL, "tables", back=True) - catalog

        # Operate
        # Every function's logs and metrics (one edge, from the functions' box)
        compactor >> _edge(CONTROL, style="dotted", ltail="cluster_functions") >> cloudwatch
        failures >> _edge(ALERT, style="dashed") >> cloudwatch
        cloudwatch >> _edge(ALERT, "mail") >> topic
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
