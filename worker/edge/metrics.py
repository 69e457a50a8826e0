"""`GET /metrics`: what the edge functions served, in Prometheus' text format.

One registry per app (prometheus_client's `CollectorRegistry`), so two apps in one
process (the tests, the dev API beside `suparag serve`) never share counts:

- `suparag_edge_requests_total{function, status}`
- `suparag_edge_request_seconds{function}`: latency histogram, end to end in the app
- `suparag_edge_model_seconds{function}`: time in the embedding model (cache misses)
- `suparag_edge_query_cache_hits_total{model}` / `..._misses_total{model}` / `..._entries`
- `suparag_queue_depth{queue}`: jobs waiting (queued or leased) in each worker queue,
  read from the database at scrape time
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.models.cache import CachedEmbedder

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Latency buckets in seconds: the search goals are 15 ms warm and 50 ms cold.
_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class _Live(Collector):
    """Gauges read when scraped: cache sizes and counts, and queue depth."""

    def __init__(self, caches: Callable[[], Iterable[CachedEmbedder]],
                 queue_depth: Callable[[], Mapping[str, int]]) -> None:
        self._caches, self._queue_depth = caches, queue_depth

    def collect(self) -> Iterator[Metric]:
        hits = CounterMetricFamily("suparag_edge_query_cache_hits",
                                   "Query vectors served from the cache", labels=["model"])
        misses = CounterMetricFamily("suparag_edge_query_cache_misses",
                                     "Query vectors the model had to embed", labels=["model"])
        size = GaugeMetricFamily("suparag_edge_query_cache_entries",
                                 "Vectors held in the query cache", labels=["model"])
        for cache in self._caches():
            hits.add_metric([cache.name], cache.hits)
            misses.add_metric([cache.name], cache.misses)
            size.add_metric([cache.name], len(cache))
        yield from (hits, misses, size)
        depth = GaugeMetricFamily("suparag_queue_depth", "Jobs waiting in each worker queue",
                                  labels=["queue"])
        for queue, count in self._queue_depth().items():
            depth.add_metric([queue], count)
        yield depth


class EdgeMetrics:
    """The counters and histograms of one edge app."""

    def __init__(self, caches: Callable[[], Iterable[CachedEmbedder]],
                 queue_depth: Callable[[], Mapping[str, int]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("suparag_edge_requests", "Requests answered, by function and "
                                "HTTP status", ["function", "status"], registry=self.registry)
        self.latency = Histogram("suparag_edge_request_seconds", "Time to answer a request",
                                 ["function"], buckets=_BUCKETS, registry=self.registry)
        self.model = Histogram("suparag_edge_model_seconds", "Time spent in the embedding "
                               "model per request", ["function"], buckets=_BUCKETS,
                               registry=self.registry)
        self.registry.register(_Live(caches, queue_depth))

    def served(self, function: str, status: int, seconds: float) -> None:
        self.requests.labels(function, str(status)).inc()
        self.latency.labels(function).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)

