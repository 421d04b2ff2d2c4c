"""The generator at a given rate against its Lambda limits: peak RSS, /tmp, CPU and estimated duration.

The real handler (lambda/generator/lambda_function.py, imported as the console does) runs in a fresh
child process pinned to one core (`taskset -c 0`) against moto's S3 server on 127.0.0.1, with a real
"Scheduled Event". The child reports its own peak RSS (VmHWM: interpreter, boto3 and the handler), its
CPU seconds (user + system) for the import (Lambda's init phase) and for the first invocation (which
also creates the S3 client), and the wall time of the invocation. The parent reads the object back to
check it and to size /tmp (the handler's temporary file is the object).

Lambda gives a function CPU in proportion to its memory: 1,769 MB is one vCPU, so at MemorySize M the
invocation's duration is estimated as CPU seconds x 1769 / M (network waits not included). Limits are
read from infra/template.yaml (MemorySize, Timeout, EphemeralStorage; /tmp is 512 MB when unset).

After the invocation (its peak RSS already taken) the child also times the two ways the handler file
can format a run: the streamed lines the handler writes (`iter_json_lines`) and the plain reference
(`to_json_lines(generate_transactions(...))`), the gain that pays for the streamed path.

    .venv/bin/python -m bench.generator_run                  # TRANSACTIONS_PER_RUN=100,000, 3 runs
    .venv/bin/python -m bench.generator_run --rate 1000 --repeat 1 --json
    git show REV:lambda/generator/lambda_function.py > /tmp/old.py
    .venv/bin/python -m bench.generator_run --handler /tmp/old.py   # an earlier handler file
"""

# ruff: noqa: PLC0415 - the child imports the handler inside the measured function
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
TEMPLATE = ROOT / "infra" / "template.yaml"
HANDLER = ROOT / "lambda" / "generator" / "lambda_function.py"
RESULT_MARK = "GENERATOR_RUN_RESULT "
ONE_VCPU_MB = 1769  # Lambda: a function with 1,769 MB has the equivalent of one vCPU
DEFAULT_TMP_MB = 512  # Lambda's /tmp when EphemeralStorage is not set
EVENT_TIME = "2026-11-25T14:05:00Z"


