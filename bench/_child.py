"""One measurement in a fresh process (run by bench.run), reporting its own peak RSS (VmHWM).

Imports of boto3 and pyarrow happen inside the measured functions, never at module level, so the
import figures start from a bare interpreter.
"""

# ruff: noqa: PLC0415 - imports inside functions are what this file measures
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote_plus

ROOT = Path(__file__).resolve().parent.parent
RESULT_MARK = "BENCH_RESULT "


def load_handler(name: str) -> ModuleType:
    """lambda/<name>/lambda_function.py imported as the console does: module name lambda_function.

    BENCH_TRANSFORMER_PATH (set by `bench.run --transformer FILE`) measures a candidate file instead.
    """
    path = ROOT / "lambda" / name / "lambda_function.py"
    if name == "transformer" and os.environ.get("BENCH_TRANSFORMER_PATH"):
        path = Path(os.environ["BENCH_TRANSFORMER_PATH"]).resolve()
    spec = importlib.util.spec_from_file_location("lambda_function", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["lambda_function"] = module
    spec.loader.exec_module(module)
    return module


def s3_event(bucket: str, key: str) -> dict[str, Any]:
    """An ObjectCreated:Put notification for one key, URL-encoded as S3 sends it."""
    return {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(key, safe="/")}},
            }
        ]
    }


def _import_impl(impl: str) -> tuple[Any, float]:
    """The implementation's callable (bucket, key) -> rows, and the seconds its import took."""
    started = time.perf_counter()
    if impl == "transformer":
        module = load_handler("transformer")
        module.s3_client()
        elapsed = time.perf_counter() - started

        def run(bucket: str, key: str) -> Any:
            result = module.lambda_handler(s3_event(bucket, key), None)
            return result["processed"][0]["rows_written"]

        return run, elapsed
    import boto3

    from bench import reference

    client = boto3.client("s3")
    elapsed = time.perf_counter() - started
    return (lambda bucket, key: reference.transform(client, bucket, key)), elapsed


def measure_imports(impl: str) -> dict[str, Any]:
    """Cold import of the handler module plus its S3 client, or of the bare dependencies plus a client."""
    started = time.perf_counter()
    if impl == "transformer":
        load_handler("transformer").s3_client()
    else:
        import boto3
        import pyarrow
        import pyarrow.compute
        import pyarrow.json
        import pyarrow.parquet

        boto3.client("s3")
        del pyarrow
    return {"import_s": time.perf_counter() - started, "pandas_loaded": "pandas" in sys.modules}


def measure_work(impl: str, bucket: str, keys: list[str], profile: str | None) -> dict[str, Any]:
    """Time the last key; the ones before it are processed first, untimed (a warm function)."""
    run, import_s = _import_impl(impl)
    *warmups, key = keys
    for warmup in warmups:
        run(bucket, warmup)
    profiler: Any = None
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.005)
        profiler.start()
    started = time.perf_counter()
    rows = run(bucket, key)
    work_s = time.perf_counter() - started
    if profiler is not None:
        profiler.stop()
        Path(str(profile)).write_text(profiler.output_text(unicode=True, color=False, show_all=False))
    return {"import_s": import_s, "work_s": work_s, "rows": rows}


def measure_small(impl: str, bucket: str, keys: list[str]) -> dict[str, Any]:
    """Warm invocations: the first one is discarded, the rest give the median per invocation."""
    run, import_s = _import_impl(impl)
    times = []
    for key in keys:
        started = time.perf_counter()
        run(bucket, key)
        times.append(time.perf_counter() - started)
    warm = times[1:]
    return {"import_s": import_s, "first_s": times[0], "median_s": statistics.median(warm), "n": len(warm)}


def peak_rss_mib() -> float:
    """This process's RSS high-water mark (VmHWM), in MiB.

    Not the parent's wait4 ru_maxrss: Linux carries the pre-exec high-water mark of the forked parent
    (here the one holding moto's server and its objects) into the child's figure.
    """
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status: the memory figures need Linux")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["imports", "work", "small"])
    parser.add_argument("--impl", choices=["transformer", "reference"], required=True)
    parser.add_argument("--bucket", default="")
    parser.add_argument("--key", action="append", default=[])
    parser.add_argument("--profile", default=None)
    args = parser.parse_args(argv)
    if args.mode == "imports":
        result = measure_imports(args.impl)
    elif args.mode == "work":
        result = measure_work(args.impl, args.bucket, args.key, args.profile)
    else:
        result = measure_small(args.impl, args.bucket, args.key)
    result["peak_rss_mib"] = peak_rss_mib()
    result["pandas_loaded_at_end"] = "pandas" in sys.modules
    sys.stdout.write(RESULT_MARK + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
