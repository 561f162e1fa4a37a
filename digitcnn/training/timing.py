"""Where a job's time goes, written as `timings.json` in its output folder (read by bench/)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from digitcnn.core.disk import write_text_whole


def process_age() -> float:
    """Seconds since this process started (Linux: /proc; elsewhere 0)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return uptime - ticks / os.sysconf("SC_CLK_TCK")


class Timings:
    """Named durations in seconds; `measure` adds to one, `set` records a value."""

    def __init__(self) -> None:
        self.values: dict[str, float | dict[str, list[float]]] = {}

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.values[name] = self.values.get(name, 0.0) + time.perf_counter() - started

    def set(self, name: str, value: float) -> None:
        self.values[name] = float(value)

    def set_series(self, name: str, series: dict[str, list[float]]) -> None:
        """Durations of each call, by kind (e.g. every MLflow request by function)."""
        self.values[name] = {k: [round(float(v), 6) for v in vs] for k, vs in series.items()}

    def write(self, path: Path) -> None:
        write_text_whole(path, json.dumps(self.values, indent=2, sort_keys=True))
