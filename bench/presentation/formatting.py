"""`fmt`: the one way a number is shown in reports, the dashboard and the gate's alerts.

A float to `digits` significant digits (`f"{x:.4g}"`: 1234.5 -> "1234", 12345.6 -> "1.235e+04"), an integer
whole ("12345": a count, a thread or CPU number, is exact), None as "n/a".
"""
from __future__ import annotations

NOT_AVAILABLE = "n/a"


def fmt(value: float | None, digits: int = 4) -> str:
    """`value` as shown: see the module docstring."""
    if value is None:
        return NOT_AVAILABLE
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)
