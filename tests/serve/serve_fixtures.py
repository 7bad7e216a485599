"""Constants and helpers the server's tests share (imported by name: tests/serve is on sys.path)."""

from __future__ import annotations

CONTEXT = "The Denver Broncos defeated the Carolina Panthers 24–10 to earn their third Super Bowl title."
JSON = {"Content-Type": "application/json"}


def samples(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} for every sample line."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out
