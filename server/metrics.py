"""Server counters in the Prometheus text format (GET /metrics)."""

from __future__ import annotations

import threading
from collections import defaultdict

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Thread-safe counters: requests, tokens, time to first token, cache hits by tier,
    stabilised blocks and prefix divergences, rejections."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self._ttft = [0] * (len(TTFT_BUCKETS) + 1)
        self._ttft_sum = 0.0
        self.gauges: dict[str, float] = {}

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        with self._lock:
            self._counters[(name, tuple(sorted(labels.items())))] += value

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._counters.get((name, tuple(sorted(labels.items()))), 0.0)

    def observe_ttft(self, seconds: float) -> None:
        with self._lock:
            i = next((i for i, b in enumerate(TTFT_BUCKETS) if seconds <= b), len(TTFT_BUCKETS))
            self._ttft[i] += 1
            self._ttft_sum += seconds

    def render(self) -> str:
        """All metrics as Prometheus exposition text."""
        with self._lock:
            lines, seen = [], set()
            for (name, labels), value in sorted(self._counters.items()):
                if name not in seen:
                    lines.append(f"# TYPE agent_{name} counter")
                    seen.add(name)
                lines.append(f"agent_{name}{_labels(labels)} {value:g}")
            for name, value in sorted(self.gauges.items()):
                lines += [f"# TYPE agent_{name} gauge", f"agent_{name} {value:g}"]
            lines.append("# TYPE agent_ttft_seconds histogram")
            total = 0
            for bound, n in zip((*TTFT_BUCKETS, "+Inf"), self._ttft):
                total += n
                lines.append(f'agent_ttft_seconds_bucket{{le="{bound}"}} {total}')
            lines += [f"agent_ttft_seconds_sum {self._ttft_sum:g}",
                      f"agent_ttft_seconds_count {total}"]
        return "\n".join(lines) + "\n"


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"
