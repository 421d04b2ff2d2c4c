"""The gain of each mechanism the transformer's module docstring names, against the simplest alternative.

Run by `make bench` (section "mechanisms") in one child process pinned to one core, in memory, without S3:
what each mechanism saves is the transformer's own CPU. Each alternative is the transformer with the
mechanism switched off, by an argument (`exact_only=True`) or a patched module attribute, so nothing else
changes. Timings are CPU seconds (time.process_time: user + system, every thread) of one call; variants
run interleaved, in alternating order, and the minimum over the rounds is kept (the machine is shared
and noisy; the minimum is the run least disturbed).

- fast_path: transform_stream on clean records, as the handler calls it, against exact_only=True.
- routing: the file with 1% malformed lines, against route_lines returning all False, which sends every
  block pyarrow cannot read line by line.
- small_blocks: a whole invocation (process_object) of a 1-record and a 3-record object, against
  SMALL_BLOCK_LINES = 0, which reads them with pyarrow.
- seen_ids: SeenIds.split over the transaction_ids of 1M records in the transformer's blocks, against a
  Python set of the id strings; CPU and the peak of Python and numpy allocations (tracemalloc).
- in_memory: a whole invocation of a 1-record object, against IN_MEMORY_BYTES = 0, which builds its
  outputs in a temporary directory.

process_object runs on FakeS3, a dictionary with the calls the transformer makes, so a per-call figure
is the transformer's own work: boto3's signing and parsing and S3's latency come on top on Lambda.
"""

# ruff: noqa: PLC0415 - pyarrow and the handler are imported in the measuring child only
from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

MIB = 1024 * 1024
NAMES = ("fast_path", "routing", "small_blocks", "seen_ids", "in_memory")
BUCKET = "bench-mechanisms"
SMALL_KEY = "raw/year=2026/month=11/day=25/transactions-20261125T120000Z-{records:08x}.json"


# --- Timing ---------------------------------------------------------------------------------------------


def cpu_of(work: Callable[[], Any]) -> tuple[float, Any]:
    """CPU seconds of one call (garbage from earlier calls collected first, outside the timing)."""
    gc.collect()
    started = time.process_time()
    result = work()
    return time.process_time() - started, result


def interleaved(variants: dict[str, Callable[[], Any]], rounds: int) -> dict[str, dict[str, Any]]:
    """Each variant once per round, the order reversed every other round; per variant every round's CPU
    seconds, their minimum, and what the last call returned (so the variants' results can be compared)."""
    names = list(variants)
    runs: dict[str, list[float]] = {name: [] for name in names}
    results: dict[str, Any] = {}
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else reversed(names):
            seconds, results[name] = cpu_of(variants[name])
            runs[name].append(seconds)
    return {
        name: {"min_cpu_s": min(runs[name]), "cpu_s": runs[name], "result": results[name]} for name in names
    }


@contextlib.contextmanager
def patched(module: ModuleType, **values: Any) -> Iterator[None]:
    """The module's attributes set to `values` for the duration (the mechanism switched off)."""
    saved = {name: getattr(module, name) for name in values}
    for name, value in values.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def with_patch(work: Callable[[], Any], module: ModuleType, **values: Any) -> Callable[[], Any]:
    def run() -> Any:
        with patched(module, **values):
            return work()

    return run


# --- Whole objects --------------------------------------------------------------------------------------


def file_chunks(path: Path, chunk_bytes: int = MIB) -> Iterator[bytes]:
    """The file in chunks of the size the handler reads S3's body in."""
    with path.open("rb") as f:
        yield from iter(lambda: f.read(chunk_bytes), b"")


def transform_file(module: ModuleType, path: Path, *, exact_only: bool = False) -> tuple[int, int]:
    """transform_stream on a local file as the handler calls it (outputs in /tmp above IN_MEMORY_BYTES);
    (rows written, lines quarantined)."""
    size = path.stat().st_size
    with contextlib.ExitStack() as stack:
        workdir = None
        if size > module.IN_MEMORY_BYTES:
            import tempfile

            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mechanisms-")))
        result = module.transform_stream(
            file_chunks(path), f"raw/{path.name}", workdir, size_hint=size, exact_only=exact_only
        )
        return result.rows_written, result.quarantined


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def iter_chunks(self, chunk_size: int = MIB) -> Iterator[bytes]:
        for start in range(0, len(self.data), chunk_size):
            yield self.data[start : start + chunk_size]

    def read(self) -> bytes:
        return self.data

    def close(self) -> None:
        pass


