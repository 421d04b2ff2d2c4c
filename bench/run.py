"""`make bench`: the transformer as Lambda bills it, the gain of each of its mechanisms, the largest file per
memory setting, every function against its limits at the generator's maximum rate, and the 50-run
reliability loop; as tables and JSON.

Everything runs on this machine against moto's S3 server on 127.0.0.1 (no AWS account, no network).
The data is generated here from a seed with the generator's own functions and cached in bench/out/data/.
Each measured run is a fresh child process (bench/_child.py) that reports its own CPU seconds and peak
RSS (VmHWM); the parent adds the whole process's CPU from wait4 and the peak of its fresh TMPDIR. Runs
said to be on one core are pinned with `taskset -c 0`. docs/performance.md explains each figure.

    .venv/bin/python -m bench.run                 # everything (about 16 minutes on 2 shared cores)
    .venv/bin/python -m bench.run --quick         # a smoke run of every section (figures not meaningful)
    .venv/bin/python -m bench.run --loop          # only the reliability loop (50 runs of each file)
    .venv/bin/python -m bench.run --only mechanisms --mechanisms seen_ids   # one mechanism's gain
    .venv/bin/python -m bench.run --only transformer,limits
    .venv/bin/python -m bench.run --transformer path/to/candidate.py   # measure a candidate file
    .venv/bin/python -m bench.run --report bench/out/results.json      # the tables of a saved run
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import data, generator_run, mechanisms, model, queries
from bench._child import LOOP_MARK
from bench.harness import (
    BUCKET,
    MIB,
    OUT,
    ROOT,
    BenchError,
    aws_env,
    log,
    machine,
    median,
    moto_server,
    run_child,
    s3_for,
    spawn,
    upload,
)
from bench.model import Figure

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# bench.generator_run and bench.compactor_day import these from here.
__all__ = ["BUCKET", "MIB", "BenchError", "aws_env", "machine", "main", "moto_server", "s3_for"]

SECTIONS = ("transformer", "mechanisms", "sizes", "limits", "loop", "small", "queries", "compaction")
TEMPLATE = ROOT / "infra" / "template.yaml"
DAY_PREFIX = "raw/year=2026/month=11/day=25/"
# The transformer reads an object in blocks of this many bytes; the loop's second file ends just past a
# whole number of them, so that its last block is small after big ones.
BLOCK_BYTES = 8 * MIB
# A three-record object each warm child processes first, untimed.
ATTEMPTS = 3
FAILED_RUNS: list[dict[str, Any]] = []
WARMUP_KEY = "raw/year=2026/month=11/day=24/transactions-20261124T000500Z-0000warm.json"
TITLES = {
    "transformer": "Issue 8: the transformer against the bare reference, as Lambda bills it",
    "mechanisms": "Issue 8: what each of the transformer's mechanisms saves against the simplest alternative",
    "sizes": "Issue 8: the largest file each memory setting handles",
    "limits": "Issue 10: every function against its limits at the generator's maximum rate",
    "loop": "Issue 8: the reliability loop (one process, like a warm Lambda container)",
    "small": "Small files, the normal case",
    "queries": "Queries: raw JSON against the processed Parquet",
    "compaction": "Compaction: a day of small files against the compacted file",
}


def raw_key(records: int, stamp: str) -> str:
    """A raw key as the generator names them: the stamp tells the runs apart, the hex the file's size."""
    return f"{DAY_PREFIX}transactions-20261125T{stamp}Z-{records:08x}.json"


def function_limits(logical_id: str, template: Path = TEMPLATE) -> dict[str, int]:
    """A function's MemorySize (MB), Timeout (s) and /tmp (MB; 512 when EphemeralStorage is unset)."""
    from cfnlint.decode import decode  # noqa: PLC0415 - only the limits need it

    decoded, problems = decode(str(template))
    if problems or decoded is None:
        raise BenchError(f"{template} does not parse: {problems}")
    try:
        properties = decoded["Resources"][logical_id]["Properties"]
        return {
            "memory_mb": int(properties["MemorySize"]),
            "timeout_s": int(properties["Timeout"]),
            "tmp_mb": int(properties.get("EphemeralStorage", {}).get("Size", generator_run.DEFAULT_TMP_MB)),
        }
    except (KeyError, TypeError, ValueError) as e:
        raise BenchError(f"{template}: no literal MemorySize/Timeout for {logical_id}: {e!r}") from e


