"""Prometheus metrics of one runtime (its own registry, so several runtimes never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServeMetrics:
    """Requests by outcome, latency (end to end and per model call), batch sizes, queues, SLO misses, energy."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("leanml_serve_requests", "Requests by outcome (ok, refused_slo, refused_overload, "
                                "expired, error, bad_input)", ["deployment", "variant", "outcome"], registry=r)
        self.latency = Histogram("leanml_serve_request_latency_seconds", "End-to-end latency of answered requests "
                                 "(arrival to answer)", ["deployment", "variant"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_latency = Histogram("leanml_serve_batch_latency_seconds", "Model time of one batch",
                                       ["deployment", "variant"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("leanml_serve_batch_size", "Examples per model call", ["deployment", "variant"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("leanml_serve_queue_depth", "Requests waiting for a model call",
                                 ["deployment", "variant"], registry=r)
        self.slo_misses = Counter("leanml_serve_slo_misses", "Answered requests that missed their SLO, by kind "
                                  "(latency: measured; accuracy, energy: by the variant's profile)",
                                  ["deployment", "variant", "kind"], registry=r)
        self.energy = Counter("leanml_serve_energy_joules", "Energy of answered requests, estimated from the "
                              "variant's profiled J/request (absent where energy is not measurable)",
                              ["deployment", "variant"], registry=r)
        self.ttft = Histogram("leanml_serve_ttft_seconds", "Time to first token of generate requests (arrival to "
                              "the first token of every prompt; continuously batched variants)",
                              ["deployment", "variant"], buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("leanml_serve_tpot_seconds", "Time per output token after the first, per generate "
                              "request (continuously batched variants)", ["deployment", "variant"],
                              buckets=TPOT_BUCKETS, registry=r)
        self.config_generation = Gauge("leanml_serve_config_generation", "Configuration version (bumps on every "
                                       "successful PUT /v1/config)", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