# --- Child: one invocation in a fresh process --------------------------------------------------------


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_handler(path: Path) -> ModuleType:
    """The handler file imported as the console does: module name lambda_function."""
    spec = importlib.util.spec_from_file_location("lambda_function", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["lambda_function"] = module
    spec.loader.exec_module(module)
    return module


def formatting_cpu(handler: ModuleType, rate: int) -> dict[str, float]:
    """CPU seconds to format one run both ways, when the handler file has both."""
    if not hasattr(handler, "iter_json_lines"):
        return {}
    run_time = handler.run_time_from_event({"time": EVENT_TIME}, datetime.now(UTC))
    started = cpu_seconds()
    streamed = b"".join(handler.iter_json_lines(run_time, rate, handler.make_rng(1, run_time)))
    streamed_cpu = cpu_seconds() - started
    started = cpu_seconds()
    records = handler.generate_transactions(run_time, rate, handler.make_rng(1, run_time))
    reference = handler.to_json_lines(records)
    reference_cpu = cpu_seconds() - started
    if streamed != reference:
        raise RuntimeError("the streamed lines differ from the reference's")
    return {"streamed_cpu_s": streamed_cpu, "reference_cpu_s": reference_cpu}


def child(handler_path: Path, rate: int) -> None:
    """Import the handler (init), invoke it once (first invocation), print the figures as JSON."""
    from bench._child import peak_rss_mib

    started_cpu = cpu_seconds()
    handler = load_handler(handler_path)
    import_cpu = cpu_seconds() - started_cpu
    event = {
        "version": "0",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "time": EVENT_TIME,
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/ecommerce-generator-schedule"],
        "detail": {},
    }
    before_cpu, before_wall = cpu_seconds(), time.perf_counter()
    result = handler.lambda_handler(event, None)
    invoke_cpu, invoke_wall = cpu_seconds() - before_cpu, time.perf_counter() - before_wall
    figures = {
        "key": result["key"],
        "count": result["count"],
        "import_cpu_s": import_cpu,
        "invoke_cpu_s": invoke_cpu,
        "invoke_wall_s": invoke_wall,
        "peak_rss_mib": peak_rss_mib(),
        "affinity": sorted(os.sched_getaffinity(0)),
    }
    figures["formatting"] = formatting_cpu(handler, rate)
    sys.stdout.write(RESULT_MARK + json.dumps(figures) + "\n")


# --- Parent ------------------------------------------------------------------------------------------


def generator_limits(template: Path = TEMPLATE) -> dict[str, int]:
    """The generator function's MemorySize (MB), Timeout (s) and /tmp size (MB) in the stack."""
    from cfnlint.decode import decode

    decoded, problems = decode(str(template))
    if problems or decoded is None:
        raise RuntimeError(f"{template} does not parse: {problems}")
    properties = decoded["Resources"]["GeneratorFunction"]["Properties"]
    return {
        "memory_mb": int(properties["MemorySize"]),
        "timeout_s": int(properties["Timeout"]),
        "tmp_mb": int(properties.get("EphemeralStorage", {}).get("Size", DEFAULT_TMP_MB)),
    }


def run_child(env: dict[str, str], handler: Path, rate: int) -> dict[str, Any]:
    """One child process on core 0; its figures."""
    command = [sys.executable, "-m", "bench.generator_run", "--child", "--handler", str(handler)]
    command += ["--rate", str(rate)]
    taskset = shutil.which("taskset")
    if taskset is None:
        raise RuntimeError("taskset (util-linux) is needed to pin the run to one core")
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    child_env.update(env)
    child_env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(  # noqa: S603 - our own interpreter and module, fixed arguments
        [taskset, "-c", "0", *command], capture_output=True, text=True, env=child_env, cwd=ROOT, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"generator child exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if not lines:
        raise RuntimeError(
            f"generator child printed no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    figures: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARK) :])
    return figures


def check_object(s3: Any, bucket: str, key: str, count: int) -> int:
    """The object holds `count` JSON lines with the contract's fields; its size in bytes."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    lines = body.splitlines()
    if len(lines) != count:
        raise RuntimeError(f"{key} holds {len(lines)} lines, the handler reported {count}")
    for line in (lines[0], lines[-1]):
        if "transaction_id" not in json.loads(line):
            raise RuntimeError(f"{key}: a line without transaction_id: {line[:200]!r}")
    return len(body)


def measure(rate: int, repeat: int = 3, seed: int = 20261125, handler: Path = HANDLER) -> dict[str, Any]:
    """Run the generator `repeat` times at TRANSACTIONS_PER_RUN=`rate`; figures against the limits."""
    from bench.run import BUCKET, aws_env, machine, moto_server, s3_for

    limits = generator_limits()
    runs = []
    with moto_server() as endpoint:
        s3 = s3_for(endpoint)
        s3.create_bucket(Bucket=BUCKET)
        env = {**aws_env(endpoint), "TRANSACTIONS_PER_RUN": str(rate), "LOG_LEVEL": "WARNING"}
        for index in range(repeat):
            run = run_child({**env, "RANDOM_SEED": str(seed + index)}, handler, rate)
            run["object_bytes"] = check_object(s3, BUCKET, run["key"], rate)
            runs.append(run)
    cpu = statistics.median(r["invoke_cpu_s"] for r in runs)
    init_cpu = statistics.median(r["import_cpu_s"] for r in runs)
    peak = max(r["peak_rss_mib"] for r in runs)
    tmp_mib = max(r["object_bytes"] for r in runs) / 2**20
    share = limits["memory_mb"] / ONE_VCPU_MB
    estimate = cpu / share
    formatting = [r["formatting"] for r in runs if r["formatting"]]
    command = f"python -m bench.generator_run --rate {rate} --repeat {repeat}"
    return {
        "command": command + ("" if handler == HANDLER else f" --handler {handler}"),
        "handler": str(handler),
        "machine": machine(),
        "rate": rate,
        "repeat": repeat,
        "limits": limits,
        "vcpu_share": share,
        "peak_rss_mib": peak,
        "tmp_peak_mib": tmp_mib,
        "invoke_cpu_s": cpu,
        "invoke_cpu_s_all": [round(r["invoke_cpu_s"], 3) for r in runs],
        "invoke_wall_s_one_core": statistics.median(r["invoke_wall_s"] for r in runs),
        "init_cpu_s": init_cpu,
        "estimated_lambda_invoke_s": estimate,
        "estimated_lambda_init_s": init_cpu / share,
        "formatting_cpu_s": {name: statistics.median(f[name] for f in formatting) for name in formatting[0]}
        if formatting
        else {},
        "headroom": {
            "memory": 1 - peak / limits["memory_mb"],
            "tmp": 1 - tmp_mib / limits["tmp_mb"],
            "timeout": 1 - estimate / limits["timeout_s"],
        },
        "within_limits": peak < limits["memory_mb"]
        and tmp_mib < limits["tmp_mb"]
        and estimate < limits["timeout_s"],
    }


def render(result: dict[str, Any]) -> str:
    limits, head = result["limits"], result["headroom"]
    rows = [
        (
            "peak RSS (VmHWM, whole process)",
            f"{result['peak_rss_mib']:.0f} MiB",
            f"{limits['memory_mb']} MB",
            head["memory"],
        ),
        (
            "peak /tmp (the temporary file)",
            f"{result['tmp_peak_mib']:.1f} MiB",
            f"{limits['tmp_mb']} MB",
            head["tmp"],
        ),
        (
            "estimated Lambda duration, first invocation",
            f"{result['estimated_lambda_invoke_s']:.1f} s",
            f"{limits['timeout_s']} s",
            head["timeout"],
        ),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [
        f"generator at TRANSACTIONS_PER_RUN={result['rate']:,} ({result['repeat']} runs; "
        f"{result['machine']['cpu']}, Python {result['machine']['python']})",
        *(
            f"  {name.ljust(width)}  {value:>9}  limit {limit:>6}  headroom {room:.0%}"
            for name, value, limit, room in rows
        ),
        f"  CPU (user+sys) of the invocation: {result['invoke_cpu_s']:.2f} s (runs: "
        f"{', '.join(f'{c:.2f}' for c in result['invoke_cpu_s_all'])}); wall on one core "
        f"{result['invoke_wall_s_one_core']:.2f} s",
        f"  estimate = CPU s x {ONE_VCPU_MB} / {limits['memory_mb']} MB "
        f"(a {result['vcpu_share']:.3f} vCPU share); network waits not included",
        f"  init (import of the handler and boto3): {result['init_cpu_s']:.2f} CPU s, about "
        f"{result['estimated_lambda_init_s']:.1f} s at that share",
        f"  within every limit: {'yes' if result['within_limits'] else 'NO'}",
    ]
    fmt = result["formatting_cpu_s"]
    if fmt:
        lines.insert(
            -1,
            f"  formatting the run: streamed lines {fmt['streamed_cpu_s']:.2f} CPU s, plain reference "
            f"{fmt['reference_cpu_s']:.2f} CPU s ({fmt['reference_cpu_s'] / fmt['streamed_cpu_s']:.1f}x)",
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.generator_run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rate", type=int, default=100_000, help="TRANSACTIONS_PER_RUN (default 100,000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs, each in a fresh process (default 3)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    parser.add_argument("--out", type=Path, default=OUT / "generator_run.json", help="a copy of the JSON")
    parser.add_argument("--handler", type=Path, default=HANDLER, help="measure this handler file instead")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.handler, args.rate)
        return 0
    if not args.handler.is_file():
        parser.error(f"--handler {args.handler}: no such file")
    result = measure(args.rate, args.repeat, handler=args.handler.resolve())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    sys.stdout.write((json.dumps(result, indent=2) if args.json else render(result)) + "\n")
    return 0 if result["within_limits"] else 1


if __name__ == "__main__":
    sys.exit(main())
