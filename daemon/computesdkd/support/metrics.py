"""The daemon's own metrics, in Prometheus' text format (prometheus-client)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

RPC_SECONDS = Histogram(
    "computesdk_rpc_duration_seconds",
    "gRPC call latency (to the end of the call for streams)",
    ["method", "code"],
    buckets=(
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
        30,
        60,
    ),
)
OPEN_STREAMS = Gauge("computesdk_open_streams", "Streaming calls in progress", ["method"])
EXECS = Counter("computesdk_execs_total", "Commands started", ["provider"])
SAMPLERS = Gauge("computesdk_samplers", "Resource samplers running (one per sandbox and pace)")


class _StateCollector(Collector):
    """Figures read from the daemon's state at scrape time, so they never drift."""

    def __init__(
        self,
        sandboxes: Callable[[], dict[tuple[str, str, str], int]],
        subscribers: Callable[[], int],
    ) -> None:
        self._sandboxes = sandboxes
        self._subscribers = subscribers

    def collect(self) -> Iterator[Any]:
        g = GaugeMetricFamily(
            "computesdk_sandboxes",
            "Sandboxes by state, provider and tenant",
            labels=["state", "provider", "tenant"],
        )
        for (state, provider, tenant), n in sorted(self._sandboxes().items()):
            g.add_metric([state, provider, tenant], n)
        yield g
        yield GaugeMetricFamily(
            "computesdk_event_subscribers", "Live event subscriptions", value=self._subscribers()
        )


_collector: _StateCollector | None = None


def watch_state(
    sandboxes: Callable[[], dict[tuple[str, str, str], int]], subscribers: Callable[[], int]
) -> None:
    global _collector
    if _collector is not None:
        REGISTRY.unregister(_collector)
    _collector = _StateCollector(sandboxes, subscribers)
    REGISTRY.register(_collector)


def serve(listen: str) -> None:
    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host or "127.0.0.1")
