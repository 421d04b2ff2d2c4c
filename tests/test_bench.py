"""The benchmark's own parts, not its timings: seeded data, the bare reference, the loop's checks, the
arguments, and the arithmetic that turns measurements into goals, limits and largest files."""

from __future__ import annotations

import io
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError

from bench import _child, data, harness, mechanisms, model, queries, reference
from bench import run as bench_run
from bench._child import s3_event
from bench.generator_run import ONE_VCPU_MB
from tests.conftest import BUCKET, load_lambda

RAW_KEY = "raw/year=2026/month=11/day=25/transactions-20261125T120000Z-0000012c.json"


# --- Data -----------------------------------------------------------------------------------------------


def test_generated_data_is_a_pure_function_of_the_seed(tmp_path: Path):
    first = data.clean_file(tmp_path / "a", 2_500, seed=7, workers=1)
    again = data.clean_file(tmp_path / "b", 2_500, seed=7, workers=1)
    other = data.clean_file(tmp_path / "c", 2_500, seed=8, workers=1)

    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    lines = first.read_bytes().splitlines()
    assert len(lines) == data.line_count(first) == 2_500
    assert len({json.loads(line)["transaction_id"] for line in lines}) == 2_500
    assert {json.loads(line)["timestamp"][:10] for line in lines} == {"2026-11-25"}


def test_every_generated_record_passes_the_transformers_validation(tmp_path: Path):
    transformer = load_lambda("transformer")
    path = data.clean_file(tmp_path, 1_000, seed=3, workers=1)

    results = [transformer.validate_line(line) for line in path.read_bytes().splitlines()]

    assert not [r for r in results if isinstance(r, transformer.Reject)]


def test_the_malformed_file_has_exactly_one_bad_json_line_in_a_hundred(tmp_path: Path):
    clean = data.clean_file(tmp_path, 1_000, seed=5, workers=1)
    bad = data.malformed_file(clean)

    lines = bad.read_bytes().splitlines()
    broken = []
    for number, line in enumerate(lines):
        try:
            json.loads(line)
        except ValueError:
            broken.append(number)
    assert len(lines) == 1_000
    assert broken == list(range(50, 1_000, 100))


def test_the_race_file_is_whole_lines_of_the_source_ending_just_past_a_whole_number_of_blocks(tmp_path: Path):
    source = data.clean_file(tmp_path, 1_000, seed=9, workers=1)
    block, tail = 64 * 1024, 4 * 1024

    race = data.race_file(source, block_bytes=block, tail_bytes=tail)

    size = race.stat().st_size
    longest = max(len(line) for line in source.read_bytes().splitlines(keepends=True))
    assert size // block == (source.stat().st_size - tail) // block >= 2
    assert tail <= model.last_block_bytes(size, block) < tail + longest
    assert source.read_bytes().startswith(race.read_bytes())
    assert race.read_bytes().endswith(b"\n")


def test_a_source_smaller_than_one_block_cannot_make_a_race_file(tmp_path: Path):
    source = data.clean_file(tmp_path, 10, seed=9, workers=1)

    with pytest.raises(ValueError, match="too small"):
        data.race_file(source, block_bytes=1024 * 1024)


@pytest.mark.parametrize(
    ("size", "expected"), [(1, 1), (8, 8), (9, 1), (16, 8), (17, 1), (23, 7), (0, 0)], ids=str
)
def test_the_last_block_of_an_object_is_what_is_left_after_whole_blocks(size: int, expected: int):
    assert model.last_block_bytes(size, block_bytes=8) == expected


# --- The bare reference and the loop's checks, against moto ---------------------------------------------


def test_the_bare_reference_writes_the_same_rows_and_types_as_the_transformer(
    s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    transformer = load_lambda("transformer")
    raw = data.clean_file(tmp_path, 300, seed=11, workers=1)
    s3.put_object(Bucket=BUCKET, Key=RAW_KEY, Body=raw.read_bytes())

    rows = reference.transform(s3, BUCKET, RAW_KEY)
    monkeypatch.setattr(transformer, "s3_client", lambda: s3)
    transformer.lambda_handler(s3_event(BUCKET, RAW_KEY), None)

    def table(k: str):
        return pq.read_table(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()))

    ours = table("bench-reference/transactions-20261125T120000Z-0000012c.parquet")
    name = transformer.output_name(RAW_KEY)
    theirs = table(f"processed/transactions/year=2026/month=11/day=25/{name}.parquet")
    assert rows == 300
    assert ours.schema.remove_metadata().equals(theirs.schema.remove_metadata())
    assert ours.equals(theirs)


