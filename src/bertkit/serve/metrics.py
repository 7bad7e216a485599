"""The server's metrics in Prometheus' text exposition format (version 0.0.4), written by hand: counters, gauges
and histograms with labels, enough for `GET /metrics` without a client library.

Reference: https://prometheus.io/docs/instrumenting/exposition_formats/ (`# HELP`, `# TYPE`, `name{label="v"} value`;
a histogram is cumulative `_bucket{le=...}` lines ending with le="+Inf", then `_sum` and `_count`).
All updates happen on the event loop's thread or under the GIL as single dict operations, so no lock is needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values, strict=True)] + ([extra] if extra else [])
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class Metric:
    kind = "untyped"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()):
        self.name, self.help, self.label_names = name, help, tuple(labels)

    def head(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(Metric):
    """A total that only grows, one per label combination."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()):
        super().__init__(name, help, labels)
        self.values: dict[tuple, float] = {}

    def inc(self, *labels: str, by: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + by

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0.0)

    def render(self) -> list[str]:
        return self.head() + [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in self.values.items()]


class Gauge(Metric):
    """A value read when scraped (a function: the queue's depth now)."""

    kind = "gauge"

    def __init__(self, name: str, help: str, read: Callable[[], float]):
        super().__init__(name, help)
        self.read = read

    def render(self) -> list[str]:
        return self.head() + [f"{self.name} {_number(self.read())}"]


class Histogram(Metric):
    """Observations counted into cumulative buckets (upper bounds `buckets`, then +Inf), with their sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Sequence[float], labels: Sequence[str] = ()):
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self.series: dict[tuple, list] = {}  # labels -> [counts per bucket (not cumulative), sum, count]

    def observe(self, value: float, *labels: str) -> None:
        s = self.series.setdefault(labels, [[0] * len(self.buckets), 0.0, 0])
        s[0][next(i for i, b in enumerate(self.buckets) if value <= b)] += 1
        s[1] += value
        s[2] += 1

    def render(self) -> list[str]:
        lines = self.head()
        for labels, (counts, total, count) in self.series.items():
            running = 0
            for bound, c in zip(self.buckets, counts, strict=True):
                running += c
                le = f'le="{_number(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, labels, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, labels)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels(self.label_names, labels)} {count}")
        return lines


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServerMetrics:
    """Every metric `bertkit serve` exports; `render()` is the body of GET /metrics."""

    def __init__(self, queue_rows: Callable[[], float], queue_requests: Callable[[], float],
                 in_flight: Callable[[], float]):  # fmt: skip
        self.requests = Counter(
            "bertkit_requests_total", "HTTP requests answered, by route and status", ("route", "status")
        )
        self.latency = Histogram("bertkit_request_duration_seconds", "time from the request's start to its answer",
                                 LATENCY_BUCKETS, ("route",))  # fmt: skip
        self.queue_wait = Histogram("bertkit_queue_wait_seconds", "time a request waited before its first model batch",
                                    LATENCY_BUCKETS)  # fmt: skip
        self.batch_rows = Histogram("bertkit_batch_rows", "windows (QA) or texts (classifier) in one model batch",
                                    (1, 2, 4, 8, 16, 32, 64, 128, 256, 512))  # fmt: skip
        self.batch_tokens = Histogram("bertkit_batch_tokens", "real tokens in one model batch (--max_batch_tokens caps it)",
                                      (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536))  # fmt: skip
        self.batch_seconds = Histogram("bertkit_batch_duration_seconds", "model time of one batch", LATENCY_BUCKETS)
        self.tokens = Counter("bertkit_tokens_total", "real tokens run through the model")
        self.dropped = Counter("bertkit_requests_dropped_total",
                               "requests whose work was dropped: client gone or --request_timeout passed", ("reason",))  # fmt: skip
        self.gauges = [
            Gauge("bertkit_queue_rows", "windows or texts waiting for the model", queue_rows),
            Gauge("bertkit_queue_requests", "requests with work waiting for the model", queue_requests),
            Gauge("bertkit_requests_in_flight", "model requests being answered (--max_concurrent_requests caps it)",
                  in_flight),
        ]  # fmt: skip

    def render(self) -> str:
        metrics = [self.requests, self.latency, self.queue_wait, self.batch_rows, self.batch_tokens,
                   self.batch_seconds, self.tokens, self.dropped, *self.gauges]  # fmt: skip
        return "".join(f"{line}\n" for m in metrics for line in m.render())
