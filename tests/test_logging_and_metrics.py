"""LOG_LEVEL and the metric lines behave the same in the transformer and the compactor as in the generator
(tests/test_generator.py): any case, read with the configuration, stamped when written, and a Lambda log
level that would drop the metrics is reported (docs/logging-and-metrics.md)."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import BUCKET, ROOT, load_event, load_lambda

HANDLERS = ["transformer", "compactor"]
RAW_KEY = "raw/year=2026/month=11/day=25/transactions-20261125T140500Z-1a2b3c4d.json"


@pytest.fixture(autouse=True)
def _levels(monkeypatch):
    monkeypatch.delenv("LOG_LEVEL", raising=False)
    monkeypatch.delenv("AWS_LAMBDA_LOG_LEVEL", raising=False)
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


def invoke(name: str, s3, monkeypatch) -> dict[str, Any]:
    """Run the handler on its sample event, as a console test would; its client is the test's."""
    module = load_lambda(name)
    monkeypatch.setattr(module, "s3_client", lambda: s3)
    monkeypatch.setenv("BUCKET_NAME", BUCKET)
    if name == "transformer":
        generator = load_lambda("generator")
        body = generator.generate_run(
            generator.Config(bucket=BUCKET, transactions_per_run=3, seed=1),
            datetime(2026, 11, 25, 14, 5, tzinfo=UTC),
        )[1]
        s3.put_object(Bucket=BUCKET, Key=RAW_KEY, Body=body)
        return module.lambda_handler(load_event("s3_put_event.json"), None)
    return module.lambda_handler(load_event("compactor_scheduled_event.json"), None)


def metric_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if '"_aws"' in line]


def env_for(name: str, **values: str) -> dict[str, str]:
    return {"BUCKET_NAME": BUCKET, **values}


@pytest.mark.parametrize("name", HANDLERS)
@pytest.mark.parametrize(
    ("value", "level"),
    [
        (None, logging.INFO),
        ("", logging.INFO),
        ("info", logging.INFO),
        (" debug ", logging.DEBUG),
        ("warn", logging.WARNING),
        ("Warning", logging.WARNING),
        ("error", logging.ERROR),
        ("CRITICAL", logging.CRITICAL),
    ],
)
def test_log_level_is_read_in_any_case_and_warn_means_warning(name, value, level):
    env = env_for(name) | ({} if value is None else {"LOG_LEVEL": value})
    assert load_lambda(name).load_config(env).log_level == level


@pytest.mark.parametrize("name", HANDLERS)
@pytest.mark.parametrize("value", ["verbose", "TRACE", "FATAL", "20"])
def test_an_unknown_log_level_is_a_configuration_error_that_lists_the_accepted_values(name, value):
    module = load_lambda(name)
    with pytest.raises(module.ConfigError) as raised:
        module.load_config(env_for(name, LOG_LEVEL=value))
    message = str(raised.value)
    assert "LOG_LEVEL" in message
    assert repr(value) in message
    assert all(level in message for level in ("DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL"))


@pytest.mark.parametrize("name", HANDLERS)
def test_the_handler_file_imports_whatever_log_level_holds(name, monkeypatch):
    # Lambda imports the file before any invocation: a bad value must not make every invocation fail
    monkeypatch.setenv("LOG_LEVEL", "nonsense")
    module_name = f"{name}_import_check"
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "lambda" / name / "lambda_function.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, module_name, module)
    spec.loader.exec_module(module)
    assert module.parse_log_level("info") == logging.INFO


@pytest.mark.parametrize("name", HANDLERS)
def test_the_handler_with_an_unknown_log_level_fails_naming_it_before_writing(name, s3, monkeypatch):
    monkeypatch.setenv("LOG_LEVEL", "loud")
    before = s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0)
    with pytest.raises(load_lambda(name).ConfigError, match="LOG_LEVEL"):
        invoke(name, s3, monkeypatch)
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == before + (name == "transformer")


@pytest.mark.parametrize("name", HANDLERS)
def test_log_level_warning_quiets_the_handlers_info_logs_but_not_its_metrics(
    name, s3, monkeypatch, capsys, caplog
):
    monkeypatch.setenv("LOG_LEVEL", "warning")
    invoke(name, s3, monkeypatch)
    assert logging.getLogger().level == logging.WARNING
    assert not [r for r in caplog.records if r.levelno < logging.WARNING and r.name == "root"]
    assert len(metric_lines(capsys.readouterr().out)) == 1


@pytest.mark.parametrize("name", HANDLERS)
def test_a_replayed_event_from_weeks_ago_is_stamped_with_the_time_the_metrics_are_emitted(
    name, s3, monkeypatch, capsys
):
    # GIVEN the sample event (November 2026) handled weeks later: the clock says 2026-12-23
    now = datetime(2026, 12, 23, 9, 30, 15, 250_000, tzinfo=UTC)
    monkeypatch.setattr(load_lambda(name), "_utc_now", lambda: now)
    result = invoke(name, s3, monkeypatch)
    # THEN the data keeps the event's dates, and the datapoint carries the time it was written
    if name == "transformer":
        assert result["processed"][0]["outputs"][0].startswith(
            "processed/transactions/year=2026/month=11/day=25/"
        )
    else:
        assert [day["date"] for day in result["days"]][-1] == "2026-11-25"
    (emf,) = metric_lines(capsys.readouterr().out)
    assert emf["_aws"]["Timestamp"] == int(now.timestamp() * 1000)


@pytest.mark.parametrize("name", HANDLERS)
@pytest.mark.parametrize("lambda_level", ["WARN", "error", "FATAL"])
def test_a_lambda_log_level_that_drops_the_metrics_is_logged_as_an_error(
    name, s3, monkeypatch, caplog, lambda_level
):
    monkeypatch.setenv("AWS_LAMBDA_LOG_LEVEL", lambda_level)
    invoke(name, s3, monkeypatch)
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert f"application log level is {lambda_level.upper()}" in record.getMessage()
    assert "INFO" in record.getMessage()
    assert "LOG_LEVEL" in record.getMessage()


@pytest.mark.parametrize("name", HANDLERS)
@pytest.mark.parametrize("lambda_level", [None, "TRACE", "DEBUG", "INFO"])
def test_a_lambda_log_level_that_keeps_the_metrics_logs_no_error(name, s3, monkeypatch, caplog, lambda_level):
    if lambda_level is not None:
        monkeypatch.setenv("AWS_LAMBDA_LOG_LEVEL", lambda_level)
    invoke(name, s3, monkeypatch)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "root"]