def test_a_forced_event_makes_the_transformer_process_content_it_has_already_processed(
    s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    transformer = load_lambda("transformer")
    monkeypatch.setattr(transformer, "s3_client", lambda: s3)
    s3.put_object(
        Bucket=BUCKET, Key=RAW_KEY, Body=data.clean_file(tmp_path, 50, seed=2, workers=1).read_bytes()
    )
    transformer.lambda_handler(s3_event(BUCKET, RAW_KEY), None)

    again = transformer.lambda_handler(s3_event(BUCKET, RAW_KEY), None)
    forced = transformer.lambda_handler(s3_event(BUCKET, RAW_KEY, force=True), None)

    assert again["processed"] == []
    assert [p["rows_written"] for p in forced["processed"]] == [50]


def _loop_lines(stdout: str) -> list[dict[str, Any]]:
    return [
        json.loads(line.removeprefix(_child.LOOP_MARK))
        for line in stdout.splitlines()
        if line.startswith(_child.LOOP_MARK)
    ]


def test_the_loop_counts_each_invocation_and_reads_every_output_back(
    s3, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    s3.put_object(
        Bucket=BUCKET, Key=RAW_KEY, Body=data.clean_file(tmp_path, 120, seed=4, workers=1).read_bytes()
    )

    result = _child.reliability_loop(BUCKET, [RAW_KEY], [120], runs=3)

    entries = _loop_lines(capsys.readouterr().out)
    assert result == {"failures": 0}
    assert [(e["round"], e["key"], e["ok"]) for e in entries] == [(r, RAW_KEY, True) for r in range(3)]


def test_the_loop_reports_a_run_whose_counts_are_wrong_as_a_failure_and_goes_on(
    s3, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    s3.put_object(
        Bucket=BUCKET, Key=RAW_KEY, Body=data.clean_file(tmp_path, 120, seed=4, workers=1).read_bytes()
    )

    result = _child.reliability_loop(BUCKET, [RAW_KEY], [121], runs=2)

    entries = _loop_lines(capsys.readouterr().out)
    assert result == {"failures": 2}
    assert [e["ok"] for e in entries] == [False, False]
    assert "121 records expected; read 120" in entries[0]["error"]


def test_an_output_with_fewer_rows_than_the_handler_reported_fails_the_check(s3):
    table = pa.table({"x": [1, 2, 3]})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    key = "processed/transactions/year=2026/month=11/day=25/x.parquet"
    s3.put_object(Bucket=BUCKET, Key=key, Body=sink.getvalue())

    _child.check_outputs(s3, BUCKET, {"outputs": [key, "quarantine/x.jsonl"], "rows_written": 3})
    with pytest.raises(AssertionError, match="hold 3 rows, the handler reported 4"):
        _child.check_outputs(s3, BUCKET, {"outputs": [key], "rows_written": 4})


@pytest.fixture
def child_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Children's TMPDIRs under the test's own directory, not bench/out/."""
    monkeypatch.setattr(harness, "TMP_ROOT", tmp_path / "children")
    return tmp_path / "children"


def test_the_duckdb_yardstick_converts_every_record_in_a_measured_child(tmp_path: Path, child_tmp: Path):
    raw = data.clean_file(tmp_path, 200, seed=6, workers=1)
    target = tmp_path / "out.parquet"

    result = harness.run_child(["duckdb", "--source", str(raw), "--target", str(target)], {})

    assert result["rows"] == 200
    assert result["process_cpu_s"] >= result["work_cpu_s"] > 0
    assert result["peak_rss_mib"] > 0
    assert not target.exists()
    assert list(child_tmp.iterdir()) == []


def test_a_failing_child_raises_with_its_error(tmp_path: Path, child_tmp: Path):
    with pytest.raises(harness.BenchError, match="exited with 1"):
        harness.run_child(["duckdb", "--source", str(tmp_path / "missing.json"), "--target", "x"], {})


def test_the_tmp_size_counts_every_file_below_the_directory(tmp_path: Path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.parquet").write_bytes(b"x" * 1000)
    (tmp_path / "y.jsonl").write_bytes(b"y" * 24)

    assert harness.tree_bytes(tmp_path) == 1024


# --- Arguments ------------------------------------------------------------------------------------------


def test_by_default_every_section_runs_and_the_sizes_include_the_generators_maximum():
    args = bench_run.parse_args([])

    assert args.only == set(bench_run.SECTIONS)
    assert args.sizes == [100_000, 1_000_000, 3_000_000, 7_000_000]
    assert (args.records, args.repeat, args.runs, args.rate) == (1_000_000, 3, 50, 100_000)


def test_quick_shrinks_every_section_but_keeps_the_generators_maximum_for_the_limits_and_the_loop():
    args = bench_run.parse_args(["--quick"])

    assert (args.records, args.repeat, args.runs, args.rate) == (50_000, 1, 3, 100_000)
    assert args.sizes == [50_000, 100_000]


def test_loop_runs_only_the_reliability_loop():
    assert bench_run.parse_args(["--loop", "--runs", "7"]).only == {"loop"}
    assert bench_run.parse_args(["--loop", "--runs", "7"]).runs == 7


def test_mechanisms_are_all_measured_by_default_and_a_choice_keeps_the_docstrings_order():
    assert bench_run.parse_args([]).mechanisms == list(mechanisms.NAMES)
    assert bench_run.parse_args(["--mechanisms", "seen_ids, fast_path"]).mechanisms == [
        "fast_path",
        "seen_ids",
    ]


def test_sizes_are_parsed_sorted_and_deduplicated():
    assert bench_run.parse_args(["--sizes", "3_000,1000,1000"]).sizes == [1_000, 3_000]


@pytest.mark.parametrize(
    "argv",
    [
        ["--only", "transformer,speed"],
        ["--sizes", "0"],
        ["--sizes", "ten"],
        ["--runs", "0"],
        ["--repeat", "-1"],
        ["--mechanisms", "fast_path,bloom_filter"],
        ["--mechanisms", ","],
    ],
)
def test_bad_arguments_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        bench_run.parse_args(argv)
    assert "error" in capsys.readouterr().err


def test_limits_come_from_the_template_with_lambdas_default_tmp(tmp_path: Path):
    template = tmp_path / "template.yaml"
    template.write_text(
        "Resources:\n"
        "  A:\n    Type: AWS::Lambda::Function\n    Properties: {MemorySize: 640, Timeout: 90}\n"
        "  B:\n    Type: AWS::Lambda::Function\n"
        "    Properties: {MemorySize: 1024, Timeout: 300, EphemeralStorage: {Size: 2048}}\n",
        encoding="utf-8",
    )

    assert bench_run.function_limits("A", template) == {"memory_mb": 640, "timeout_s": 90, "tmp_mb": 512}
    assert bench_run.function_limits("B", template) == {"memory_mb": 1024, "timeout_s": 300, "tmp_mb": 2048}
    with pytest.raises(bench_run.BenchError, match="C"):
        bench_run.function_limits("C", template)


def test_the_stacks_transformer_and_compactor_have_literal_limits():
    for function in ("TransformerFunction", "CompactorFunction"):
        limits = bench_run.function_limits(function)
        assert all(isinstance(v, int) and v > 0 for v in limits.values())


# --- Issue 8's goals ------------------------------------------------------------------------------------


def _run(work_s: float, cpu_s: float, peak: float = 200.0, pinned: bool = True) -> dict[str, Any]:
    return {
        "work_s": work_s,
        "work_cpu_s": cpu_s,
        "process_cpu_s": cpu_s + 0.5,
        "peak_rss_mib": peak,
        "pinned": pinned,
        "quarantined": 10_000,
    }


def _section(**overrides: dict[str, Any]) -> dict[str, Any]:
    section: dict[str, Any] = {
        "raw_mib": 260.0,
        "reference": _run(2.0, 2.0, peak=600),
        "transformer": _run(2.0, 2.0),
        "reference_one_core": _run(2.0, 2.0, peak=600),
        "transformer_one_core": _run(2.0, 2.0),
        "malformed_one_core": _run(3.0, 3.0),
        "duckdb_one_core": _run(1.0, 1.0),
    }
    section.update(overrides)
    return section


def _goal(figures: list[model.Figure], starts: str) -> model.Figure:
    (figure,) = [f for f in figures if f.figure.startswith(starts)]
    return figure


@pytest.mark.parametrize(("cpu_s", "expected"), [(2.58, True), (2.6, True), (2.62, False)])
def test_the_cpu_goal_passes_at_most_1_3_times_the_references_cpu_on_one_core(cpu_s: float, expected: bool):
    figures = model.transformer_figures(_section(transformer_one_core=_run(2.0, cpu_s)), 1_000_000)

    assert _goal(figures, "CPU s").passed is expected


def test_the_cpu_figure_shows_the_fastest_round_of_each_beside_the_medians():
    rounds = {"runs": [{"work_cpu_s": s} for s in (2.4, 2.0, 2.9)]}
    figures = model.transformer_figures(
        _section(
            transformer_one_core={**_run(2.0, 3.0), **rounds},
            reference_one_core={"runs": [{"work_cpu_s": s} for s in (1.6, 2.5, 2.2)], **_run(2.0, 2.2)},
        ),
        1_000_000,
    )

    cpu = _goal(figures, "CPU s")
    assert "minima of 3 rounds 2.00 vs 1.60 s = 1.25x" in cpu.measured
    assert cpu.passed is False  # the verdict stays on the medians: 3.0 / 2.2


@pytest.mark.parametrize(("work_s", "expected"), [(2.5, True), (2.52, False)])
def test_the_wall_goal_passes_at_most_1_25_times_the_references_wall_time_unpinned(
    work_s: float, expected: bool
):
    figures = model.transformer_figures(_section(transformer=_run(work_s, 1.0)), 1_000_000)

    assert (
        _goal(figures, "wall time through moto's S3, 1,000,000 records (260 MiB), unpinned").passed
        is expected
    )


@pytest.mark.parametrize(("cpu_s", "expected"), [(2.98, True), (3.02, False)])
def test_the_malformed_goal_passes_at_most_1_5_times_the_clean_files_cpu(cpu_s: float, expected: bool):
    figures = model.transformer_figures(_section(malformed_one_core=_run(9.0, cpu_s)), 1_000_000)

    assert _goal(figures, "1% malformed").passed is expected


@pytest.mark.parametrize(("peak", "expected"), [(256.0, True), (257.0, False)])
def test_the_memory_goal_takes_the_highest_peak_of_the_clean_runs(peak: float, expected: bool):
    figures = model.transformer_figures(_section(transformer=_run(2.0, 2.0, peak=peak)), 1_000_000)

    assert _goal(figures, "peak RSS").passed is expected


def test_the_duckdb_yardstick_and_the_one_core_wall_time_are_reported_without_a_verdict():
    figures = model.transformer_figures(_section(), 1_000_000)

    assert _goal(figures, "yardstick").passed is None
    assert _goal(figures, "wall time through moto's S3, 1,000,000 records (260 MiB), one core").passed is None
    assert "2.00x DuckDB's" in _goal(figures, "yardstick").measured


def test_runs_that_could_not_be_pinned_say_so():
    figures = model.transformer_figures(
        _section(transformer_one_core=_run(2.0, 2.0, pinned=False)), 1_000_000
    )

    assert "NOT pinned" in _goal(figures, "CPU s").figure


def test_a_failed_goal_shows_as_fail_in_the_table():
    figures = model.transformer_figures(_section(transformer_one_core=_run(2.0, 9.0)), 1_000_000)

    table = model.render(figures)

    failed = [line for line in table.splitlines() if line.endswith("| FAIL   |")]
    assert len(failed) == 1
    assert failed[0].startswith("| CPU s")


# --- Lambda estimates and the largest file per memory setting -------------------------------------------


def test_lambda_time_scales_cpu_by_the_memory_share_up_to_one_vcpu():
    assert model.lambda_seconds(2.0, ONE_VCPU_MB) == pytest.approx(2.0)
    assert model.lambda_seconds(2.0, ONE_VCPU_MB / 4) == pytest.approx(8.0)
    assert model.lambda_seconds(2.0, 3008) == pytest.approx(2.0)


def _points(
    rss: tuple[float, float], cpu: tuple[float, float], tmp: tuple[float, float]
) -> list[dict[str, Any]]:
    """Measurements lying exactly on the given lines (intercept, per record)."""
    return [
        {
            "records": n,
            "raw_bytes": n * 273,
            "peak_rss_mib": rss[0] + rss[1] * n,
            "work_cpu_s": cpu[0] + cpu[1] * n,
            "tmp_peak_mib": tmp[0] + tmp[1] * n,
        }
        for n in (100_000, 1_000_000, 3_000_000)
    ]


def test_the_largest_file_is_where_the_first_limit_with_headroom_is_reached():
    rss, cpu, tmp = (100.0, 50e-6), (0.2, 2e-6), (0.0, 47e-6)
    points = _points(rss, cpu, tmp)

    rows = {r["memory_mb"]: r for r in model.largest_files(points, timeout_s=120, tmp_mb=512)}

    for memory, row in rows.items():
        share = min(memory, ONE_VCPU_MB) / ONE_VCPU_MB
        bounds = {
            "memory": (0.9 * memory - rss[0]) / rss[1],
            "time": (0.9 * 120 * share - cpu[0]) / cpu[1],
            "/tmp": (0.9 * 512 - tmp[0]) / tmp[1],  # noqa: S108 - a label
        }
        limit = min(bounds, key=lambda k: bounds[k])
        assert row["limited_by"] == limit
        assert row["records"] == pytest.approx(bounds[limit], abs=1)
        assert row["raw_mib"] == pytest.approx(row["records"] * 273 / 2**20)
        assert row["extrapolated"] is (row["records"] > 3_000_000)
    assert rows[512]["limited_by"] == "memory"
    assert rows[3008]["limited_by"] == "/tmp"  # noqa: S108 - a label


def test_with_flat_memory_the_timeout_bounds_the_file_and_more_memory_buys_cpu_up_to_one_vcpu():
    points = _points((200.0, 0.0), (0.3, 2e-6), (0.0, 1e-6))

    rows = {r["memory_mb"]: r for r in model.largest_files(points, timeout_s=120, tmp_mb=10_240)}

    assert rows[512]["bounds"]["memory"] is None
    assert [rows[m]["limited_by"] for m in (512, 1024, 1769, 3008)] == ["time"] * 4
    assert rows[512]["records"] < rows[1024]["records"] < rows[1769]["records"] == rows[3008]["records"]
    assert rows[1769]["lambda_s"] == pytest.approx(0.9 * 120, rel=1e-4)


def test_a_setting_whose_fixed_cost_alone_exceeds_it_handles_no_file():
    points = _points((600.0, 1e-6), (0.3, 2e-6), (0.0, 1e-6))

    rows = {r["memory_mb"]: r for r in model.largest_files(points, timeout_s=120, tmp_mb=512)}

    assert rows[512]["records"] == 0
    assert rows[512]["limited_by"] == "memory"
    assert rows[1024]["records"] > 0


def test_a_single_size_is_extrapolated_in_proportion():
    line = model.fit([{"records": 1_000, "peak_rss_mib": 50.0}], "peak_rss_mib")

    assert line.at(2_000) == pytest.approx(100.0)
    assert math.isinf(model.Line(10.0, 0.0).solve(20.0))


# --- Issue 10's limits ----------------------------------------------------------------------------------


def test_a_measure_passes_its_limit_only_with_ten_percent_to_spare():
    limits = {"memory_mb": 100, "tmp_mb": 512, "timeout_s": 30}

    rows = model.limit_rows(
        "generator", 100_000, peak_rss_mib=90.0, tmp_mib=461.0, lambda_s=27.5, limits=limits
    )

    by_measure = {r["measure"]: r for r in rows}
    assert by_measure["peak RSS"]["headroom"] == pytest.approx(0.10)
    assert by_measure["peak RSS"]["passed"] is True
    assert by_measure["peak /tmp"]["passed"] is False
    assert by_measure["estimated Lambda time"]["passed"] is False


def test_a_function_not_measured_is_listed_with_the_reason_and_no_verdict():
    figures = model.limit_figures([], {"generator": "the generator's child failed: MemoryError"})

    (figure,) = figures
    assert figure.passed is None
    assert "MemoryError" in figure.measured


class _FakeCompactorDay:
    """bench/compactor_day.py's interface: main(argv) writes its JSON report to --out and prints a table."""

    def __init__(self, peak: dict[str, float]) -> None:
        self.peak = peak
        self.argv: list[str] = []

    def main(self, argv: list[str]) -> int:
        self.argv = argv
        report = {
            "files": int(argv[argv.index("--files") + 1]) if "--files" in argv else 288,
            "s3_mib_per_s": 50.0,
            "s3_request_ms": 20.0,
            "limits": {"memory_mb": 1024, "tmp_mb": 1024, "timeout_s": 300, "part_rows": 5_000_000},
            "peak": self.peak,
        }
        Path(argv[argv.index("--out") + 1]).write_text(json.dumps(report), encoding="utf-8")
        print("its own table")
        return 1


def test_the_compactors_day_report_is_folded_into_the_limits(tmp_path: Path):
    fake = _FakeCompactorDay({"rss_mib": 500.0, "tmp_mib": 950.0, "lambda_s": 100.0})

    report = bench_run.compactor_day(100_000, quick=False, module=fake, out=tmp_path / "day.json")
    rows = {r["measure"]: r for r in bench_run.compactor_rows(100_000, report)}

    assert fake.argv[:2] == ["--rate", "100000"]
    assert report["printed"] == "its own table\n"
    assert (rows["peak RSS"]["limit"], rows["peak RSS"]["passed"]) == (1024, True)
    assert (rows["peak /tmp"]["value"], rows["peak /tmp"]["passed"]) == (950.0, False)
    assert rows["estimated Lambda time"]["headroom"] == pytest.approx(2 / 3)


class _Silent:
    """A compactor_day stand-in that fails before writing its report."""

    def main(self, argv: list[str]) -> int:
        print("crashed")
        return 1


def test_a_compactor_day_that_writes_no_report_stops_the_bench_even_if_an_old_report_is_there(tmp_path: Path):
    old = tmp_path / "day.json"
    old.write_text(json.dumps({"peak": {"rss_mib": 1.0}}), encoding="utf-8")

    with pytest.raises(harness.BenchError, match="wrote no report"):
        bench_run.compactor_day(100_000, quick=False, module=_Silent(), out=old)


def test_a_quick_run_builds_a_small_day_for_the_compactor(tmp_path: Path):
    fake = _FakeCompactorDay({"rss_mib": 1.0, "tmp_mib": 1.0, "lambda_s": 1.0})

    report = bench_run.compactor_day(100_000, quick=True, module=fake, out=tmp_path / "day.json")

    assert report["files"] == 3


# --- Issue 8's reliability loop -------------------------------------------------------------------------


def _files() -> list[dict[str, Any]]:
    return [
        {"label": "max", "key": "a", "records": 100_000, "bytes": 27 << 20, "last_block_bytes": 3 << 20},
        {"label": "race", "key": "b", "records": 92_000, "bytes": 24 << 20, "last_block_bytes": 65536},
    ]


def _entries(runs: int, bad: frozenset[tuple[int, str]] = frozenset()) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for round_ in range(runs):
        for key in ("a", "b"):
            ok = (round_, key) not in bad
            entry = {"round": round_, "key": key, "s": 0.5 + round_ / 100, "ok": ok}
            out.append(entry if ok else {**entry, "error": "OSError: Column 11 had 30736"})
    return out


def test_the_loop_passes_when_every_file_went_through_every_run():
    loop = model.summarise_loop(_entries(50), _files(), runs=50, exit_code=0)

    assert loop["passed"] is True
    assert [(f["ok"], f["min_s"], f["max_s"]) for f in loop["files"]] == [(50, 0.5, 0.99)] * 2
    assert all(f.passed for f in model.loop_figures(loop))


def test_one_failed_run_fails_the_loop_and_its_error_is_shown():
    loop = model.summarise_loop(_entries(50, frozenset({(7, "b")})), _files(), runs=50, exit_code=0)

    figures = model.loop_figures(loop)

    assert loop["passed"] is False
    assert [f.passed for f in figures] == [True, False]
    assert "49/50" in figures[1].measured
    assert "Column 11 had 30736" in figures[1].measured


def test_a_crash_fails_the_loop_and_says_after_how_many_invocations():
    loop = model.summarise_loop(_entries(50)[:13], _files(), runs=50, exit_code=-11)

    figures = model.loop_figures(loop)

    assert loop["passed"] is False
    assert not any(f.passed for f in figures)
    assert "killed by SIGSEGV after 13 invocations" in figures[0].measured


def test_a_saved_run_is_reported_again_without_measuring(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    saved = {
        "command": "python -m bench.run --loop",
        "machine": {"cpu": "CPU", "cores": 2, "memory": "1 GiB", "python": "3.11", "taskset": True},
        "load_average_at_start": [1.0, 1.0, 1.0],
        "load_average_at_end": [2.0, 2.0, 2.0],
        "quick": False,
        "failed_runs": [],
        "loop": model.summarise_loop(_entries(50, frozenset({(3, "a")})), _files(), runs=50, exit_code=0),
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(saved), encoding="utf-8")

    status = bench_run.main(["--report", str(path)])

    printed = capsys.readouterr().out
    assert status == 1
    assert "Command: python -m bench.run --loop" in printed
    assert "49/50 without an error" in printed


# --- Small files: the warm invocation and its S3 requests -----------------------------------------------


def test_the_request_counter_counts_each_request_a_client_sends_by_operation(s3):
    counter = _child.RequestCounter(s3)

    s3.put_object(Bucket=BUCKET, Key="a", Body=b"x")
    s3.get_object(Bucket=BUCKET, Key="a")["Body"].read()
    s3.head_object(Bucket=BUCKET, Key="a")
    s3.get_object(Bucket=BUCKET, Key="a")

    assert counter.counts == {"PutObject": 1, "GetObject": 2, "HeadObject": 1}
    assert counter.total() == 4


def _small(median_s: float, requests: int, by_operation: dict[str, int]) -> dict[str, Any]:
    return {
        "median_s": median_s,
        "first_s": median_s * 2,
        "n": 10,
        "requests_per_invocation": requests,
        "requests_by_operation": by_operation,
    }


def test_the_warm_small_file_figure_is_reported_with_each_implementations_requests_and_no_verdict():
    small = {
        "transformer": _small(0.08, 8, {"GetObject": 30, "HeadObject": 10, "PutObject": 40}),
        "reference": _small(0.02, 2, {"GetObject": 10, "PutObject": 10}),
    }

    figures = model.small_file_figures(None, small)

    warm = _goal(figures, "warm invocation")
    assert warm.passed is None
    assert warm.value == pytest.approx(4.0)
    assert "S3 requests per invocation 8 (GetObject 3, HeadObject 1, PutObject 4)" in warm.measured
    assert "vs reference 2 (GetObject 1, PutObject 1)" in warm.measured
    assert "state read, lock, commit and HEAD" in warm.target


def test_a_small_file_run_saved_before_requests_were_counted_is_still_reported():
    old = {"median_s": 0.05, "first_s": 0.1, "n": 40}

    figures = model.small_file_figures(None, {"transformer": old, "reference": {**old, "median_s": 0.025}})

    assert _goal(figures, "warm invocation").measured == "50.0 ms vs reference 25.0 ms = 2.00x"


def test_the_handlers_of_the_compaction_section_get_a_tmp_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(queries, "TMP_ROOT", tmp_path / "tmp")
    outside = tempfile.gettempdir()

    with queries.handlers_on("http://127.0.0.1:9") as (_, _, compactor):
        inside = Path(tempfile.gettempdir())
        (inside / f"{compactor.TMP_PREFIX}live").mkdir()

    assert inside.parent == tmp_path / "tmp"
    assert not inside.exists()
    assert tempfile.gettempdir() == outside


# --- The transformer's mechanisms -----------------------------------------------------------------------

SMALL_KEY = "raw/year=2026/month=11/day=25/transactions-20261125T000500Z-00000001.json"


def test_the_fake_s3_refuses_a_conditional_put_whose_condition_fails():
    s3 = mechanisms.FakeS3()
    etag = s3.put_object(Bucket="b", Key="k", Body=b"one", IfNoneMatch="*")["ETag"]

    with pytest.raises(ClientError, match="PreconditionFailed"):
        s3.put_object(Bucket="b", Key="k", Body=b"two", IfNoneMatch="*")
    with pytest.raises(ClientError, match="PreconditionFailed"):
        s3.put_object(Bucket="b", Key="k", Body=b"two", IfMatch='"other"')
    s3.put_object(Bucket="b", Key="k", Body=io.BytesIO(b"two"), IfMatch=etag)
    assert s3.get_object(Bucket="b", Key="k")["Body"].read() == b"two"
    with pytest.raises(ClientError, match="NoSuchKey"):
        s3.head_object(Bucket="b", Key="missing")


def test_the_transformer_runs_whole_invocations_on_the_fake_s3_as_on_s3():
    transformer = load_lambda("transformer")
    ((_, body),) = data.small_bodies(1, seed=3)
    s3 = mechanisms.FakeS3()
    s3.put_object(Bucket=mechanisms.BUCKET, Key=SMALL_KEY, Body=body)

    rows = mechanisms.per_call(transformer, s3, SMALL_KEY, calls=3)()
    obj = transformer.S3Object(mechanisms.BUCKET, SMALL_KEY)
    unforced = transformer.process_object(s3, obj, mechanisms.BUCKET)

    name = transformer.output_name(SMALL_KEY)
    table = pq.read_table(
        io.BytesIO(s3.objects[f"processed/transactions/year=2026/month=11/day=25/{name}.parquet"][0])
    )
    state = json.loads(s3.objects[transformer.state_key(SMALL_KEY)][0])
    assert rows == 1
    assert table.num_rows == 1
    assert (state["lock"], state["rows_written"]) == (None, 1)
    assert unforced is not None
    assert unforced["skipped"] == "content already processed"


def test_a_patch_switches_a_mechanism_off_only_while_it_runs():
    transformer = load_lambda("transformer")
    limit = transformer.SMALL_BLOCK_LINES

    seen = mechanisms.with_patch(lambda: transformer.SMALL_BLOCK_LINES, transformer, SMALL_BLOCK_LINES=0)()
    with pytest.raises(ZeroDivisionError), mechanisms.patched(transformer, SMALL_BLOCK_LINES=0):
        _ = 1 / transformer.SMALL_BLOCK_LINES

    assert seen == 0
    assert limit == transformer.SMALL_BLOCK_LINES


def test_interleaving_runs_every_variant_each_round_in_alternating_order_and_keeps_the_minimum():
    order: list[str] = []

    def variant(name: str) -> Any:
        def run() -> str:
            order.append(name)
            return name

        return run

    measured = mechanisms.interleaved({"a": variant("a"), "b": variant("b")}, rounds=3)

    assert order == ["a", "b", "b", "a", "a", "b"]
    assert measured["a"]["min_cpu_s"] == min(measured["a"]["cpu_s"])
    assert len(measured["b"]["cpu_s"]) == 3
    assert measured["b"]["result"] == "b"


def test_every_mechanism_and_its_alternative_write_the_same_rows(tmp_path: Path):
    transformer = load_lambda("transformer")
    clean = {records: data.clean_file(tmp_path, records, seed=5, workers=1) for records in (100, 400)}
    malformed = data.malformed_file(clean[400])
    bodies = {1 + i % 3: body for i, (_, body) in enumerate(data.small_bodies(3, seed=5))}

    section = mechanisms.measure(
        transformer,
        clean=clean,
        malformed=malformed,
        rounds=1,
        call_rounds=1,
        calls=2,
        small_bodies={1: bodies[1], 3: bodies[3]},
    )

    assert section["fast_path"]["400"]["fast"]["result"] == (400, 0)
    assert section["routing"]["routed"]["result"] == (396, 4)
    assert section["small_blocks"]["3"]["pyarrow"]["result"] == 3
    assert section["seen_ids"]["ids"] == 400
    assert section["seen_ids"]["seen_ids"]["held_mib"] < section["seen_ids"]["python_set"]["held_mib"]
    assert section["in_memory"]["tmp_dir"]["ms_per_call"] > 0
    rows = model.mechanism_rows(section)
    assert [name for name, _, _ in rows] == [
        "fast_path",
        "fast_path",
        "routing",
        "small_blocks",
        "small_blocks",
        "seen_ids",
        "in_memory",
    ]


def test_variants_that_write_different_rows_stop_the_measurement():
    with pytest.raises(AssertionError, match="the variants disagree"):
        mechanisms._same({"a": {"result": (3, 0)}, "b": {"result": (2, 1)}}, "x")


def _timed(cpu_s: float) -> dict[str, Any]:
    return {"min_cpu_s": cpu_s, "cpu_s": [cpu_s], "result": 0}


def _mechanisms(**overrides: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "rounds": 3,
        "call_rounds": 7,
        "calls": 200,
        "small_block_lines": 32,
        "in_memory_bytes": 8 << 20,
        "fast_path": {"1000000": {"fast": _timed(3.0), "exact_only": _timed(30.0)}},
        "routing": {"records": 1_000_000, "routed": _timed(4.0), "line_by_line": _timed(32.0)},
        "small_blocks": {
            "1": {
                "exact_path": {**_timed(0.4), "ms_per_call": 2.0},
                "pyarrow": {**_timed(0.6), "ms_per_call": 3.0},
            }
        },
        "seen_ids": {
            "ids": 1_048_576,
            "seen_ids": {**_timed(0.5), "peak_mib": 40.0, "held_mib": 16.0},
            "python_set": {**_timed(1.0), "peak_mib": 160.0, "held_mib": 120.0},
        },
        "in_memory": {
            "records": 1,
            "in_memory": {**_timed(0.4), "ms_per_call": 2.0},
            "tmp_dir": {**_timed(0.5), "ms_per_call": 2.5},
        },
    }
    section.update(overrides)
    return section


def test_each_mechanisms_gain_is_its_alternatives_cost_over_its_own():
    rows = {name: gain for name, _, gain in model.mechanism_rows(_mechanisms())}

    assert rows["fast_path"].startswith("10.0x less CPU: 3.00 s vs 30.00 s")
    assert rows["routing"].startswith("8.0x less CPU: 4.00 s vs 32.00 s")
    assert rows["small_blocks"].startswith("1.00 ms less CPU per call (1.50x): 2.00 ms vs 3.00 ms")
    assert rows["seen_ids"].startswith(
        "4.0x less memory: peak 40 vs 160 MiB, held at the end 16 vs 120 bytes"
    )
    assert rows["in_memory"].startswith("0.50 ms less CPU per call (1.25x)")


def test_a_mechanism_that_does_not_pay_is_flagged():
    slower = {
        "records": 1,
        "in_memory": {**_timed(0.5), "ms_per_call": 2.5},
        "tmp_dir": {**_timed(0.4), "ms_per_call": 2.0},
    }

    rows = {name: gain for name, _, gain in model.mechanism_rows(_mechanisms(in_memory=slower))}

    assert rows["in_memory"].startswith("NO GAIN: -0.50 ms less CPU per call (0.80x)")
    assert not rows["fast_path"].startswith("NO GAIN")


def test_the_mechanisms_table_gives_the_command_that_measures_each_row():
    table = bench_run.mechanisms_table(_mechanisms(), quick=False)

    assert 'make bench ARGS="--only mechanisms --mechanisms routing"' in table
    assert "taskset -c 0" in table
