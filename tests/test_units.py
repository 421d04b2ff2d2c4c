"""Money has a unit everywhere: the catalog's currency, named once in the generator, in SQL and on charts."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from local import catalog, charts, demo
from tests.conftest import load_lambda

CURRENCY = load_lambda("generator").CURRENCY
MONEY_COLUMN = re.compile(r"\b(total_amount|price)\b")


def test_the_generator_names_one_iso_4217_currency_for_its_catalog() -> None:
    assert re.fullmatch(r"[A-Z]{3}", CURRENCY)


def _reads_money(path: Path) -> bool:
    lines = path.read_text(encoding="utf-8").splitlines()
    return bool(MONEY_COLUMN.search("\n".join(line for line in lines if not line.startswith("--"))))


MONEY_QUERIES = [p for p in catalog.query_files() if _reads_money(p)]


def test_most_queries_return_money() -> None:
    assert len(MONEY_QUERIES) >= 5


@pytest.mark.parametrize("path", MONEY_QUERIES, ids=lambda p: p.name)
def test_a_query_returning_money_names_the_currency_in_its_question(path: Path) -> None:
    assert f"({CURRENCY}" in demo.question(path) or f"in {CURRENCY}" in demo.question(path)


SAMPLE = {
    "sales_by_category": {
        "category": ["Books"],
        "transaction_count": [2],
        "total_sales": [10.0],
        "avg_order": [5.0],
    },
    "revenue_by_hour": {"hour": [3], "orders": [2], "revenue": [10.0]},
    "daily_revenue": {
        "year": [2026],
        "month": [11],
        "day": [24],
        "orders": [2],
        "revenue": [10.0],
        "units": [3],
    },
    "top_products_by_revenue": {"product_name": ["Yoga Mat"], "revenue": [10.0]},
    "dq_quarantine_by_reason": {"reason": ["malformed_json"], "records": [1], "files": [1]},
}


@pytest.mark.parametrize("stem", sorted(charts.CHARTS))
def test_every_money_axis_of_a_chart_names_the_currency(
    stem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    labels: list[str] = []

    def capture(fig: Any, ax: Any, *args: Any, **kwargs: Any) -> Path:
        labels.extend([ax.get_xlabel(), ax.get_ylabel()])
        plt.close(fig)
        return tmp_path / "chart.png"

    monkeypatch.setattr(charts, "_finish", capture)
    context = charts.ChartContext(
        subtitle="t", currency=CURRENCY, complete_days=frozenset({date(2026, 11, 24)})
    )
    draw, _ = charts.CHARTS[stem]

    draw(pd.DataFrame(SAMPLE[stem]), tmp_path / "chart.png", context)

    money = [label for label in labels if "revenue" in label or "sales" in label]
    assert money or stem == "dq_quarantine_by_reason"
    assert all(label.endswith(f"({CURRENCY})") for label in money), labels
