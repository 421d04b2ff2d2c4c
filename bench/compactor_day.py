"""`python -m bench.compactor_day`: the compactor on a day at the generator's maximum rate, and its limits.

    .venv/bin/python -m bench.compactor_day                 # 288 files of 100,000 rows: 28.8M rows
    .venv/bin/python -m bench.compactor_day --rate 1000     # any other rate (transactions per run)

The day's processed files are built directly, not through the generator and the transformer: 288 files
of `--rate` rows with the transformer's schema, writer settings, names (`<stem>-<12 hex>`) and Parquet
metadata (`source_key`, `source_etag`), and the generator's catalog, customer and quantity weights (the
same files the pipeline writes, up to the random draws). Running the real generator and transformer 288
times at 100,000 records would first make 288 raw objects of about 20 MiB each and then transform them,
about 288 x 1.5 s on this machine (an estimate from `make bench`'s 1M-record figure): several extra minutes
for files of the same shape; this builds them in about a minute, once (cached in bench/out/data/).

They are uploaded to moto's S3 server on 127.0.0.1 (in this process), and the real handler,
lambda/compactor/lambda_function.py, runs once in a child process with {"date": ...}, pinned to one core
with `taskset -c 0` when available (Lambda gives a function of 1,769 MB one vCPU). Measured:
- peak RSS: the child's VmHWM (interpreter and imports included);
- peak /tmp: the child's temporary directory (its own TMPDIR), its size polled every 20 ms from here;
- CPU seconds of the child (user + system) and wall seconds;
- S3 bytes read and written by the handler's client (botocore event hooks in the child).
- S3 requests by operation, counted the same way.
Estimated Lambda duration at the configured memory M MB: CPU seconds x max(1, 1769 / M) (the vCPU share
Lambda gives M MB), plus the bytes moved at --s3-mib-per-s (50 MiB/s by default) and --s3-request-ms per
request (20 ms by default), as if none of it overlapped. Both are assumptions, not measurements: a
single stream between Lambda and S3 in one region usually does better. The limits are read from
infra/template.yaml (the compactor's MemorySize, EphemeralStorage and Timeout).

Results print as a table and go to bench/out/compactor_day.json for `make bench` to fold in.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.run import BUCKET, MIB, aws_env, machine, moto_server, s3_for
from local import lambdas

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
DAY = date(2026, 11, 25)
RUNS_PER_DAY = 288
LAMBDA_FULL_VCPU_MB = 1769
RESULT_MARK = "COMPACTOR_DAY_RESULT "
HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


# --- The day's files ----------------------------------------------------------------------------------


def _uuids(rng: np.random.Generator, n: int) -> pa.Array:
    """`n` random UUID4 strings, built as bytes (a Python loop would take minutes for 28.8M)."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    digits = np.empty((n, 32), dtype=np.uint8)
    digits[:, 0::2] = HEX[raw >> 4]
    digits[:, 1::2] = HEX[raw & 0x0F]
    text = np.full((n, 36), ord("-"), dtype=np.uint8)
    for start, end, at in ((0, 8, 0), (8, 12, 9), (12, 16, 14), (16, 20, 19), (20, 32, 24)):
        text[:, at : at + end - start] = digits[:, start:end]
    offsets = np.arange(0, 36 * (n + 1), 36, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.tobytes()), pa.py_buffer(text.tobytes()))


def _money(cents: np.ndarray) -> pa.Array:
    """decimal128(10, 2) values from whole cents, without going through Python Decimals."""
    words = np.zeros((len(cents), 2), dtype=np.int64)
    words[:, 0] = cents
    return pa.Array.from_buffers(pa.decimal128(10, 2), len(cents), [None, pa.py_buffer(words.tobytes())])