class Uploads:
    """Each local file uploaded once per key."""

    def __init__(self, s3: S3Client) -> None:
        self.s3 = s3
        self.done: set[str] = set()

    def put(self, path: Path, key: str) -> str:
        if key not in self.done:
            log(f"uploading {path.name} ({path.stat().st_size / MIB:.0f} MiB) as {key}")
            upload(self.s3, path, key)
            self.done.add(key)
        return key


# --- Issue 8: the transformer against the reference -----------------------------------------------------


def work_run(
    endpoint: str,
    key: str,
    impl: str = "transformer",
    *,
    pin: bool,
    warm: bool = True,
    profile: Path | None = None,
) -> dict[str, Any]:
    """One invocation in a fresh child: warm (after an untimed three-record object), or else the first
    invocation of a cold start. A child that fails is run again, up to ATTEMPTS in all, and every failure
    is kept in FAILED_RUNS and printed with the report: the figure needs one good run, the reader needs to
    know about the bad ones (the reliability loop is where failures are counted)."""
    args = ["work", "--impl", impl, "--bucket", BUCKET]
    if warm:
        args += ["--key", WARMUP_KEY]
    args += ["--key", key]
    if profile is not None:
        args += ["--profile", str(profile)]
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return run_child(args, aws_env(endpoint), pin=pin)
        except BenchError as e:
            last = str(e).strip().splitlines()[-1]
            FAILED_RUNS.append({"impl": impl, "key": key, "attempt": attempt, "error": last})
            log(f"{impl} on {key} failed (attempt {attempt} of {ATTEMPTS}): {last}")
            if attempt == ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the times, maxima of the peaks, every run's values kept."""
    return {
        "work_s": median([r["work_s"] for r in runs]),
        "work_cpu_s": median([r["work_cpu_s"] for r in runs]),
        "process_cpu_s": median([r["process_cpu_s"] for r in runs]),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "tmp_peak_mib": max(r["tmp_peak_mib"] for r in runs),
        "rows": runs[0]["rows"],
        "quarantined": runs[0].get("quarantined", 0),
        "pinned": all(r["pinned"] for r in runs),
        "pandas_loaded": any(r["pandas_loaded_at_end"] for r in runs),
        "runs": [
            {
                k: round(r[k], 3)
                for k in ("work_s", "work_cpu_s", "process_cpu_s", "peak_rss_mib", "tmp_peak_mib")
            }
            for r in runs
        ],
    }


def transformer_section(
    endpoint: str, uploads: Uploads, raw: Path, *, repeat: int, work: Path, profile: bool
) -> dict[str, Any]:
    """Reference and transformer on the clean file, unpinned and on one core, the transformer on the file
    with 1% malformed lines and DuckDB's conversion on one core: interleaved, `repeat` rounds, so that
    drift in the machine hits them alike."""
    records = data.line_count(raw)
    key = uploads.put(raw, raw_key(records, "120000"))
    bad = data.malformed_file(raw)
    bad_key = uploads.put(bad, raw_key(records, "130000"))
    names = ("reference", "transformer", "reference_one_core", "transformer_one_core", "malformed_one_core")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in (*names, "duckdb_one_core")}
    duck_target = work / "duckdb-yardstick.parquet"
    for round_ in range(repeat):
        log(f"transformer: round {round_ + 1} of {repeat} on {records:,} records")
        runs["reference"].append(work_run(endpoint, key, "reference", pin=False))
        runs["transformer"].append(work_run(endpoint, key, pin=False))
        runs["reference_one_core"].append(work_run(endpoint, key, "reference", pin=True))
        runs["transformer_one_core"].append(work_run(endpoint, key, pin=True))
        runs["malformed_one_core"].append(work_run(endpoint, bad_key, pin=True))
        args = ["duckdb", "--source", str(raw), "--target", str(duck_target)]
        runs["duckdb_one_core"].append(run_child(args, {}, pin=True))
    section: dict[str, Any] = {name: summary(r) for name, r in runs.items()}
    for name in (*names[:4], "duckdb_one_core"):
        if section[name]["rows"] != records:
            raise BenchError(f"{name} wrote {section[name]['rows']} rows of {records} clean records")
    bad_run = section["malformed_one_core"]
    if bad_run["rows"] + bad_run["quarantined"] != records or bad_run["quarantined"] != records // 100:
        raise BenchError(f"malformed file: {bad_run['rows']} rows + {bad_run['quarantined']} quarantined")
    if profile:
        for name, target in (("", key), ("-malformed", bad_key)):
            path = OUT / f"profile-transformer{name}.txt"
            work_run(endpoint, target, pin=True, profile=path)
            log(f"profile written to {path}")
    section.update(records=records, raw_mib=raw.stat().st_size / MIB, keys=[key, bad_key])
    return section


