"""Import the real handler files, lambda/<name>/lambda_function.py, the way Lambda runs them."""

from __future__ import annotations

import importlib.util
import sys
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
