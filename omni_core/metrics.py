"""Prometheus metrics (prometheus-client), one registry per hub.

Label cardinality is bounded: channel, backend, kind and outcome are small fixed sets; the
tenant label can be switched off (OMNI_METRICS_TENANT_LABEL=false) for hubs with very many
tenants; instance state gauges have one series per instance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from omni_core.entities import Instance

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SLOW_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, tenant_label: bool = True) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.tenant_label = tenant_label
        base = ["channel", "tenant"] if tenant_label else ["channel"]
        r = self.registry
        self.received = Counter("omni_messages_received", "Inbound messages accepted (new)", base, registry=r)
        self.duplicates = Counter("omni_messages_duplicate", "Webhooks repeating a stored message", base, registry=r)
        self.sent = Counter("omni_messages_sent", "Outbound messages handed to their channel", base, registry=r)
        self.failed = Counter("omni_messages_failed", "Messages whose job died", [*base, "reason"], registry=r)
        self.ack_latency = Histogram(
            "omni_webhook_ack_seconds",
            "Time to acknowledge an inbound webhook",
            ["channel"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end = Histogram(
            "omni_end_to_end_seconds",
            "From an inbound message's arrival to its reply being sent",
            ["channel"],
            buckets=SLOW_BUCKETS,
            registry=r,
        )
        self.agent_latency = Histogram(
            "omni_agent_seconds",
            "Agent backend call duration",
            ["backend", "outcome"],
            buckets=SLOW_BUCKETS,
            registry=r,
        )
        self.attempts = Counter(
            "omni_delivery_attempts", "Job attempts by kind and outcome", ["kind", "outcome"], registry=r
        )
        self.dead = Counter("omni_jobs_dead", "Jobs that died", ["kind"], registry=r)
        self.queue_depth = Gauge("omni_queue_depth", "Jobs queued or running", registry=r)
        self.queue_oldest = Gauge(
            "omni_queue_oldest_age_seconds",
            "How long the longest-waiting due job has been due (jobs waiting for a retry are not due)",
            registry=r,
        )
        self.dead_jobs = Gauge("omni_dead_jobs", "Dead jobs kept for inspection or retry", registry=r)
        self.instance_up = Gauge(
            "omni_instance_connected",
            "1 when the instance's connection is open/connected/ready",
            ["channel", "instance", "state"],
            registry=r,
        )

    def child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, remembered: prometheus-client takes a lock and re-checks the
        label values on every call, several times per message. Not for metrics whose children are
        removed (``instance_up``)."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def labels(self, channel: str, tenant: str) -> tuple[str, ...]:
        return (channel, tenant) if self.tenant_label else (channel,)

    def set_instances(self, instances: Sequence[Instance]) -> None:
        self.instance_up.clear()
        for instance in instances:
            connected = instance.state in ("open", "connected", "ready")
            self.instance_up.labels(instance.channel, instance.name, instance.state).set(1 if connected else 0)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