# --- Issue 8: the transformer's mechanisms -------------------------------------------------------------


def mechanisms_section(
    sizes: list[int],
    names: list[str],
    *,
    rounds: int,
    call_rounds: int,
    calls: int,
    seed: int,
    work: Path,
    workers: int,
) -> dict[str, Any]:
    """bench/mechanisms.py in one child pinned to one core, on the clean files of `sizes` records and the
    largest one with 1% malformed lines."""
    clean = {records: data.clean_file(work, records, seed, workers) for records in sizes}
    spec = {
        "clean": {str(records): str(path) for records, path in clean.items()},
        "malformed": str(data.malformed_file(clean[max(sizes)])),
        "names": names,
        "rounds": rounds,
        "call_rounds": call_rounds,
        "calls": calls,
        "seed": seed,
    }
    log(f"mechanisms: {', '.join(names)} on {', '.join(f'{n:,}' for n in sizes)} records, one core")
    result = run_child(["mechanisms", "--spec", json.dumps(spec)], {}, pin=True)
    result["names"] = names
    return result


def mechanisms_table(section: dict[str, Any], quick: bool) -> str:
    base = "--only mechanisms" + (" --quick" if quick else "")
    return model.render_grid(
        ("mechanism", "measured gain", "command"),
        [
            (mechanism, gain, f'make bench ARGS="{base} --mechanisms {name}"')
            for name, mechanism, gain in model.mechanism_rows(section)
        ],
    ) + (
        "\nCPU seconds on one core (taskset -c 0), in one process, no S3: a per-call figure is the handler's "
        "own work (bench/mechanisms.py says how each alternative is made)."
    )


# --- Issue 8: the largest file each memory setting handles ----------------------------------------------


def sizes_section(
    endpoint: str, uploads: Uploads, sizes: list[int], *, seed: int, work: Path, workers: int
) -> dict[str, Any]:
    """The transformer's first invocation after a cold start, on one core, at each size: its CPU, peak RSS
    and peak /tmp; then the straight lines through them and the largest file per memory setting."""
    limits = function_limits("TransformerFunction")
    points = []
    for records in sizes:
        path = data.clean_file(work, records, seed, workers)
        key = uploads.put(path, raw_key(records, "120000"))
        log(f"sizes: transformer on {records:,} records, cold, one core")
        run = work_run(endpoint, key, pin=True, warm=False)
        if run["rows"] != records:
            raise BenchError(f"the transformer wrote {run['rows']} rows of {records:,}")
        points.append(
            {
                "records": records,
                "raw_bytes": path.stat().st_size,
                **{
                    k: run[k]
                    for k in ("work_cpu_s", "work_s", "peak_rss_mib", "tmp_peak_mib", "import_cpu_s")
                },
                "process_cpu_s": run["process_cpu_s"],
                "pinned": run["pinned"],
            }
        )
    return {
        "limits": limits,
        "points": points,
        "fits": model.fits(points),
        "headroom": model.HEADROOM,
        "largest": model.largest_files(points, limits["timeout_s"], limits["tmp_mb"]),
    }


