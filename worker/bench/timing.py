"""Timing helpers and table printing shared by the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any


def throughput(call: Callable[[], object], items_per_call: int, min_seconds: float, warmup: int = 1) -> float:
    """Items per second of ``call``, run at least once and for at least ``min_seconds`` after warm-up."""
    for _ in range(warmup):
        call()
    calls = 0
    start = time.perf_counter()
    while True:
        call()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return calls * items_per_call / elapsed


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A plain-text table; ``columns`` are (key, heading) pairs, floats shown with 2 decimals."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.2f}"
        return "" if value is None else str(value)

    table = [[heading for _, heading in columns]] + [[cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    rendered = ["  ".join(text.rjust(width) for text, width in zip(line, widths, strict=True)) for line in table]
    rendered.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(rendered)
