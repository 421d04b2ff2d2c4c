"""PNG charts of the main queries' results (matplotlib, no display needed), byte-identical for the same data.

The bytes depend only on the data, the labels and the pinned matplotlib: the style is matplotlib's
built-in default (a user's matplotlibrc is ignored), the font is the DejaVu Sans matplotlib ships, the
DPI is fixed and the PNG carries no Software or date metadata. So `make images` redraws the committed
charts without a diff unless the data changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import matplotlib as mpl

mpl.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator, StrMethodFormatter

from local.lambdas import load_lambda

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLOR = "#2f6f9f"
ACCENT = "#d9822b"
PARTIAL = "#9fbcd4"  # a day the window covers only in part
DPI = 110
# Everything that decides the pixels, fixed; on top of matplotlib's own defaults, not the user's rc.
STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 10,
    "axes.titlesize": 11,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "path.simplify": True,
}


def currency() -> str:
    """The currency of the synthetic catalog, as the generator names it (one definition)."""
    return str(load_lambda("generator").CURRENCY)


@dataclass(frozen=True)
class ChartContext:
    """What every chart says besides its data: the run it came from, the unit of money, the whole days."""

    subtitle: str
    currency: str
    complete_days: frozenset[date]  # a day drawn that is not here is labelled partial


@contextmanager
def _style() -> Iterator[None]:
    with plt.style.context("default"), mpl.rc_context(STYLE):  # type: ignore[arg-type]
        yield


def _money(values: pd.Series) -> list[float]:
    return [float(v) for v in values]


def _money_axis(ax: Axes, axis: Literal["x", "y"], label: str, unit: str) -> None:
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    target.set_label_text(f"{label} ({unit})")


def _bar_labels(ax: Axes, heights: pd.Series, orders: pd.Series) -> None:
    """The order count over each bar, on two short lines so that neighbours never touch."""
    for x, (height, count) in enumerate(zip(heights, orders, strict=True)):
        ax.annotate(f"{int(count):,}\norders", (x, float(height)), ha="center", va="bottom", fontsize=9)
    ax.margins(y=0.15)  # room for the labels above the tallest bar


def _finish(
    fig: Figure, ax: Axes, title: str, context: ChartContext, path: Path, *, grid: Literal["x", "y"] = "y"
) -> Path:
    # A figure-level title, so that long bar labels on the left cannot push it off the image.
    fig.suptitle(f"{title}\n{context.subtitle}", x=0.01, ha="left", fontsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis=grid, alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    # No "Software" (matplotlib's version) in the PNG: the same data gives the same bytes.
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return path


def sales_by_category(frame: pd.DataFrame, path: Path, context: ChartContext) -> Path:
    with _style():
        fig, ax = plt.subplots(figsize=(8, 4.2))
        ax.bar(frame["category"], _money(frame["total_sales"]), color=COLOR)
        _bar_labels(ax, frame["total_sales"], frame["transaction_count"])
        _money_axis(ax, "y", "total sales", context.currency)
        ax.tick_params(axis="x", labelrotation=25)
        return _finish(fig, ax, "Sales by category", context, path)


def revenue_by_hour(frame: pd.DataFrame, path: Path, context: ChartContext) -> Path:
    with _style():
        fig, ax = plt.subplots(figsize=(8, 4.2))
        ax.bar(frame["hour"], _money(frame["revenue"]), color=COLOR, label="revenue")
        ax.set_xlabel("hour of day (UTC)")
        _money_axis(ax, "y", "revenue", context.currency)
        ax.set_xticks(range(0, 24, 2))
        orders = ax.twinx()
        orders.plot(frame["hour"], frame["orders"], color=ACCENT, marker="o", markersize=3, label="orders")
        orders.set_ylabel("orders", color=ACCENT)
        orders.set_ylim(0, max(1, int(frame["orders"].max())) * 1.25)  # the line clear of the top edge
        orders.yaxis.set_major_locator(MaxNLocator(integer=True))
        orders.spines[["top"]].set_visible(False)
        return _finish(fig, ax, "Revenue and orders by hour of day", context, path)


def day_labels(frame: pd.DataFrame, context: ChartContext) -> list[str]:
    """YYYY-MM-DD per row of a result with year, month and day columns; "(partial)" under a partial day."""
    days = [
        date(int(y), int(m), int(d))
        for y, m, d in zip(frame["year"], frame["month"], frame["day"], strict=True)
    ]
    return [f"{d:%Y-%m-%d}" + ("" if d in context.complete_days else "\n(partial)") for d in days]


def daily_revenue(frame: pd.DataFrame, path: Path, context: ChartContext) -> Path:
    """One bar per UTC day; a day the window covers only in part is drawn pale and labelled partial."""
    with _style():
        fig, ax = plt.subplots(figsize=(8, 4.2))
        labels = day_labels(frame, context)
        colors = [PARTIAL if label.endswith("(partial)") else COLOR for label in labels]
        ax.bar(labels, _money(frame["revenue"]), color=colors)
        _bar_labels(ax, frame["revenue"], frame["orders"])
        _money_axis(ax, "y", "revenue", context.currency)
        ax.tick_params(axis="x", labelrotation=25 if len(labels) > 6 else 0)
        return _finish(fig, ax, "Daily revenue", context, path)


def top_products(frame: pd.DataFrame, path: Path, context: ChartContext) -> Path:
    with _style():
        fig, ax = plt.subplots(figsize=(8, 4.6))
        ordered = frame.iloc[::-1]
        ax.barh(ordered["product_name"], _money(ordered["revenue"]), color=COLOR)
        _money_axis(ax, "x", "revenue", context.currency)
        return _finish(fig, ax, "Top products by revenue", context, path, grid="x")


def quarantine_by_reason(frame: pd.DataFrame, path: Path, context: ChartContext) -> Path:
    with _style():
        fig, ax = plt.subplots(figsize=(8, 3.8))
        ordered = frame.iloc[::-1]
        ax.barh(ordered["reason"], [int(v) for v in ordered["records"]], color=ACCENT)
        ax.set_xlabel("quarantined records")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        return _finish(fig, ax, "Quarantined records by reason", context, path, grid="x")


Chart = Callable[["pd.DataFrame", Path, ChartContext], Path]

# query file stem -> (chart function, PNG name)
CHARTS: dict[str, tuple[Chart, str]] = {
    "sales_by_category": (sales_by_category, "sales_by_category.png"),
    "revenue_by_hour": (revenue_by_hour, "revenue_by_hour.png"),
    "daily_revenue": (daily_revenue, "daily_revenue.png"),
    "top_products_by_revenue": (top_products, "top_products_by_revenue.png"),
    "dq_quarantine_by_reason": (quarantine_by_reason, "quarantine_by_reason.png"),
}