def sizes_figures(section: dict[str, Any]) -> list[Figure]:
    limits, measured = section["limits"], max(p["records"] for p in section["points"])
    out = []
    for row in section["largest"]:
        records = "unbounded" if row["records"] is None else f"{row['records']:,} records"
        out.append(
            Figure(
                "sizes",
                f"largest raw file at {row['memory_mb']} MB ({row['vcpu_share']:.2f} vCPU), timeout "
                f"{limits['timeout_s']} s, /tmp {limits['tmp_mb']} MB",
                f"{records} ({row['raw_mib']:,.0f} MiB), limited by {row['limited_by']}"
                + (f"; extrapolated beyond the {measured:,} measured" if row["extrapolated"] else ""),
                f"{model.HEADROOM:.0%} headroom on memory, time and /tmp",
                None,
                None if row["records"] is None else float(row["records"]),
            )
        )
    return out


# --- Issue 10: every function within its limits --------------------------------------------------------


def compactor_day(
    rate: int, *, quick: bool, module: Any = None, out: Path = OUT / "compactor_day.json"
) -> dict[str, Any]:
    """The compactor's day at `rate` from bench/compactor_day.py: its own command, in its own process, and
    its JSON report. Not in this process: moto keeps its objects per process, whatever the server, so the
    compactor would find this run's transformer outputs and their dirty-day markers in the day it compacts.
    `module` (tests) runs a stand-in's main(argv) here instead. --quick builds a day of 3 files, not 288."""
    argv = ["--rate", str(rate), "--out", str(out), *(["--files", "3"] if quick else [])]
    out.unlink(missing_ok=True)
    if module is None:
        command = [sys.executable, "-m", "bench.compactor_day", *argv]
        # Its exit status is its own verdict on the limits (1: over one); the limits below are this report's.
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)  # noqa: S603
        printed, failure = done.stdout, f"{model.exit_text(done.returncode)}:\n{done.stderr[-3000:]}"
    else:
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            module.main(argv)
        printed, failure = captured.getvalue(), "wrote no report"
    if not out.exists():
        raise BenchError(f"python -m bench.compactor_day {' '.join(argv)} {failure}")
    report: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    report["printed"] = printed
    report["argv"] = argv
    return report


def compactor_rows(rate: int, report: dict[str, Any]) -> list[dict[str, Any]]:
    peak = report["peak"]
    return model.limit_rows(
        "compactor",
        rate,
        peak_rss_mib=peak["rss_mib"],
        tmp_mib=peak["tmp_mib"],
        lambda_s=peak["lambda_s"],
        limits=report["limits"],
    )