class FakeS3:
    """The S3 calls process_object makes, on a dictionary: get, head, (conditional) put and delete."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.last_modified = datetime(2026, 11, 25, 12, tzinfo=UTC)

    @staticmethod
    def _error(code: str, operation: str) -> Exception:
        from botocore.exceptions import ClientError

        return ClientError({"Error": {"Code": code, "Message": code}}, operation)

    def _found(self, key: str, operation: str) -> tuple[bytes, str]:
        if key not in self.objects:
            raise self._error("NoSuchKey", operation)
        return self.objects[key]

    def head_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803 - boto3's names
        data, etag = self._found(Key, "HeadObject")
        return {"ETag": etag, "ContentLength": len(data), "LastModified": self.last_modified}

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        data, _ = self._found(Key, "GetObject")
        return {**self.head_object(Bucket=Bucket, Key=Key), "Body": _Body(data)}

    def put_object(self, Bucket: str, Key: str, Body: Any, **extra: Any) -> dict[str, Any]:  # noqa: N803
        data = Body if isinstance(Body, bytes) else Body.read()
        current = self.objects.get(Key)
        if ("IfNoneMatch" in extra and current is not None) or (
            "IfMatch" in extra and (current is None or current[1] != extra["IfMatch"])
        ):
            raise self._error("PreconditionFailed", "PutObject")
        etag = f'"{hashlib.sha256(data).hexdigest()[:32]}"'
        self.objects[Key] = (data, etag)
        return {"ETag": etag}

    def delete_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        self.objects.pop(Key, None)
        return {}


def per_call(module: ModuleType, s3: FakeS3, key: str, calls: int) -> Callable[[], float]:
    """`calls` invocations of process_object for one raw key ("force": each one processes); their rows."""
    obj = module.S3Object(BUCKET, key)

    def run() -> float:
        rows = 0
        for _ in range(calls):
            rows += module.process_object(s3, obj, BUCKET, force=True)["rows_written"]
        return rows / calls

    return run


def per_call_ms(measured: dict[str, dict[str, Any]], calls: int) -> dict[str, dict[str, Any]]:
    for entry in measured.values():
        entry["ms_per_call"] = entry["min_cpu_s"] * 1000 / calls
    return measured


# --- Duplicate ids --------------------------------------------------------------------------------------


def id_blocks(path: Path) -> list[Any]:
    """The file's transaction_ids in the transformer's blocks of about 8 MiB of lines."""
    import pyarrow as pa
    import pyarrow.json as pa_json

    table = pa_json.read_json(
        str(path),
        read_options=pa_json.ReadOptions(block_size=8 * MIB),
        parse_options=pa_json.ParseOptions(
            explicit_schema=pa.schema([("transaction_id", pa.string())]), unexpected_field_behavior="ignore"
        ),
    )
    return list(table["transaction_id"].chunks)


def build_seen_ids(module: ModuleType, blocks: list[Any]) -> tuple[Any, int]:
    """SeenIds over the blocks as _emit uses it: the structure, and how many ids it found repeated."""
    seen = module.SeenIds()
    return seen, sum(int(seen.split(ids).sum()) for ids in blocks)


def build_set(blocks: list[Any]) -> tuple[set[str], int]:
    """The simplest alternative: the ids as Python strings in a set, the same dropped mask per block."""
    import numpy as np

    seen: set[str] = set()
    repeated = 0
    for ids in blocks:
        dropped = np.zeros(len(ids), dtype=bool)
        for index, value in enumerate(ids.to_pylist()):
            if value in seen:
                dropped[index] = True
            else:
                seen.add(value)
        repeated += int(dropped.sum())
    return seen, repeated


def memory_of(build: Callable[[], tuple[Any, int]]) -> dict[str, float]:
    """Python and numpy allocations (tracemalloc) while `build` runs: the peak, and what the structure it
    returns still holds at the end."""
    gc.collect()
    tracemalloc.start()
    try:
        structure, _ = build()
        held, peak = tracemalloc.get_traced_memory()
        del structure
    finally:
        tracemalloc.stop()
    return {"peak_mib": peak / MIB, "held_mib": held / MIB}


# --- The measurements -----------------------------------------------------------------------------------


def measure(
    module: ModuleType,
    *,
    clean: dict[int, Path],
    malformed: Path,
    names: tuple[str, ...] = NAMES,
    rounds: int = 3,
    call_rounds: int = 7,
    calls: int = 200,
    small_bodies: dict[int, bytes],
) -> dict[str, Any]:
    """Every mechanism in `names`, on the files given (clean: records -> file). Raises AssertionError if a
    mechanism and its alternative disagree on the rows they write."""
    out: dict[str, Any] = {
        "rounds": rounds,
        "call_rounds": call_rounds,
        "calls": calls,
        "small_block_lines": module.SMALL_BLOCK_LINES,
        "in_memory_bytes": module.IN_MEMORY_BYTES,
    }
    largest = max(clean)
    if "fast_path" in names:
        out["fast_path"] = {}
        for records, path in sorted(clean.items()):
            measured = interleaved(
                {
                    "fast": functools.partial(transform_file, module, path),
                    "exact_only": functools.partial(transform_file, module, path, exact_only=True),
                },
                rounds,
            )
            _same(measured, f"fast path on {path.name}")
            out["fast_path"][str(records)] = measured
    if "routing" in names:
        import numpy as np

        def no_routing(lines: Any, utf8: bool) -> Any:
            return np.zeros(lines.count, dtype=bool)

        measured = interleaved(
            {
                "routed": lambda: transform_file(module, malformed),
                "line_by_line": with_patch(
                    lambda: transform_file(module, malformed), module, route_lines=no_routing
                ),
            },
            rounds,
        )
        _same(measured, f"routing on {malformed.name}")
        out["routing"] = {"records": _lines(malformed), **measured}
    s3 = FakeS3()
    keys = {}
    for records, body in small_bodies.items():
        keys[records] = SMALL_KEY.format(records=records)
        s3.put_object(Bucket=BUCKET, Key=keys[records], Body=body)
    if "small_blocks" in names:
        out["small_blocks"] = {}
        for records, key in sorted(keys.items()):
            work = per_call(module, s3, key, calls)
            measured = interleaved(
                {"exact_path": work, "pyarrow": with_patch(work, module, SMALL_BLOCK_LINES=0)}, call_rounds
            )
            _same(measured, f"small blocks on {records} records")
            out["small_blocks"][str(records)] = per_call_ms(measured, calls)
    if "in_memory" in names:
        work = per_call(module, s3, keys[min(keys)], calls)
        measured = interleaved(
            {"in_memory": work, "tmp_dir": with_patch(work, module, IN_MEMORY_BYTES=0)}, call_rounds
        )
        _same(measured, "in-memory outputs")
        out["in_memory"] = {"records": min(keys), **per_call_ms(measured, calls)}
    if "seen_ids" in names:
        blocks = id_blocks(clean[largest])
        builders: dict[str, Callable[[], tuple[Any, int]]] = {
            "seen_ids": functools.partial(build_seen_ids, module, blocks),
            "python_set": functools.partial(build_set, blocks),
        }
        # Timed: the count only, so the structure is freed inside the call, as at the end of a file.
        measured = interleaved({name: _count_of(build) for name, build in builders.items()}, rounds)
        _same(measured, "duplicate ids")
        for name, build in builders.items():
            measured[name].update(memory_of(build))
        out["seen_ids"] = {"ids": sum(len(b) for b in blocks), "blocks": len(blocks), **measured}
    return out


def _count_of(build: Callable[[], tuple[Any, int]]) -> Callable[[], int]:
    return lambda: build()[1]


def _same(measured: dict[str, dict[str, Any]], what: str) -> None:
    results = {name: entry["result"] for name, entry in measured.items()}
    if len({repr(r) for r in results.values()}) != 1:
        raise AssertionError(f"{what}: the variants disagree: {results}")


def _lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(MIB), b""))
