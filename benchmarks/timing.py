"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics


class RoundTimes:
    """Per-round wall times (rounds 1..N) of one measured run, and their summaries."""

    round_times: list[float]

    @property
    def round1(self) -> float | None:
        """Wall time of round 1 (includes first-use costs: process starts, warm-up)."""
        return self.round_times[0] if self.round_times else None

    @property
    def steady(self) -> float | None:
        """Median wall time of rounds 2..N."""
        rest = self.round_times[1:]
        return statistics.median(rest) if rest else None