def limits_section(
    endpoint: str,
    uploads: Uploads,
    sizes: dict[str, Any] | None,
    *,
    rate: int,
    repeat: int,
    seed: int,
    work: Path,
    workers: int,
    quick: bool,
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    missing: dict[str, str] = {}
    notes: list[str] = []
    details: dict[str, Any] = {}
    log(f"limits: generator at {rate:,} transactions per run (bench.generator_run, {repeat} runs)")
    try:
        gen = generator_run.measure(rate, repeat=repeat, seed=seed)
    except RuntimeError as e:
        missing["generator"] = str(e).splitlines()[0]
    else:
        details["generator"] = gen
        gen_lambda_s = model.lambda_seconds(gen["invoke_cpu_s"], gen["limits"]["memory_mb"])
        rows += model.limit_rows(
            "generator",
            rate,
            peak_rss_mib=gen["peak_rss_mib"],
            tmp_mib=gen["tmp_peak_mib"],
            lambda_s=gen_lambda_s,
            limits=gen["limits"],
        )

    point = next((p for p in (sizes or {}).get("points", []) if p["records"] == rate), None)
    if point is None:
        path = data.clean_file(work, rate, seed, workers)
        key = uploads.put(path, raw_key(rate, "120000"))
        log(f"limits: transformer on {rate:,} records, cold, one core")
        point = work_run(endpoint, key, pin=True, warm=False)
    limits = function_limits("TransformerFunction")
    details["transformer"] = {"limits": limits, **point}
    tra_lambda_s = model.lambda_seconds(point["work_cpu_s"], limits["memory_mb"])
    rows += model.limit_rows(
        "transformer",
        rate,
        peak_rss_mib=point["peak_rss_mib"],
        tmp_mib=point["tmp_peak_mib"],
        lambda_s=tra_lambda_s,
        limits=limits,
    )

    log(f"limits: compactor, a day at {rate:,} transactions per run (bench.compactor_day)")
    comp = compactor_day(rate, quick=quick)
    details["compactor"] = comp
    rows += compactor_rows(rate, comp)
    notes.append(
        f"compactor: {comp['files']} files of {rate:,} rows, the first compaction and a rewrite, the "
        f"peak of both; its Lambda time adds S3 transfer at {comp['s3_mib_per_s']:g} MiB/s and "
        f"{comp['s3_request_ms']:g} ms per request to the CPU (assumed: bench/compactor_day.py)."
    )
    return {"rate": rate, "rows": rows, "missing": missing, "notes": notes, "details": details}


# --- Issue 8: the reliability loop ----------------------------------------------------------------------


def loop_section(
    endpoint: str, uploads: Uploads, *, records: int, runs: int, seed: int, work: Path, workers: int
) -> dict[str, Any]:
    """The generator's maximum file and one that ends in a small block after big ones, each `runs` times in
    one child process (one module, one S3 client), with "force": true so that each run really processes."""
    source = data.clean_file(work, records, seed, workers)
    race = data.race_file(source, BLOCK_BYTES)
    files: list[dict[str, Any]] = []
    for label, path, stamp in (
        ("the generator's maximum", source, "160000"),
        ("a small last block after big ones", race, "170000"),
    ):
        count = data.line_count(path)
        size = path.stat().st_size
        files.append(
            {
                "label": label,
                "key": uploads.put(path, raw_key(count, stamp)),
                "records": count,
                "bytes": size,
                "last_block_bytes": model.last_block_bytes(size, BLOCK_BYTES),
            }
        )
    args = ["loop", "--bucket", BUCKET, "--runs", str(runs)]
    for file in files:
        args += ["--key", file["key"], "--expect", str(file["records"])]
    log(f"loop: {runs} rounds of {len(files)} files in one process")
    child = spawn(args, aws_env(endpoint))
    entries = [
        json.loads(line[len(LOOP_MARK) :]) for line in child.stdout.splitlines() if line.startswith(LOOP_MARK)
    ]
    result = model.summarise_loop(entries, files, runs, child.exit_code)
    result.update(wall_s=child.wall_s, process_cpu_s=child.process_cpu_s)
    if child.exit_code:
        result["stderr_tail"] = child.stderr[-3000:]
    return result


# --- Small files ----------------------------------------------------------------------------------------


def imports(endpoint: str, repeat: int) -> dict[str, Any]:
    env = aws_env(endpoint)
    run_child(["imports", "--impl", "reference"], env)  # warms the page cache for both
    bare, handler = [], []
    pandas_loaded = False
    for _ in range(repeat):
        bare.append(run_child(["imports", "--impl", "reference"], env)["import_s"])
        result = run_child(["imports", "--impl", "transformer"], env)
        handler.append(result["import_s"])
        pandas_loaded = pandas_loaded or result["pandas_loaded"]
    return {"bare_s": median(bare), "handler_s": median(handler), "pandas_loaded": pandas_loaded}


def small_files(s3: S3Client, endpoint: str, count: int, seed: int) -> dict[str, Any]:
    keys = []
    for key, body in data.small_bodies(count, seed):
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        keys.append(key)
    args = ["small", "--bucket", BUCKET]
    for key in keys:
        args += ["--key", key]
    env = aws_env(endpoint)
    ref = run_child([*args, "--impl", "reference"], env)
    tra = run_child([*args, "--impl", "transformer"], env)
    return {"reference": ref, "transformer": tra}


def processed_keys(s3: S3Client, key: str) -> list[str]:
    """The transformer's Parquet outputs of one raw key (its output name starts with the raw file's stem)."""
    stem = key.rsplit("/", 1)[1].removesuffix(".json")
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix="processed/transactions/")
    return [o["Key"] for o in listing.get("Contents", []) if f"/{stem}-" in o["Key"]]


