"""The Pareto front: the points no other point beats on both axes (the report's and the dashboard's plots).

A point is beaten when another is at least as good on both axes and better on one; points equal on both axes
beat neither. Which way is better is given per axis (`x_higher`, `y_higher`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

P = TypeVar("P")


def pareto_front(points: Sequence[P], x: Callable[[P], float], y: Callable[[P], float], *, x_higher: bool = True,
                 y_higher: bool = False) -> list[P]:
    """The points of `points` no other point beats (see the module docstring), sorted by x (ties in their order)."""
    def goodness(p: P) -> tuple[float, float]:  # both "higher is better"
        return (x(p) if x_higher else -x(p)), (y(p) if y_higher else -y(p))

    scored = [goodness(p) for p in points]

    def beaten(mine: tuple[float, float]) -> bool:
        return any(other[0] >= mine[0] and other[1] >= mine[1] and other != mine for other in scored)

    return sorted((p for p, mine in zip(points, scored) if not beaten(mine)), key=x)
