"""Server metrics in the Prometheus text exposition format (no client library needed).

Request counts and latencies are recorded by the HTTP layer; token counts, queue depth and active
sequences are read from each model's ``serving.SchedulerStats`` when /metrics is scraped.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from localaug.serve.scheduler import ServedModel

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    total: float = 0.0
    n: int = 0

    def observe(self, seconds: float) -> None:
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1
        self.total += seconds
        self.n += 1


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Counters of one server (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, int], int] = defaultdict(int)
        self._latency: dict[str, _Histogram] = defaultdict(_Histogram)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(endpoint, status)] += 1
            self._latency[endpoint].observe(seconds)

    def render(self, models: Iterable[ServedModel]) -> str:
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")

        with self._lock:
            requests = dict(self._requests)
            latency = {k: (list(h.counts), h.total, h.n) for k, h in self._latency.items()}
        family("localaug_requests_total", "counter", "HTTP requests by endpoint and status code.")
        for (endpoint, status), count in sorted(requests.items()):
            lines.append(f'localaug_requests_total{{endpoint="{_label(endpoint)}",status="{status}"}} {count}')
        family("localaug_request_duration_seconds", "histogram", "Time from request to the last byte of the response.")
        for endpoint, (counts, total, n) in sorted(latency.items()):
            ep = _label(endpoint)
            for bound, count in zip(LATENCY_BUCKETS, counts, strict=True):
                lines.append(f'localaug_request_duration_seconds_bucket{{endpoint="{ep}",le="{bound:g}"}} {count}')
            lines.append(f'localaug_request_duration_seconds_bucket{{endpoint="{ep}",le="+Inf"}} {n}')
            lines.append(f'localaug_request_duration_seconds_sum{{endpoint="{ep}"}} {total:.6f}')
            lines.append(f'localaug_request_duration_seconds_count{{endpoint="{ep}"}} {n}')
        per_model = [
            ("localaug_prompt_tokens_total", "counter", "Prompt tokens of finished requests.", "prompt_tokens"),
            ("localaug_completion_tokens_total", "counter", "Generated tokens of finished samples.", "completion_tokens"),
            ("localaug_queue_depth", "gauge", "Requests waiting for a free slot.", None),
            ("localaug_active_sequences", "gauge", "Sequences decoding now.", "active"),
            ("localaug_active_sequences_peak", "gauge", "Most sequences decoded together since start.", "peak_active"),
            ("localaug_slots", "gauge", "Sequences one decode step can hold (--parallel).", "slots"),
            ("localaug_decode_steps_total", "counter", "llama_decode calls.", "decode_steps"),
            ("localaug_batch_tokens_total", "counter", "Tokens decoded over all llama_decode calls.", "batch_tokens"),
            ("localaug_requests_finished_total", "counter", "Requests whose every sample finished.", "requests_done"),
            ("localaug_requests_cancelled_total", "counter", "Requests cancelled (client gone).", "requests_cancelled"),
            ("localaug_requests_failed_total", "counter", "Requests failed by an internal error.", "requests_failed"),
            ("localaug_scheduler_restarts_total", "counter", "Scheduler loop restarts after internal errors.", "restarts"),
        ]
        models = list(models)
        for name, kind, help_text, attr in per_model:
            family(name, kind, help_text)
            for m in models:
                value = m.scheduler.queued if attr is None else getattr(m.scheduler.stats, attr)
                lines.append(f'{name}{{model="{_label(m.id)}"}} {value}')
        return "\n".join(lines) + "\n"
