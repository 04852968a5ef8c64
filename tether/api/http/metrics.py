"""`GET /metrics`: the hub's numbers in Prometheus' text format, via prometheus_client.

A custom collector reads the hub at scrape time instead of mirroring every packet into
prometheus_client counters: the device keeps its own counters (the hot path stays free of metric
objects), and a scrape of a 10,000-peer device costs one pass over its peers. Each app has its own
CollectorRegistry, so tests and several apps in one process never share or collide on metrics.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

from tether import keys
from tether.device.hub import DeviceHub

log = logging.getLogger("tether.api")

# Label values for `tetherctl_api_requests{method}`: anything else counts as "other", so that
# requests with made-up methods cannot grow the metric (and the scrape) without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


class HubCollector:
    """Reads the hub at scrape time, so that the packet path keeps no metric objects."""

    def __init__(self, hub: DeviceHub) -> None:
        self.hub = hub
        self.requests: Counter[tuple[str, str]] = Counter()  # (method, status) -> count
        self._lock = threading.Lock()

    def count_request(self, method: str, status: int) -> None:
        """Count one HTTP request by method (unknown ones as `other`, bounding the label set)
        and status."""
        label = method if method in KNOWN_METHODS else "other"
        with self._lock:
            self.requests[(label, str(int(status)))] += 1

    def collect(self):
        """prometheus_client's hook: the metric families, read from the hub now."""
        rx = CounterMetricFamily(
            "tetherctl_peer_receive_bytes",
            "Bytes received from the peer",
            labels=["device", "public_key"],
        )
        tx = CounterMetricFamily(
            "tetherctl_peer_transmit_bytes",
            "Bytes sent to the peer",
            labels=["device", "public_key"],
        )
        hs = GaugeMetricFamily(
            "tetherctl_peer_last_handshake_seconds",
            "Unix time of the peer's latest handshake (0: never)",
            labels=["device", "public_key"],
        )
        handshakes = CounterMetricFamily(
            "tetherctl_handshakes", "Completed handshakes", labels=["device"]
        )
        drops = CounterMetricFamily(
            "tetherctl_dropped_packets", "Packets dropped, by reason", labels=["device", "reason"]
        )
        flows = GaugeMetricFamily(
            "tetherctl_exit_flows", "Open exit flows, by protocol", labels=["device", "protocol"]
        )
        refused = CounterMetricFamily(
            "tetherctl_exit_refused",
            "Packets from the peer that the exit refused by policy",
            labels=["device", "public_key"],
        )
        egress = GaugeMetricFamily(
            "tetherctl_egress_up",
            "1 when the device's upstream proxy took its latest connection or probe, 0 when it "
            "failed (its flows then fail; none leaves directly)",
            labels=["device", "egress"],
        )
        peers = GaugeMetricFamily(
            "tetherctl_peers", "Peers on the running device", labels=["device"]
        )
        queue = SummaryMetricFamily(
            "tetherctl_device_queue_delay_seconds",
            "How long the first datagram of each socket read waited in the device's socket queue "
            "(the exit sizes upload windows to keep it near 1 ms)",
            labels=["device"],
        )
        for name in self.hub.device_names():
            try:
                stats = self.hub.peer_stats(name)
                counters = self.hub.counters(name)
            except Exception:  # a device going down mid-scrape must not fail the whole scrape
                log.exception("%s: metrics unavailable", name)
                continue
            peers.add_metric([name], len(stats))
            for s in stats:
                key = keys.encode(s.public_key)
                rx.add_metric([name, key], s.rx_bytes)
                tx.add_metric([name, key], s.tx_bytes)
                hs.add_metric([name, key], s.last_handshake or 0.0)
            handshakes.add_metric([name], counters.handshakes)
            for reason, count in sorted(counters.drops.items()):
                drops.add_metric([name, reason], count)
            for proto, count in sorted(counters.exit_flows.items()):
                flows.add_metric([name, proto], count)
            for key, count in sorted(counters.exit_refused.items()):
                refused.add_metric([name, keys.encode(key)], count)
            for label, up in sorted(counters.egress_up.items()):
                egress.add_metric([name, label], 1 if up else 0)
            waited, reads = counters.queue_delay
            queue.add_metric([name], count_value=reads, sum_value=waited)
        requests = CounterMetricFamily(
            "tetherctl_api_requests", "API requests answered", labels=["method", "status"]
        )
        with self._lock:
            for (method, status), count in sorted(self.requests.items()):
                requests.add_metric([method, status], count)
        return [rx, tx, hs, handshakes, drops, flows, refused, egress, peers, queue, requests]


def make_registry(hub: DeviceHub) -> tuple[CollectorRegistry, HubCollector]:
    """A registry of the app's own, so that apps in one process (tests) never share metrics."""
    registry = CollectorRegistry(auto_describe=False)
    collector = HubCollector(hub)
    registry.register(collector)
    return registry, collector


def render(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus' text format, the body of `GET /metrics`."""
    return generate_latest(registry)
