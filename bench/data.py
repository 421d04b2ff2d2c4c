"""Seeded benchmark data made with the generator's own functions, cached under bench/out/data/."""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

from local import lambdas

ROOT = Path(__file__).resolve().parent.parent
CHUNK_RECORDS = 10_000
MIB = 1024 * 1024
DAY = datetime(2026, 11, 25, tzinfo=UTC)
DAY_SPAN = timedelta(days=1) - timedelta(minutes=10)


def generator() -> ModuleType:
    """lambda/generator/lambda_function.py, the real generator."""
    return lambdas.load_lambda("generator")


def _chunk(args: tuple[int, int, int, int]) -> bytes:
    """Chunk `index` of `chunks`: its run time is spread over one UTC day, so every row has that date."""
    seed, index, chunks, count = args
    gen = generator()
    run_time = DAY + timedelta(minutes=5) + DAY_SPAN * (index / max(chunks, 1))
    rng = random.Random(f"bench:{seed}:{index}")
    body: bytes = gen.to_json_lines(gen.generate_transactions(run_time, count, rng))
    return body


def _chunks(records: int, seed: int) -> Iterator[tuple[int, int, int, int]]:
    chunks = (records + CHUNK_RECORDS - 1) // CHUNK_RECORDS
    for index in range(chunks):
        count = min(CHUNK_RECORDS, records - index * CHUNK_RECORDS)
        yield seed, index, chunks, count


def clean_file(directory: Path, records: int, seed: int, workers: int) -> Path:
    """A JSON Lines file of `records` generator records (all on 2026-11-25 UTC), made once per seed."""
    path = directory / f"raw-{records}-seed{seed}.json"
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with partial.open("wb") as out:
        if workers <= 1:
            for args in _chunks(records, seed):
                out.write(_chunk(args))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for body in pool.map(_chunk, _chunks(records, seed), chunksize=4):
                    out.write(body)
    partial.replace(path)
    return path


def malformed_file(clean: Path, every: int = 100) -> Path:
    """The clean file with one line in `every` made malformed JSON (1% by default), two ways in turn:
    cut in half (truncated upload), or with one colon removed (still ends in "}", so a shallow
    check on the line's shape does not catch it)."""
    path = clean.with_name(clean.stem + f"-malformed{every}.json")
    if path.exists():
        return path
    partial = path.with_suffix(".partial")
    with clean.open("rb") as src, partial.open("wb") as out:
        for number, line in enumerate(src):
            if number % every != every // 2:
                out.write(line)
            elif (number // every) % 2 == 0:
                out.write(line[: len(line) // 2] + b"\n")
            else:
                out.write(line.replace(b'": ', b'" ', 1))
    partial.replace(path)
    return path


def race_file(source: Path, block_bytes: int = 8 * MIB, tail_bytes: int = 64 * 1024) -> Path:
    """The first lines of `source` that make an object of whole blocks plus about `tail_bytes`: as many
    blocks of `block_bytes` as the source allows, then a small last block after the big ones (the race of
    issue 8: the transformer reads 8 MiB blocks, and wrote a small last block while the background thread
    was still writing the one before)."""
    blocks = (source.stat().st_size - tail_bytes) // block_bytes
    if blocks < 1:
        raise ValueError(f"{source} is too small to end in a small block after a {block_bytes}-byte one")
    path = source.with_name(f"{source.stem}-race-{blocks}x{block_bytes}+{tail_bytes}.json")
    if path.exists():
        return path
    target = blocks * block_bytes + tail_bytes
    written = 0
    partial = path.with_suffix(".partial")
    with source.open("rb") as src, partial.open("wb") as out:
        for line in src:
            out.write(line)
            written += len(line)
            if written >= target:
                break
    partial.replace(path)
    return path


def line_count(path: Path) -> int:
    """Lines in a file (every line of the benchmark's files ends in a newline)."""
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(MIB), b""))


def small_bodies(count: int, seed: int) -> list[tuple[str, bytes]]:
    """`count` raw objects of 1 to 3 records each, with the generator's keys: the normal case."""
    gen = generator()
    objects = []
    for index in range(count):
        run_time = DAY + timedelta(minutes=5 * (index + 1))
        config = gen.Config(bucket="bench", transactions_per_run=1 + index % 3, seed=seed)
        key, body, _ = gen.generate_run(config, run_time)
        objects.append((key, body))
    return objects
