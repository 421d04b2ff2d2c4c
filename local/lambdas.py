"""Import the real handler files, lambda/<name>/lambda_function.py, the way Lambda runs them."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def load_lambda(name: str, path: Path | None = None) -> ModuleType:
    """Import lambda/<name>/lambda_function.py (or `path`, a candidate file) under a unique module name.

    Every handler file is called lambda_function.py (the console's default), so they cannot all be
    imported by that name in one process. The tests, the demo and the benchmark all load handlers here,
    so a process that uses several of them gets one copy of each handler.
    """
    module_name = f"{name}_lambda_function" if path is None else f"candidate_{name}_lambda_function"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = path or ROOT / "lambda" / name / "lambda_function.py"
    if not path.is_file():
        raise FileNotFoundError(f"handler file not found: {path}")
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def handler_environment(values: Mapping[str, str], handlers: Sequence[ModuleType]) -> Iterator[None]:
    """Set the handlers' environment (as Lambda would), and put the previous one back afterwards."""
    removed = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
    saved = {k: os.environ.get(k) for k in (*values, *removed)}
    for key in removed:
        os.environ.pop(key, None)
    os.environ.update(values)
    for handler in handlers:
        handler.s3_client.cache_clear()  # a client made earlier points elsewhere
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for handler in handlers:
            handler.s3_client.cache_clear()
