"""What the provider-health tests share: a clock they move by hand."""

from __future__ import annotations


class Clock:
    """Seconds that pass only when a test says so (``clock.now += 10``)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now
