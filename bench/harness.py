"""What every part of the benchmark stands on: the machine, moto's S3 server, and measured child processes.

A child is `python -m bench._child ...` in a fresh process, optionally pinned to one core (`taskset -c 0`)
and given a fresh TMPDIR that the parent polls for the peak /tmp use. The parent reaps it with wait4, so
the whole process's CPU seconds (user + system) come with the child's own figures.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import boto3
from boto3.s3.transfer import TransferConfig
from moto.server import ThreadedMotoServer

from bench._child import RESULT_MARK
from bench.model import exit_text
from local import lambdas

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
BUCKET = "bench-ecommerce-pipeline"
REGION = "us-east-1"
MIB = 1024 * 1024
TMP_POLL_SECONDS = 0.02
TMP_ROOT = OUT / "tmp"  # each child's fresh TMPDIR is made here, and removed after


class BenchError(RuntimeError):
    """A measurement could not be taken (a child failed, a result is missing)."""


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError):
        match = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(encoding="utf-8"))
        memory = f"{int(match[1]) / 1024 / 1024:.1f} GiB" if match else memory
    versions = {}
    for package in ("pyarrow", "boto3", "moto", "duckdb"):
        with contextlib.suppress(ImportError):
            versions[package] = __import__(package).__version__
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": memory,
        "python": platform.python_version(),
        "os": platform.platform(),
        "taskset": shutil.which("taskset") is not None,
        **versions,
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1, stopped on success and on error."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def aws_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "BUCKET_NAME": BUCKET,
        "LOG_LEVEL": "WARNING",
    }


def s3_for(endpoint: str) -> S3Client:
    client: S3Client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - moto's fake key
    )
    return client


def upload(s3: S3Client, path: Path, key: str) -> None:
    s3.upload_file(
        str(path), BUCKET, key, Config=TransferConfig(multipart_chunksize=64 * MIB, max_concurrency=2)
    )


def load_lambda(name: str) -> ModuleType:
    """A handler imported in this process; BENCH_TRANSFORMER_PATH swaps in a candidate transformer."""
    candidate = os.environ.get("BENCH_TRANSFORMER_PATH") if name == "transformer" else None
    return lambdas.load_lambda(name, Path(candidate) if candidate else None)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def log(message: str) -> None:
    print(f"[bench {datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# --- Child processes ------------------------------------------------------------------------------------


def pin_prefix() -> list[str]:
    """`taskset -c 0` when taskset exists and this process may run on core 0; else nothing."""
    taskset = shutil.which("taskset")
    if taskset is None or 0 not in os.sched_getaffinity(0):
        return []
    return [taskset, "-c", "0"]


def tree_bytes(directory: Path) -> int:
    """Bytes of the files under `directory` now (files that vanish while counted are skipped)."""
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += (Path(root) / name).stat().st_size
    return total


class TmpWatcher:
    """Polls a directory's size every TMP_POLL_SECONDS on a thread; `peak` is the largest seen. Files in
    /tmp only grow until the transformer uploads and deletes them, so polling catches the peak."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tmp-watcher", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_bytes(self.directory))
            self._stop.wait(TMP_POLL_SECONDS)

    def __enter__(self) -> TmpWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_bytes(self.directory))


@dataclass
class Spawned:
    exit_code: int
    stdout: str
    stderr: str
    wall_s: float
    process_cpu_s: float  # user + system of the whole child process, from wait4
    tmp_peak_mib: float
    pinned: bool


def spawn(args: list[str], env: dict[str, str], *, pin: bool = False) -> Spawned:
    """`python -m bench._child ARGS` in a fresh process with a fresh TMPDIR; waits for it."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    child_env.update(env)
    child_env["PYTHONPATH"] = str(ROOT)
    prefix = pin_prefix() if pin else []
    TMP_ROOT.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix="child-", dir=TMP_ROOT))
    child_env["TMPDIR"] = str(tmp_dir)
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, TmpWatcher(tmp_dir) as tmp:
            started = time.perf_counter()
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed arguments
                [*prefix, sys.executable, "-m", "bench._child", *args],
                stdout=out,
                stderr=err,
                env=child_env,
                cwd=ROOT,
            )
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - started
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            stdout = out.read().decode("utf-8", "replace")
            stderr = err.read().decode("utf-8", "replace")
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return Spawned(
        exit_code=proc.returncode,
        stdout=stdout,
        stderr=stderr,
        wall_s=wall,
        process_cpu_s=usage.ru_utime + usage.ru_stime,
        tmp_peak_mib=tmp.peak / MIB,
        pinned=bool(prefix),
    )


def run_child(args: list[str], env: dict[str, str], *, pin: bool = False) -> dict[str, Any]:
    """A child's result (its own figures: work time and CPU, peak RSS) with the parent's (wall time of the
    whole process, its CPU seconds from wait4, peak /tmp, whether it was pinned)."""
    child = spawn(args, env, pin=pin)
    if child.exit_code != 0:
        raise BenchError(f"bench child {args[:3]} {exit_text(child.exit_code)}:\n{child.stderr[-3000:]}")
    lines = [line for line in child.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if not lines:
        raise BenchError(
            f"bench child {args[:3]} printed no result:\n{child.stdout[-2000:]}\n{child.stderr[-2000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARK) :])
    result.update(
        wall_s=child.wall_s,
        process_cpu_s=child.process_cpu_s,
        tmp_peak_mib=child.tmp_peak_mib,
        pinned=child.pinned,
    )
    return result
