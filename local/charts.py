"""PNG charts of the main queries' results (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import matplotlib as mpl

mpl.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLOR = "#2f6f9f"
ACCENT = "#d9822b"


def _money(values: pd.Series) -> list[float]:
    return [float(v) for v in values]


def _finish(
    fig: Figure, ax: Axes, title: str, subtitle: str, path: Path, *, grid: Literal["x", "y"] = "y"
) -> Path:
    # A figure-level title, so that long bar labels on the left cannot push it off the image.
    fig.suptitle(f"{title}\n{subtitle}", x=0.01, ha="left", fontsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis=grid, alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sales_by_category(frame: pd.DataFrame, path: Path, subtitle: str) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.bar(frame["category"], _money(frame["total_sales"]), color=COLOR)
    for x, (sales, count) in enumerate(zip(frame["total_sales"], frame["transaction_count"], strict=True)):
        ax.annotate(f"{int(count)} orders", (x, float(sales)), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("total sales")
    ax.tick_params(axis="x", labelrotation=25)
    return _finish(fig, ax, "Sales by category", subtitle, path)


def revenue_by_hour(frame: pd.DataFrame, path: Path, subtitle: str) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.bar(frame["hour"], _money(frame["revenue"]), color=COLOR, label="revenue")
    ax.set_xlabel("hour of day (UTC)")
    ax.set_ylabel("revenue")
    ax.set_xticks(range(0, 24, 2))
    orders = ax.twinx()
    orders.plot(frame["hour"], frame["orders"], color=ACCENT, marker="o", markersize=3, label="orders")
    orders.set_ylabel("orders", color=ACCENT)
    orders.set_ylim(bottom=0)
    orders.spines[["top"]].set_visible(False)
    return _finish(fig, ax, "Revenue and orders by hour of day", subtitle, path)


def daily_revenue(frame: pd.DataFrame, path: Path, subtitle: str) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.2))
    labels = [
        f"{y:04d}-{m:02d}-{d:02d}"
        for y, m, d in zip(frame["year"], frame["month"], frame["day"], strict=True)
    ]
    ax.bar(labels, _money(frame["revenue"]), color=COLOR)
    for x, (revenue, orders) in enumerate(zip(frame["revenue"], frame["orders"], strict=True)):
        ax.annotate(f"{int(orders)} orders", (x, float(revenue)), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("revenue")
    ax.tick_params(axis="x", labelrotation=25 if len(labels) > 6 else 0)
    return _finish(fig, ax, "Daily revenue", subtitle, path)


def top_products(frame: pd.DataFrame, path: Path, subtitle: str) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.6))
    ordered = frame.iloc[::-1]
    ax.barh(ordered["product_name"], _money(ordered["revenue"]), color=COLOR)
    ax.set_xlabel("revenue")
    return _finish(fig, ax, "Top products by revenue", subtitle, path, grid="x")


def quarantine_by_reason(frame: pd.DataFrame, path: Path, subtitle: str) -> Path:
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ordered = frame.iloc[::-1]
    ax.barh(ordered["reason"], [int(v) for v in ordered["records"]], color=ACCENT)
    ax.set_xlabel("quarantined records")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _finish(fig, ax, "Quarantined records by reason", subtitle, path, grid="x")


# query file stem -> (chart function, PNG name)
CHARTS = {
    "sales_by_category": (sales_by_category, "sales_by_category.png"),
    "revenue_by_hour": (revenue_by_hour, "revenue_by_hour.png"),
    "daily_revenue": (daily_revenue, "daily_revenue.png"),
    "top_products_by_revenue": (top_products, "top_products_by_revenue.png"),
    "dq_quarantine_by_reason": (quarantine_by_reason, "quarantine_by_reason.png"),
}