# --- Report ---------------------------------------------------------------------------------------------


def collect_figures(results: dict[str, Any]) -> list[Figure]:
    out: list[Figure] = []
    if "transformer" in results:
        out += model.transformer_figures(results["transformer"], results["transformer"]["records"])
    if "sizes" in results:
        out += sizes_figures(results["sizes"])
    if "limits" in results:
        out += model.limit_figures(results["limits"]["rows"], results["limits"]["missing"])
    if "loop" in results:
        out += model.loop_figures(results["loop"])
    out += model.small_file_figures(results.get("imports"), results.get("small_files"))
    out += model.query_figures(results.get("parquet_vs_json"), results.get("compaction"))
    return out


def sizes_tables(section: dict[str, Any]) -> str:
    points = model.render_grid(
        ("records", "raw MiB", "CPU s (1 core)", "wall s (1 core)", "peak RSS MiB", "peak /tmp MiB"),
        [
            (
                f"{p['records']:,}",
                f"{p['raw_bytes'] / MIB:,.0f}",
                f"{p['work_cpu_s']:.2f}",
                f"{p['work_s']:.2f}",
                f"{p['peak_rss_mib']:.0f}",
                f"{p['tmp_peak_mib']:.1f}",
            )
            for p in section["points"]
        ],
    )
    fits = section["fits"]
    lines = ", ".join(
        f"{name} {f['intercept']:.2f} + {f['per_million_records']:.2f}/M records"
        for name, f in (
            ("peak RSS MiB", fits["peak_rss_mib"]),
            ("CPU s", fits["work_cpu_s"]),
            ("/tmp MiB", fits["tmp_peak_mib"]),  # noqa: S108 - a label, not a path
        )
    )
    measured = max(p["records"] for p in section["points"])
    largest = model.render_grid(
        (
            "memory",
            "vCPU",
            "largest file",
            "raw MiB",
            "limited by",
            "M records within memory / time / /tmp",
            "est. Lambda s",
            "peak RSS MiB",
            "/tmp MiB",  # noqa: S108 - a label, not a path
        ),
        [
            (
                f"{r['memory_mb']} MB",
                f"{r['vcpu_share']:.2f}",
                ("unbounded" if r["records"] is None else f"{r['records']:,} records")
                + (" *" if r["extrapolated"] else ""),
                f"{r['raw_mib']:,.0f}",
                r["limited_by"],
                " / ".join("-" if b is None else f"{b / 1e6:.1f}" for b in r["bounds"].values()),
                f"{r['lambda_s']:.0f}",
                f"{r['peak_rss_mib']:.0f}",
                f"{r['tmp_mib']:,.0f}",
            )
            for r in section["largest"]
        ],
    )
    lim = section["limits"]
    return (
        f"{points}\n\nStraight lines through them: {lines}.\n"
        f"Largest file with {section['headroom']:.0%} headroom on memory, the stack's timeout "
        f"({lim['timeout_s']} s at the memory's CPU share) and /tmp ({lim['tmp_mb']} MB):\n{largest}\n"
        f"* extrapolated beyond the largest size measured ({measured:,} records)."
    )


def limits_table(section: dict[str, Any]) -> str:
    grid = model.render_grid(
        ("function", "measure", "value", "limit", "headroom", "result"),
        [
            (
                r["function"],
                r["measure"],
                f"{r['value']:,.1f} {r['unit']}",
                f"{r['limit']:,} {r['limit_unit']}",
                f"{r['headroom']:.0%}",
                "PASS" if r["passed"] else "FAIL",
            )
            for r in section["rows"]
        ],
    )
    notes = "".join(f"\n{function}: not measured: {why}" for function, why in section["missing"].items())
    notes += "".join(f"\n{note}" for note in section["notes"])
    return (
        f"At {section['rate']:,} transactions per run; Lambda time = CPU s x 1769 / MemorySize, network "
        f"waits not included; a measure passes with {model.HEADROOM:.0%} headroom or more.\n{grid}{notes}"
    )