class DayBuilder:
    """Rows of one run of the generator, in the processed table's types, from numpy draws."""

    def __init__(self, seed: int) -> None:
        generator = lambdas.load_lambda("generator")
        self.schema = lambdas.load_lambda("transformer").PROCESSED_SCHEMA
        self.rng = np.random.default_rng(seed)
        catalog = generator.CATALOG
        self.product_ids = pa.array([p.product_id for p in catalog])
        self.names = pa.array([p.name for p in catalog])
        self.categories = pa.array([p.category for p in catalog])
        self.cents = np.array([int(p.price * 100) for p in catalog], dtype=np.int64)
        self.customers = pa.array([f"CUST-{i:05d}" for i in range(1, generator.CUSTOMER_COUNT + 1)])

        def weights(values: Any) -> np.ndarray:
            array: np.ndarray = np.asarray(values, dtype=float)
            normalised: np.ndarray = array / array.sum()
            return normalised

        self.product_p = weights(generator._PRODUCT_WEIGHTS)
        self.customer_p = weights(generator._CUSTOMER_WEIGHTS)
        self.quantity_p = weights(generator._QUANTITY_WEIGHTS)

    def run_rows(self, run_time: datetime, n: int) -> pa.Table:
        """`n` transactions in the five minutes before `run_time`, oldest first, as the generator draws."""
        end_ms = int(run_time.timestamp() * 1000)
        stamps = np.sort(self.rng.integers(end_ms - 300_000, end_ms, size=n))
        product = pa.array(self.rng.choice(len(self.cents), size=n, p=self.product_p))
        customer = pa.array(self.rng.choice(len(self.customer_p), size=n, p=self.customer_p))
        quantity = self.rng.choice(5, size=n, p=self.quantity_p).astype(np.int32) + 1
        cents = self.cents[product.to_numpy()]
        seconds = stamps // 1000
        columns = [
            _uuids(self.rng, n),
            pa.array(stamps, pa.timestamp("ms", tz="UTC")),
            self.customers.take(customer),
            self.product_ids.take(product),
            self.names.take(product),
            self.categories.take(product),
            pa.array(quantity),
            _money(cents),
            _money(cents * quantity),
            pa.array(((seconds // 3600) % 24).astype(np.int32)),
            pa.array((((seconds // 86400) + 3) % 7).astype(np.int32)),  # 1970-01-01 was a Thursday
        ]
        return pa.Table.from_arrays(columns, schema=self.schema)


def output_key(raw_key: str, day: date) -> str:
    """The processed key the transformer gives a raw key's rows of `day` (its own naming function)."""
    name = lambdas.load_lambda("transformer").output_name(raw_key)
    return f"processed/transactions/year={day:%Y}/month={day:%m}/day={day:%d}/{name}.parquet"


def _write_source(table: pa.Table, raw_key: str, path: Path) -> None:
    """A processed file as the transformer writes one: its writer settings and metadata."""
    etag = hashlib.sha256(raw_key.encode("utf-8")).hexdigest()[:32]
    pq.write_table(
        table.replace_schema_metadata({b"source_key": raw_key.encode(), b"source_etag": etag.encode()}),
        path,
        compression="snappy",
        coerce_timestamps="ms",
        version="2.6",
        use_dictionary=["customer_id", "product_id", "product_name", "category"],
    )


def build_day(
    directory: Path, rate: int, files: int, seed: int
) -> tuple[list[tuple[str, Path]], tuple[str, Path]]:
    """The day's processed files, as (key, local path), and one late file of the same day (a raw file
    uploaded by hand the next morning), made once and then reused."""
    folder = directory / f"compactor-day-{rate}x{files}-seed{seed}-with-late"
    manifest = folder / "keys.json"
    if not manifest.exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        builder = DayBuilder(seed)
        start = datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC)
        entries = []
        for run in range(files):
            run_time = start + timedelta(minutes=5 * (run + 1))
            raw_key = (
                f"raw/year={run_time:%Y}/month={run_time:%m}/day={run_time:%d}/"
                f"transactions-{run_time:%Y%m%dT%H%M%SZ}-{run:08x}.json"
            )
            _write_source(builder.run_rows(run_time, rate), raw_key, folder / f"{run:03d}.parquet")
            entries.append((output_key(raw_key, DAY), f"{run:03d}.parquet"))
        late_raw = f"raw/manual/late-upload-{DAY:%Y%m%d}.json"
        _write_source(builder.run_rows(start + timedelta(days=1), rate), late_raw, folder / "late.parquet")
        entries.append((output_key(late_raw, DAY), "late.parquet"))
        manifest.write_text(json.dumps(entries), encoding="utf-8")
    *day, late = [(key, folder / name) for key, name in json.loads(manifest.read_text(encoding="utf-8"))]
    return day, late


# --- Limits -------------------------------------------------------------------------------------------


def configured_limits() -> dict[str, Any]:
    """The compactor's memory, /tmp, timeout and part bound as infra/template.yaml sets them."""
    from cfnlint.decode import decode  # noqa: PLC0415 - a dev tool, needed only here

    template, problems = decode(str(ROOT / "infra" / "template.yaml"))
    if problems or template is None:
        raise RuntimeError(f"infra/template.yaml does not parse: {problems}")
    properties = template["Resources"]["CompactorFunction"]["Properties"]
    variables = properties["Environment"]["Variables"]
    return {
        "memory_mb": int(properties["MemorySize"]),
        "tmp_mb": int(properties["EphemeralStorage"]["Size"]),
        "timeout_s": int(properties["Timeout"]),
        "part_rows": int(variables.get("COMPACT_PART_ROWS", "5000000")),
        "row_group_rows": int(variables.get("COMPACT_ROW_GROUP_ROWS", "1000000")),
    }


# --- The child: one real compactor run ----------------------------------------------------------------


def child(day: str) -> None:
    """Run the handler once for `day`; print its figures."""
    started = time.perf_counter()
    module = lambdas.load_lambda("compactor")
    client = module.s3_client()
    moved = {"read": 0, "written": 0}

    def on_get(parsed: dict[str, Any], **_: Any) -> None:
        moved["read"] += int(parsed.get("ContentLength", 0) or 0)

    def on_put(params: dict[str, Any], **_: Any) -> None:
        body: Any = params.get("Body")
        if hasattr(body, "fileno"):
            moved["written"] += os.fstat(body.fileno()).st_size
        elif isinstance(body, bytes | bytearray):
            moved["written"] += len(body)

    requests: dict[str, int] = {}

    def on_call(model: Any, **_: Any) -> None:
        requests[model.name] = requests.get(model.name, 0) + 1

    client.meta.events.register("after-call.s3", on_call)
    client.meta.events.register("after-call.s3.GetObject", on_get)
    client.meta.events.register("provide-client-params.s3.PutObject", on_put)
    imported = time.perf_counter()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    result = module.lambda_handler(
        {"time": f"{date.fromisoformat(day) + timedelta(days=1)}T03:00:00Z", "date": day}, None
    )
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    handler_s = time.perf_counter() - imported
    hwm = next(
        int(line.split()[1]) / 1024
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines()
        if line.startswith("VmHWM:")
    )
    (day_result,) = result["days"]
    figures = {
        "peak_rss_mib": hwm,
        "handler_cpu_s": (cpu_after.ru_utime - cpu_before.ru_utime)
        + (cpu_after.ru_stime - cpu_before.ru_stime),
        "total_cpu_s": cpu_after.ru_utime + cpu_after.ru_stime,
        "handler_wall_s": handler_s,
        "import_wall_s": imported - started,
        "s3_read_bytes": moved["read"],
        "s3_written_bytes": moved["written"],
        "s3_requests": requests,
        "result": day_result,
    }
    sys.stdout.write(RESULT_MARK + json.dumps(figures, default=str) + "\n")


# --- The parent ---------------------------------------------------------------------------------------


def _tree_bytes(path: Path) -> int:
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(path):
            with contextlib.suppress(FileNotFoundError):
                if entry.is_dir(follow_symlinks=False):
                    total += _tree_bytes(Path(entry.path))
                else:
                    total += entry.stat(follow_symlinks=False).st_size
    return total


@contextlib.contextmanager
def tmp_watch(path: Path, every: float = 0.02) -> Iterator[dict[str, int]]:
    """The peak size of everything under `path`, sampled every `every` seconds while the block runs."""
    peak = {"bytes": 0}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            peak["bytes"] = max(peak["bytes"], _tree_bytes(path))
            stop.wait(every)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


def run_child(endpoint: str, part_rows: int, row_group_rows: int, tmp: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(aws_env(endpoint))
    env.update(
        PYTHONPATH=str(ROOT),
        TMPDIR=str(tmp),
        COMPACT_PART_ROWS=str(part_rows),
        COMPACT_ROW_GROUP_ROWS=str(row_group_rows),
    )
    command = [sys.executable, "-m", "bench.compactor_day", "--child", DAY.isoformat()]
    pinned = shutil.which("taskset") is not None
    if pinned:
        command = ["taskset", "-c", "0", *command]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tmp_watch(tmp) as peak:
        started = time.perf_counter()
        proc = subprocess.run(command, stdout=out, stderr=err, env=env, cwd=ROOT, check=False)  # noqa: S603
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"the compactor child failed ({proc.returncode}):\n{stderr[-4000:]}")
    line = next(line for line in stdout.splitlines() if line.startswith(RESULT_MARK))
    figures: dict[str, Any] = json.loads(line[len(RESULT_MARK) :])
    figures.update(wall_s=wall, peak_tmp_mib=peak["bytes"] / MIB, pinned_to_one_core=pinned)
    return figures


def estimate(
    figures: dict[str, Any], limits: dict[str, Any], s3_mib_per_s: float, request_ms: float
) -> dict[str, float]:
    share = max(1.0, LAMBDA_FULL_VCPU_MB / limits["memory_mb"])
    transfer_s = (figures["s3_read_bytes"] + figures["s3_written_bytes"]) / MIB / s3_mib_per_s
    latency_s = sum(figures["s3_requests"].values()) * request_ms / 1000
    cpu_s = figures["total_cpu_s"] * share
    return {
        "vcpu_share": 1 / share,
        "cpu_on_lambda_s": cpu_s,
        "transfer_s": transfer_s,
        "requests_s": latency_s,
        "lambda_s": cpu_s + transfer_s + latency_s,
    }


def measure(
    rate: int, files: int, seed: int, *, s3_mib_per_s: float, request_ms: float, part_rows: int | None
) -> dict[str, Any]:
    """The first compaction of the day, then the rewrite a late file causes (every part read and written
    again: the heaviest run a day can need)."""
    limits = configured_limits()
    if part_rows is not None:
        limits["part_rows"] = part_rows
    load_at_start = os.getloadavg()[0]
    built = time.perf_counter()
    day_files, (late_key, late_path) = build_day(OUT / "data", rate, files, seed)
    build_s = time.perf_counter() - built
    source_bytes = sum(path.stat().st_size for _, path in day_files)
    runs: dict[str, Any] = {}
    with moto_server() as endpoint, tempfile.TemporaryDirectory(prefix="compactor-day-tmp-") as tmp:
        s3 = s3_for(endpoint)
        s3.create_bucket(Bucket=BUCKET)
        for key, path in day_files:
            s3.upload_file(str(path), BUCKET, key)
        runs["first"] = run_child(endpoint, limits["part_rows"], limits["row_group_rows"], Path(tmp))
        s3.upload_file(str(late_path), BUCKET, late_key)
        runs["rewrite"] = run_child(endpoint, limits["part_rows"], limits["row_group_rows"], Path(tmp))
        listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"processed/transactions/year={DAY:%Y}/")
        written = {o["Key"].rsplit("/", 1)[1]: o["Size"] for o in listing.get("Contents", [])}
    check_work(runs, rate, files)
    rows = runs["rewrite"]["result"]["rows"]
    compacted_bytes = sum(written.values())
    report = {
        "command": "python -m bench.compactor_day " + " ".join(sys.argv[1:]),
        "machine": machine(),
        # other work on the machine slows the child's CPU seconds too (shared caches and cores)
        "load_average_1min": {"start": load_at_start, "end": os.getloadavg()[0]},
        "rate": rate,
        "files": files,
        "rows": rate * files,
        "build_s": build_s,
        "source_mib": source_bytes / MIB,
        "compacted_mib": compacted_bytes / MIB,
        "compacted_bytes_per_row": compacted_bytes / rows if rows else 0.0,
        "compacted_files": written,
        "limits": limits,
        "s3_mib_per_s": s3_mib_per_s,
        "s3_request_ms": request_ms,
        "runs": runs,
        "peak": {
            "rss_mib": max(r["peak_rss_mib"] for r in runs.values()),
            "tmp_mib": max(r["peak_tmp_mib"] for r in runs.values()),
        },
    }
    return relimit(report, limits)


def check_work(runs: dict[str, Any], rate: int, files: int) -> None:
    """The figures are those of the day built here, or none: the first run merges every file into
    `rate` x `files` rows, the rewrite the late file into one more file's worth."""
    expected = {"first": (files, rate * files), "rewrite": (1, rate * (files + 1))}
    for name, (merged, rows) in expected.items():
        result = runs[name]["result"]
        if (result["files_merged"], result["rows"]) != (merged, rows) or result["left"]:
            raise RuntimeError(
                f"the compactor's {name} run merged {result['files_merged']} files into {result['rows']:,} "
                f"rows (expected {merged} into {rows:,}) and left {len(result['left'])} unmerged: the bucket "
                "held more than the day built here (another run's objects in this process's moto?)"
            )


def relimit(report: dict[str, Any], limits: dict[str, Any]) -> dict[str, Any]:
    """A saved report's estimates against other limits (the measured figures do not depend on them)."""
    runs = report["runs"]
    for figures in runs.values():
        figures["estimate"] = estimate(figures, limits, report["s3_mib_per_s"], report["s3_request_ms"])
    report["peak"]["lambda_s"] = max(r["estimate"]["lambda_s"] for r in runs.values())
    return report | {"limits": limits}


def render(report: dict[str, Any]) -> str:
    lim, peak = report["limits"], report["peak"]
    lines = [
        f"Compactor, one day at {report['rate']:,} transactions per run: {report['rows']:,} rows in "
        f"{report['files']} files ({report['source_mib']:,.0f} MiB), then a late file of "
        f"{report['rate']:,} rows; COMPACT_PART_ROWS={lim['part_rows']:,}. After both: "
        f"{len(report['compacted_files'])} files, {report['compacted_mib']:,.0f} MiB "
        f"({report['compacted_bytes_per_row']:.1f} B/row).",
        f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
        f"{report['machine']['memory']}, Python {report['machine']['python']}; load average (1 min) "
        f"{report.get('load_average_1min', {}).get('start', float('nan')):.1f} at start, "
        f"{report.get('load_average_1min', {}).get('end', float('nan')):.1f} at end.",
        f"Lambda duration = CPU s x {LAMBDA_FULL_VCPU_MB}/{lim['memory_mb']} MB (vCPU share) + S3 bytes at "
        f"{report['s3_mib_per_s']:g} MiB/s + {report['s3_request_ms']:g} ms per S3 request (both assumed).",
        "",
        "| run | CPU s (1 core) | wall s | S3 requests | S3 read / written MiB | peak RSS MiB "
        "| peak /tmp MiB | Lambda s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["runs"].items():
        lines.append(
            f"| {name} | {r['total_cpu_s']:.1f} | {r['wall_s']:.1f} | {sum(r['s3_requests'].values()):,} | "
            f"{r['s3_read_bytes'] / MIB:,.0f} / "
            f"{r['s3_written_bytes'] / MIB:,.0f} | {r['peak_rss_mib']:,.0f} | {r['peak_tmp_mib']:,.0f} | "
            f"{r['estimate']['lambda_s']:.0f} |"
        )
    lines += [
        "",
        "| figure | peak of both runs | configured limit | headroom |",
        "|---|---|---|---|",
    ]
    for name, value, limit, unit in (
        ("memory (VmHWM)", peak["rss_mib"], lim["memory_mb"], "MiB / MB"),
        ("ephemeral storage, /tmp", peak["tmp_mib"], lim["tmp_mb"], "MiB / MB"),
        ("estimated duration", peak["lambda_s"], lim["timeout_s"], "s"),
    ):
        lines.append(f"| {name} ({unit}) | {value:,.0f} | {limit:,} | {limit / value if value else 0:.1f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compactor_day", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rate", type=int, default=100_000, help="transactions per run (rows per file)")
    parser.add_argument("--files", type=int, default=RUNS_PER_DAY, help="files in the day (288 runs)")
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--s3-mib-per-s", type=float, default=50.0, help="assumed Lambda<->S3 throughput")
    parser.add_argument("--s3-request-ms", type=float, default=20.0, help="assumed time of one S3 request")
    parser.add_argument("--part-rows", type=int, default=None, help="override the stack's COMPACT_PART_ROWS")
    parser.add_argument("--out", type=Path, default=OUT / "compactor_day.json")
    parser.add_argument(
        "--report", type=Path, default=None, help="no run: this saved JSON against the template's limits now"
    )
    parser.add_argument("--child", metavar="DAY", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    if args.report is not None:
        report = json.loads(args.report.read_text(encoding="utf-8"))
        report = relimit(report, configured_limits() | {"part_rows": report["limits"]["part_rows"]})
    else:
        report = measure(
            args.rate,
            args.files,
            args.seed,
            s3_mib_per_s=args.s3_mib_per_s,
            request_ms=args.s3_request_ms,
            part_rows=args.part_rows,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    print(render(report))
    if args.report is None:
        print(f"\nJSON: {args.out}")
    peak, lim = report["peak"], report["limits"]
    within = peak["rss_mib"] < lim["memory_mb"] and peak["tmp_mib"] < lim["tmp_mb"]
    within = within and peak["lambda_s"] < lim["timeout_s"]
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
