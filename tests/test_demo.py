"""`make demo` (python -m local.demo): a short run on moto's server on 127.0.0.1, its output, its failures."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pandas as pd
import pyarrow.parquet as pq
import pytest

from local import catalog, charts, demo, pipeline
from local.events import s3_put_event, scheduled_event
from tests.conftest import ROOT, load_event, load_lambda

# An hour whose ticks cross a midnight two days ago: both its days are over, whatever the clock says, so the
# compactor may act on them (the replay phase needs a finished day).
END_TIME = pipeline.last_midnight(datetime.now(UTC)) - timedelta(days=1) + timedelta(minutes=30)
END = f"{END_TIME:%Y-%m-%dT%H:%M}Z"
DAY_BEFORE, LAST_DAY = END_TIME.date() - timedelta(days=1), END_TIME.date()


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--days",
        str(1 / 24),  # one hour: 12 ticks
        "--transactions-per-run",
        "3",
        "--bad-files",
        "3",
        "--end",
        END,
        "--out",
        str(tmp_path / "out"),
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


def _name(raw_key: str) -> str:
    """A raw key's output name, <stem>-<12 hex>, as the contract defines it (the demo's keys are short)."""
    stem = raw_key.rsplit("/", 1)[-1].removesuffix(".json").lstrip("_.")
    return f"{stem}-{hashlib.sha256(raw_key.encode()).hexdigest()[:12]}"


def _day(key: str) -> date:
    match = re.search(r"year=(\d{4})/month=(\d\d)/day=(\d\d)/", key)
    assert match, key
    return date(int(match[1]), int(match[2]), int(match[3]))


def _rows(bucket: Path) -> pd.DataFrame:
    """Every row of the processed table in the bucket copy, with the key of the file it is in."""
    frames = []
    for path in sorted((bucket / "processed" / "transactions").rglob("*.parquet")):
        frame = pq.read_table(path, columns=["transaction_id", "timestamp"]).to_pandas()
        frames.append(frame.assign(key=path.relative_to(bucket).as_posix()))
    return pd.concat(frames, ignore_index=True)


def _quarantined(bucket: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted((bucket / "quarantine").rglob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


def _manifest_sources(bucket: Path) -> list[str | None]:
    """The raw key of every entry in the manifests of the compacted days (their heads' footers)."""
    sources = []
    for path in (bucket / "processed" / "transactions").rglob("compacted-*.parquet"):
        if re.fullmatch(r"compacted-\d{8}\.parquet", path.name):
            manifest = json.loads((pq.read_metadata(path).metadata or {})[b"compaction_manifest"])
            sources += [entry.get("source_key") for entry in manifest["sources"]]
    return sources


def _states(bucket: Path) -> dict[str, dict[str, Any]]:
    documents = [json.loads(p.read_bytes()) for p in (bucket / "state" / "transformer").glob("*.json")]
    return {d["source_key"]: d for d in documents}


def _check_phases(out: str, out_dir: Path) -> None:
    """What the replacement, the replay and the orphan step did, read back from the bucket copy; and the
    reconciliation after them, counted here from the copy."""
    bucket = out_dir / "bucket"
    rows, quarantined, states = _rows(bucket), _quarantined(bucket), _states(bucket)
    everything = [p.relative_to(bucket).as_posix() for p in bucket.rglob("*") if p.is_file()]

    # Replacement: the fixed content is in raw/, its rows are in the table once each, in the day before
    # (where the fix moved them); nothing of the old content is left: no quarantine, no old day partition.
    replaced = re.search(r"^Replacement: a user fixes (raw/.+?\.json) and uploads it again", out, re.M)
    assert replaced, out
    replaced_key = replaced[1]
    fixed = [json.loads(line) for line in (bucket / replaced_key).read_text(encoding="utf-8").splitlines()]
    assert len(fixed) == 7
    ids = {record["transaction_id"] for record in fixed}
    mine = rows[rows["transaction_id"].isin(ids)]
    assert sorted(mine["transaction_id"]) == sorted(ids)
    moved_to = {_day(k) for k in mine["key"]}
    assert (
        moved_to
        == {pd.Timestamp(r["timestamp"]).date() for r in fixed}
        == {_day(replaced_key) - timedelta(1)}
    )
    assert not [r for r in quarantined if r["source_key"] == replaced_key]
    assert [k for k in everything if _name(replaced_key) in k] == [
        f"processed/transactions/year={moved_to.pop():%Y/month=%m/day=%d}/{_name(replaced_key)}.parquet"
    ]
    stale = re.findall(r"^    (\S.*): gone from S3$", out, re.M)
    assert {k.split("/")[0] for k in stale} == {"processed", "quarantine"}
    assert all(_day(k) == _day(replaced_key) and not (bucket / k).exists() for k in stale)
    assert states[replaced_key]["records_read"] == states[replaced_key]["rows_written"] == 7

    # Replay: every raw file of the day went through the transformer again, and the day was compacted.
    day = re.search(r"^Replay: rebuild (\d{4}-\d\d-\d\d) from raw/", out, re.M)
    assert day, out
    replayed = date.fromisoformat(day[1])
    assert replayed == LAST_DAY  # the last day of the window that is over
    deleted_key = re.search(r"^Orphans: a person deletes (raw/.+?\.json) \(", out, re.M)
    assert deleted_key, out
    deleted = deleted_key[1]
    raw_of_day = [k for k in everything if k.startswith(f"raw/year={replayed:%Y/month=%m/day=%d}/")]
    rebuilt = len(raw_of_day) + (_day(deleted) == replayed)
    assert f"transformer (ecommerce-transformer): {rebuilt} invoked, {rebuilt} accepted, 0 failed" in out
    partition = bucket / f"processed/transactions/year={replayed:%Y/month=%m/day=%d}"
    assert [p.name for p in partition.iterdir()] == [f"compacted-{replayed:%Y%m%d}.parquet"]

    # Orphans: nothing is left of the deleted raw file: no output, no quarantined line, no entry in a
    # compacted day (where its rows were), no state.
    assert deleted != replaced_key
    assert not (bucket / deleted).exists()
    assert not [k for k in everything if _name(deleted) in k]
    assert not [r for r in quarantined if r["source_key"] == deleted]
    assert deleted not in states
    sources = _manifest_sources(bucket)
    assert deleted not in sources

    # Reconciliation, after both: every raw line is a row or a quarantined line, each row is in the table
    # exactly once, and each raw file has its state.
    raw_lines = sum(
        1
        for k in everything
        if k.startswith("raw/")
        for line in (bucket / k).read_bytes().splitlines()
        if line.strip()
    )
    raw_files = {k for k in everything if k.startswith("raw/") and k.endswith(".json")}
    assert set(states) == raw_files
    assert sum(s["rows_written"] for s in states.values()) == len(rows)
    assert sum(s["quarantined"] for s in states.values()) == len(quarantined)
    assert sum(s["records_read"] for s in states.values()) == raw_lines == len(rows) + len(quarantined)
    reconciliation = pd.read_csv(out_dir / "results" / "dq_reconciliation_by_day.csv")
    assert set(reconciliation["status"]) == {"OK"}
    assert f"raw records {raw_lines} = processed rows {len(rows)} + quarantined {len(quarantined)}: OK" in out
    assert f"Processed table: {len(rows)} rows = {len(rows)} rows written, each once: OK" in out
    assert "MISMATCH" not in out


def test_demo_runs_every_phase_prints_every_query_writes_charts_and_still_reconciles(tmp_path, capsys):
    code = demo.main(_args(tmp_path))
    out = capsys.readouterr().out
    assert code == 0, out
    for path in catalog.query_files():
        assert f"== sql/queries/{path.name}" in out
        assert demo.question(path) in out
        assert (tmp_path / "out" / "results" / f"{path.stem}.csv").is_file()
    # Three hand uploads: one fixed (no bad line left), one deleted, one still with its nine bad lines.
    assert re.search(
        r"Reconciliation \(SQL\): raw records (\d+) = processed rows \d+ \+ quarantined 9: OK", out
    )
    assert "Reconciliation (handlers' own counts" in out
    assert "MISMATCH" not in out
    for name in ("sales_by_category", "revenue_by_hour", "daily_revenue", "top_products_by_revenue"):
        png = tmp_path / "out" / "charts" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The window crosses midnight: both days are partial, and the tables say so (as they do of the day
    # before, where the fixed file's rows went).
    assert f"Window: {DAY_BEFORE} 23:30 to {LAST_DAY} 00:30 UTC (partial: {DAY_BEFORE}, {LAST_DAY})" in out
    daily = out.split("== sql/queries/daily_revenue.sql")[1].split("==")[0]
    assert daily.count("partial day") == 3
    bucket = tmp_path / "out" / "bucket"
    assert len(list((bucket / "raw").rglob("*.json"))) == 12 + 3 - 1
    assert list((bucket / "processed").rglob("*.parquet"))
    assert list((bucket / "quarantine").rglob("*.jsonl"))
    # The embedded S3 is gone, and the handlers' environment is put back.
    assert not _listening(_port(out))
    assert "AWS_ENDPOINT_URL" not in os.environ
    _check_phases(out, tmp_path / "out")


def test_a_raw_file_deleted_without_the_orphan_step_fails_the_reconciliation_and_the_demo(
    tmp_path, capsys, monkeypatch
):
    def delete_only(session: demo.Session) -> None:
        session.s3.delete_object(Bucket=demo.BUCKET, Key=session.summary.bad_files[1])

    monkeypatch.setattr(demo, "replay_a_day", lambda session: None)
    monkeypatch.setattr(demo, "remove_an_orphan", delete_only)
    monkeypatch.setattr(demo, "write_charts", lambda options, results: [])
    assert demo.main(_args(tmp_path)) == 1
    out = capsys.readouterr().out
    # Its rows are still in the table and its state still there, with no raw file to account for them.
    assert re.search(r"Reconciliation \(handlers' own counts.*: MISMATCH", out)
    assert re.search(r"Processed table: \d+ rows = \d+ rows written, each once: MISMATCH", out)
    assert "which is not in raw/" in out


def test_the_replayed_day_is_the_last_one_over_and_a_window_in_the_future_has_none():
    window = pipeline.Window.ending(datetime(2026, 11, 25, 0, 30, tzinfo=UTC), 2)
    assert demo.replay_day(window, today=date(2026, 12, 2)) == date(2026, 11, 24)  # the complete one
    assert demo.replay_day(window, today=date(2026, 11, 24)) == date(2026, 11, 23)  # the only one over
    assert demo.replay_day(window, today=date(2026, 11, 23)) is None


def _outputs(out: Path) -> dict[str, bytes]:
    """Every result and chart of a run; dq_latest_partition without its lag behind the clock."""
    found = {p.name: p.read_bytes() for p in sorted((out / "charts").glob("*.png"))}
    for path in sorted((out / "results").glob("*.csv")):
        frame = pd.read_csv(path)
        found[path.name] = frame.drop(columns=["lag_minutes"], errors="ignore").to_csv().encode()
    return found


def test_a_second_run_replaces_the_first_and_the_same_seed_and_window_give_the_same_results(tmp_path, capsys):
    assert demo.main(_args(tmp_path)) == 0
    first = _outputs(tmp_path / "out")
    stale = tmp_path / "out" / "bucket" / "raw" / "left-over.json"
    stale.write_text("{}\n")
    assert demo.main(_args(tmp_path)) == 0
    assert not stale.exists()
    # Same seed and same window: the same data, so the same answers and byte-identical charts.
    assert len(first) == len(catalog.query_files()) + len(charts.CHARTS)
    assert _outputs(tmp_path / "out") == first
    capsys.readouterr()


def test_the_default_window_is_the_last_complete_utc_day():
    options = demo.parse_args([], now=datetime(2026, 11, 25, 0, 0, 1, tzinfo=UTC))
    assert options.window.start == datetime(2026, 11, 24, tzinfo=UTC)
    assert options.window.end == datetime(2026, 11, 25, tzinfo=UTC)
    assert options.window.complete_dates() == [date(2026, 11, 24)]
    assert options.window.partial_dates() == []
    assert len(options.window.ticks()) == 288
    late = demo.parse_args(["--days", "7"], now=datetime(2026, 11, 25, 23, 59, tzinfo=UTC))
    assert late.window.complete_dates() == [date(2026, 11, d) for d in range(18, 25)]
    assert late.window.end == datetime(2026, 11, 25, tzinfo=UTC)


def test_a_window_ending_at_any_time_has_partial_days_at_both_ends():
    window = pipeline.Window.ending(datetime(2026, 11, 25, 12, 3, tzinfo=UTC), 2)
    assert window.end == datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert window.partial_dates() == [date(2026, 11, 23), date(2026, 11, 25)]
    assert window.complete_dates() == [date(2026, 11, 24)]
    assert "(1 complete day; partial: 2026-11-23, 2026-11-25)" in window.describe()


def test_charts_label_partial_days_name_the_currency_and_are_byte_identical_for_the_same_data(tmp_path):
    frame = pd.DataFrame(
        {"year": [2026, 2026], "month": [11, 11], "day": [24, 25], "orders": [3, 1], "revenue": [10.5, 2.0]}
    )
    context = charts.ChartContext(
        subtitle="test", currency="USD", complete_days=frozenset({date(2026, 11, 24)})
    )
    assert charts.day_labels(frame, context) == ["2026-11-24", "2026-11-25\n(partial)"]
    first = charts.daily_revenue(frame, tmp_path / "a.png", context).read_bytes()
    second = charts.daily_revenue(frame, tmp_path / "b.png", context).read_bytes()
    assert first == second
    assert b"matplotlib" not in first  # no Software chunk: the bytes depend on the data only
    assert charts.currency() == load_lambda("generator").CURRENCY


def test_help_answers_before_pandas_matplotlib_duckdb_boto3_or_moto_are_imported():
    code = (
        "import sys\n"
        "from local import demo\n"
        "try:\n"
        "    demo.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = {'pandas', 'matplotlib', 'duckdb', 'boto3', 'moto', 'pyarrow', 'sqlglot'}\n"
        "print('heavy:', sorted(heavy & set(sys.modules)))\n"
    )
    result = subprocess.run(  # noqa: S603 (fixed arguments)
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    assert "usage: python -m local.demo" in result.stdout
    assert result.stdout.strip().endswith("heavy: []")


def _copy_of_the_repository(dest: Path) -> Path:
    """The working tree's files (as they are now, not as committed) in a fresh repository at dest."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],  # noqa: S607
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "copy"]):
        subprocess.run([*git, *args], cwd=dest, check=True, capture_output=True)  # noqa: S603
    return dest


def _status(repo: Path) -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],  # noqa: S607
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_a_demo_run_with_its_defaults_leaves_git_status_unchanged(tmp_path):
    repo = _copy_of_the_repository(tmp_path / "repo")
    before = _status(repo)

    # The defaults for every output location, as `make demo` runs it; a short window to stay fast.
    result = subprocess.run(  # noqa: S603 (fixed arguments)
        [sys.executable, "-m", "local.demo", "--days", str(1 / 24), "--transactions-per-run", "2"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert (repo / "local" / "out" / "charts" / "daily_revenue.png").is_file()
    assert _status(repo) == before


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

    def interrupted(session: demo.Session) -> None:
        endpoint = session.s3.meta.endpoint_url
        seen.append(endpoint)
        assert _listening(int(endpoint.rsplit(":", 1)[1]))
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "simulate_schedule", interrupted)
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
        r"the transformer handler failed on raw/year=\d{4}/month=\d\d/day=\d\d/transactions-", captured.err
    )
    assert "RuntimeError: disk full" in captured.err
    assert not _listening(_port(captured.out))