def report(results: dict[str, Any], figures: list[Figure]) -> str:
    m = results["machine"]
    load_start, load_end = results["load_average_at_start"], results["load_average_at_end"]
    parts = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, Python {m['python']}, pyarrow "
        f"{m.get('pyarrow')}, boto3 {m.get('boto3')}, moto {m.get('moto')}, duckdb {m.get('duckdb')}; "
        f"one-core runs {'pinned with taskset -c 0' if m['taskset'] else 'NOT pinned (no taskset)'}",
        f"Command: {results['command']}",
        f"Load average (1/5/15 min) at start {' '.join(f'{x:.2f}' for x in load_start)}, "
        f"at end {' '.join(f'{x:.2f}' for x in load_end)}",
    ]
    if results["quick"]:
        parts.append("--quick: a smoke run; its figures are not meaningful")
    for failed in results.get("failed_runs", []):
        parts.append(
            f"FAILED RUN (run again): {failed['impl']} on {failed['key']}, attempt {failed['attempt']}: "
            f"{failed['error']}"
        )
    for section in SECTIONS:
        rows = [f for f in figures if f.section == section]
        if section == "mechanisms" and "mechanisms" in results:
            parts.append(f"\n{TITLES[section]}\n{mechanisms_table(results['mechanisms'], results['quick'])}")
        elif section == "sizes" and "sizes" in results:
            parts.append(f"\n{TITLES[section]}\n{sizes_tables(results['sizes'])}")
        elif section == "limits" and "limits" in results:
            parts.append(f"\n{TITLES[section]}\n{limits_table(results['limits'])}")
        elif rows:
            parts.append(f"\n{TITLES[section]}\n{model.render(rows)}")
    return "\n".join(parts)


# --- Main -----------------------------------------------------------------------------------------------


def use_candidate(path: Path | None) -> None:
    """Children (and the in-process handlers) load this transformer file instead of the repository's."""
    if path is None:
        return
    if not path.is_file():
        raise BenchError(f"--transformer {path}: no such file")
    os.environ["BENCH_TRANSFORMER_PATH"] = str(path.resolve())


