"""`make demo` (python -m local.demo): a short run on moto's server on 127.0.0.1, its output, its failures."""

from __future__ import annotations

import itertools
import os
import re
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest

from local import catalog, demo, pipeline
from local.events import s3_put_event, scheduled_event
from tests.conftest import load_event, load_lambda

END = "2026-11-25T00:30:00Z"  # the ticks cross midnight


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--days",
        str(1 / 24),  # one hour: 12 ticks
        "--transactions-per-run",
        "3",
        "--bad-files",
        "1",
        "--end",
        END,
        "--out",
        str(tmp_path / "out"),
        "--images",
        str(tmp_path / "images"),
        *extra,
    ]


def _port(stdout: str) -> int:
    match = re.search(r"on http://127\.0\.0\.1:(\d+)", stdout)
    assert match, stdout
    return int(match.group(1))


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _shape(value: Any) -> Any:
    """The structure of an event (keys, nesting, value types), not its values."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return type(value).__name__


def test_demo_runs_the_pipeline_prints_every_query_and_writes_charts(tmp_path, capsys):
    code = demo.main(_args(tmp_path))
    out = capsys.readouterr().out
    assert code == 0, out
    for path in catalog.query_files():
        assert f"== sql/queries/{path.name}" in out
        assert demo.question(path) in out
        assert (tmp_path / "out" / "results" / f"{path.stem}.csv").is_file()
    assert re.search(
        r"Reconciliation \(SQL\): raw records (\d+) = processed rows \d+ \+ quarantined [1-9]\d*: OK", out
    )
    assert "Reconciliation (handlers' own counts)" in out
    assert "MISMATCH" not in out
    for name in ("sales_by_category", "revenue_by_hour", "daily_revenue", "top_products_by_revenue"):
        png = tmp_path / "images" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bucket = tmp_path / "out" / "bucket"
    assert len(list((bucket / "raw").rglob("*.json"))) == 12 + 1
    assert list((bucket / "processed").rglob("*.parquet"))
    assert list((bucket / "quarantine").rglob("*.jsonl"))
    # The embedded S3 is gone, and the handlers' environment is put back.
    assert not _listening(_port(out))
    assert "AWS_ENDPOINT_URL" not in os.environ


def test_a_second_run_replaces_the_first_runs_output(tmp_path, capsys):
    assert demo.main(_args(tmp_path)) == 0
    first = (tmp_path / "out" / "results" / "sales_by_category.csv").read_text()
    stale = tmp_path / "out" / "bucket" / "raw" / "left-over.json"
    stale.write_text("{}\n")
    assert demo.main(_args(tmp_path)) == 0
    assert not stale.exists()
    # Same seed and same schedule: the same data, so the same answers.
    assert (tmp_path / "out" / "results" / "sales_by_category.csv").read_text() == first
    capsys.readouterr()


def test_a_folder_the_demo_did_not_make_is_never_deleted(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    precious = out / "thesis.txt"
    precious.write_text("keep me")
    assert demo.main(_args(tmp_path)) == 2
    assert "refusing to delete" in capsys.readouterr().err
    assert precious.read_text() == "keep me"


def test_a_port_in_use_gives_a_clear_message(tmp_path, capsys):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert demo.main(_args(tmp_path, "--port", str(port))) == 2
    assert f"port {port} on 127.0.0.1 is already in use" in capsys.readouterr().err


def test_ctrl_c_stops_the_embedded_s3(tmp_path, capsys, monkeypatch):
    seen: list[str] = []

    def interrupted(options: demo.Options, endpoint: str, metrics_log: Path) -> pipeline.RunSummary:
        seen.append(endpoint)
        assert _listening(int(endpoint.rsplit(":", 1)[1]))
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run_pipeline", interrupted)
    assert demo.main(_args(tmp_path)) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not _listening(int(seen[0].rsplit(":", 1)[1]))


def test_events_have_the_shape_aws_sends():
    tick = datetime(2026, 11, 25, 14, 5, tzinfo=UTC)
    assert _shape(scheduled_event(tick)) == _shape(load_event("scheduled_event.json"))
    assert scheduled_event(tick)["time"] == "2026-11-25T14:05:00Z"
    key = "raw/year=2026/month=11/day=25/hand upload 20261125T140500Z.json"
    event = s3_put_event("b", key=key, size=10, etag='"abc"', sequencer="00AB", event_time=tick)
    assert _shape(event) == _shape(load_event("s3_put_event.json"))
    encoded = event["Records"][0]["s3"]["object"]["key"]
    assert encoded == "raw/year%3D2026/month%3D11/day%3D25/hand+upload+20261125T140500Z.json"
    assert unquote_plus(encoded) == key
    assert event["Records"][0]["s3"]["object"]["eTag"] == "abc"


def test_schedule_ticks_every_five_minutes_up_to_the_end():
    ticks = pipeline.schedule(datetime(2026, 11, 25, 0, 7, 31, tzinfo=UTC), 1)
    assert len(ticks) == 288
    assert ticks[-1] == datetime(2026, 11, 25, 0, 5, tzinfo=UTC)
    assert all((b - a).total_seconds() == 300 for a, b in itertools.pairwise(ticks))
    with pytest.raises(ValueError, match="days must be positive"):
        pipeline.schedule(ticks[-1], 0)


def test_a_failing_handler_stops_the_demo_with_a_message_naming_it(tmp_path, capsys, monkeypatch):
    transformer = load_lambda("transformer")

    def broken(event: dict[str, Any], context: Any) -> dict[str, Any]:
        raise RuntimeError("disk full")

    monkeypatch.setattr(transformer, "lambda_handler", broken)
    assert demo.main(_args(tmp_path)) == 1
    captured = capsys.readouterr()
    assert re.search(
        r"the transformer handler failed on raw/year=2026/month=11/day=2\d/transactions-", captured.err
    )
    assert "RuntimeError: disk full" in captured.err
    assert not _listening(_port(captured.out))
