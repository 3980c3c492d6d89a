"""The side-by-side measuring loop the speed benchmarks share."""

from __future__ import annotations

import sys
import time
from typing import Callable


def interleaved(
    contenders: dict[str, Callable[[], list[float]]], repeats: int, unit: str, fmt: str = ".2f"
) -> dict[str, list[list[float]]]:
    """Run every contender once per repeat, rotating the order so that drifts in machine speed are
    shared out; returns, per contender, the figures each of its runs reported (one list per run)."""
    names = list(contenders)
    out: dict[str, list[list[float]]] = {k: [] for k in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            figures = contenders[name]()
            out[name].append(figures)
            shown = " ".join(format(x, fmt) for x in figures)
            print(f"repeat {r + 1} {name}: {shown} {unit} (process {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return out