def _counts(text: str) -> list[int]:
    try:
        values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of record counts: {text!r}") from e
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"record counts must be positive: {text!r}")
    return sorted(set(values))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--records", type=_positive, default=1_000_000, help="records in the transformer section"
    )
    parser.add_argument("--repeat", type=_positive, default=3, help="rounds of each timed run (medians)")
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 50,000 records, 1 round, 3 loop runs"
    )
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    parser.add_argument("--loop", action="store_true", help="only the reliability loop (as --only loop)")
    parser.add_argument("--runs", type=_positive, default=50, help="loop: runs of each file")
    parser.add_argument(
        "--rate", type=_positive, default=100_000, help="transactions per run for the limits and the loop"
    )
    parser.add_argument("--sizes", type=_counts, default=None, help="record counts for the largest-file fit")
    parser.add_argument(
        "--mechanisms",
        default=",".join(mechanisms.NAMES),
        help=f"mechanisms section: comma-separated of {mechanisms.NAMES}",
    )
    parser.add_argument("--profile", action="store_true", help="pyinstrument profiles in bench/out/")
    parser.add_argument("--out", type=Path, default=OUT / "results.json")
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="measure nothing: print the tables of this saved results.json",
    )
    parser.add_argument(
        "--transformer", type=Path, default=None, help="measure this candidate transformer file"
    )
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    args.only = {"loop"} if args.loop else only
    chosen = [m.strip() for m in args.mechanisms.split(",") if m.strip()]
    if not chosen or set(chosen) - set(mechanisms.NAMES):
        parser.error(f"--mechanisms: choose from {', '.join(mechanisms.NAMES)}")
    args.mechanisms = [m for m in mechanisms.NAMES if m in chosen]
    if args.quick:
        args.records = min(args.records, 50_000)
        args.repeat = 1
        args.runs = min(args.runs, 3)
    if args.sizes is None:
        full = {args.rate, 1_000_000, 3_000_000, 7_000_000}
        args.sizes = sorted({50_000, args.rate} if args.quick else full)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        saved: dict[str, Any] = json.loads(args.report.read_text(encoding="utf-8"))
        figures = collect_figures(saved)
        print(report(saved, figures))
        return 0 if all(f.passed is not False for f in figures) and not saved.get("failed_runs") else 1
    FAILED_RUNS.clear()
    use_candidate(args.transformer)
    work = OUT / "data"
    work.mkdir(parents=True, exist_ok=True)
    workers = os.cpu_count() or 1
    results: dict[str, Any] = {
        "command": ("python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:])).strip(),
        "machine": machine(),
        "started": f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}",
        "load_average_at_start": os.getloadavg(),
        "quick": args.quick,
        "sections": [s for s in SECTIONS if s in args.only],
    }
    m = results["machine"]
    log(
        f"machine: {m['cpu']}, {m['cores']} cores, {m['memory']}; "
        f"load {results['load_average_at_start'][0]:.1f}"
    )
    with moto_server() as endpoint:
        s3 = s3_for(endpoint)
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key=WARMUP_KEY, Body=data.small_bodies(1, args.seed)[0][1])
        uploads = Uploads(s3)
        if args.only & {"transformer", "queries"}:
            raw = data.clean_file(work, args.records, args.seed, workers)
        if "transformer" in args.only:
            results["transformer"] = transformer_section(
                endpoint, uploads, raw, repeat=args.repeat, work=work, profile=args.profile
            )
        if "mechanisms" in args.only:
            results["mechanisms"] = mechanisms_section(
                sorted({args.rate, args.records}),
                args.mechanisms,
                rounds=args.repeat,
                call_rounds=1 if args.quick else 7,
                calls=10 if args.quick else 200,
                seed=args.seed,
                work=work,
                workers=workers,
            )
        if "sizes" in args.only:
            results["sizes"] = sizes_section(
                endpoint, uploads, args.sizes, seed=args.seed, work=work, workers=workers
            )
        if "limits" in args.only:
            results["limits"] = limits_section(
                endpoint,
                uploads,
                results.get("sizes"),
                rate=args.rate,
                repeat=args.repeat,
                seed=args.seed,
                work=work,
                workers=workers,
                quick=args.quick,
            )
        if "loop" in args.only:
            results["loop"] = loop_section(
                endpoint,
                uploads,
                records=args.rate,
                runs=args.runs,
                seed=args.seed,
                work=work,
                workers=workers,
            )
        if "small" in args.only:
            log("small files: cold imports and warm invocations")
            results["imports"] = imports(endpoint, 3 if args.quick else 7)
            results["small_files"] = small_files(s3, endpoint, 12 if args.quick else 41, args.seed)
        if "queries" in args.only:
            key = raw_key(args.records, "120000")
            if not processed_keys(s3, key):
                work_run(endpoint, uploads.put(raw, key), pin=False)
            log("queries: the sample queries on DuckDB, raw JSON vs processed Parquet")
            results["parquet_vs_json"] = queries.parquet_vs_json(
                s3, raw, processed_keys(s3, key), work, args.repeat
            )
        if "compaction" in args.only:
            log("compaction: 288 small files through the real handlers, then the compactor")
            results["compaction"] = queries.compaction(endpoint, s3, args.seed, args.repeat, work)
    results["failed_runs"] = list(FAILED_RUNS)
    results["finished"] = f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}"
    results["load_average_at_end"] = os.getloadavg()
    figures = collect_figures(results)
    results["figures"] = [asdict(f) for f in figures]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    print(report(results, figures))
    print(f"\nJSON: {args.out}")
    return 0 if all(f.passed is not False for f in figures) and not FAILED_RUNS else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        log(f"bench failed: {e}")
        sys.exit(2)
