"""Prometheus metrics of the API service, on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("kta_api_requests", "Requests answered, by endpoint and HTTP status",
                                ["endpoint", "status"], registry=self.registry)
        self.queue_depth = Gauge("kta_api_queue_depth", "Requests waiting for an engine slot",
                                 registry=self.registry)
        self.inflight = Gauge("kta_api_inflight", "Requests being served by the engine", registry=self.registry)
        self.slots = Gauge("kta_api_slots", "Requests the engine is let serve at once (KTA_MAX_INFLIGHT: the "
                           "balance_serve engine's max_batch_size, 1 for a one-at-a-time engine)",
                           registry=self.registry)
        self.ttft = Histogram("kta_api_time_to_first_token_seconds", "From forwarding to the first token",
                              buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
                              registry=self.registry)
        self.tokens_per_second = Histogram("kta_api_tokens_per_second", "Streamed tokens per second, per request",
                                           buckets=(0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256),
                                           registry=self.registry)
        self.engine_errors = Counter("kta_api_engine_errors", "Engine failures, by kind", ["kind"],
                                     registry=self.registry)
