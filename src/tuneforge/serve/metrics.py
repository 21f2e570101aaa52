"""Prometheus metrics of the server: requests, errors, latency, tokens in and out, queue depth, batching, request log.

Requests, errors and latency are counted by endpoint (app.Metered), /v1/classify included; a
classifier's server reports its worker's rounds and texts instead of the engine's decode steps.

Each app gets its own registry (several servers may live in one process, as in the tests);
the engine's gauges and step counters are read at scrape time, so serving never waits on them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


class EngineCollector:
    """Counters the engine keeps itself (it runs in its own thread and knows nothing of Prometheus)."""

    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        stats = self.engine.stats
        yield CounterMetricFamily("tuneforge_decode_steps", "Decode steps run (one shared forward pass each)",
                                  value=stats.decode_steps)
        yield CounterMetricFamily("tuneforge_decoded_rows", "Sequences decoded, summed over steps (/ steps = mean batch size)",
                                  value=stats.decoded_rows)
        yield CounterMetricFamily("tuneforge_prefills", "Prefill passes (newly admitted requests together)",
                                  value=stats.prefills)
        yield CounterMetricFamily("tuneforge_generated_tokens", "Tokens generated, including those of requests "
                                  "cancelled later", value=stats.generated_tokens)
        yield CounterMetricFamily("tuneforge_engine_failures", "Forward passes that raised; their requests got errors",
                                  value=stats.failures)


class ClassifierCollector:
    """A classifier's worker counters (serve/classifier.py): requests, texts, and the rounds they shared."""

    def __init__(self, worker):
        self.worker = worker

    def collect(self):
        stats = self.worker.stats
        yield CounterMetricFamily("tuneforge_classified_requests", "Classify requests answered by the classifier",
                                  value=stats.requests)
        yield CounterMetricFamily("tuneforge_classified_texts", "Texts classified", value=stats.texts)
        yield CounterMetricFamily("tuneforge_classify_rounds", "Rounds of forward passes, each over every request "
                                  "waiting when it began (requests / rounds = requests sharing a round)",
                                  value=stats.rounds)
        yield CounterMetricFamily("tuneforge_classify_failures", "Rounds that raised; their requests got errors",
                                  value=stats.failures)


class RequestLogCollector:
    """The request log's counters (monitor/requestlog.py keeps them; its writer thread knows nothing of Prometheus)."""

    def __init__(self, request_log):
        self.request_log = request_log

    def collect(self):
        stats = self.request_log.snapshot()
        yield CounterMetricFamily("tuneforge_request_log_written", "Requests written to the request log",
                                  value=stats.written)
        yield CounterMetricFamily("tuneforge_request_log_feedback", "Feedback rows written to the request log",
                                  value=stats.feedback)
        dropped = CounterMetricFamily("tuneforge_request_log_dropped", "Request records not logged (the request "
                                      "itself was answered), by reason", labels=["reason"])
        for reason, count in sorted(stats.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped
        yield CounterMetricFamily("tuneforge_request_log_failures", "Request log database errors caught (opening, "
                                  "writing, retention, feedback): locked, read-only, disk full, ...", value=stats.failures)
        yield CounterMetricFamily("tuneforge_request_log_reopened", "Times the request log's database file was found "
                                  "removed or replaced while serving, and opened (recreated) again", value=stats.reopened)
        yield CounterMetricFamily("tuneforge_request_log_lost", "Records written into a request log file that was "
                                  "then removed or replaced (no longer in the log)", value=stats.lost)
        yield CounterMetricFamily("tuneforge_request_log_pruned", "Logged requests deleted by retention (age or rows)",
                                  value=stats.pruned)
        yield GaugeMetricFamily("tuneforge_request_log_queue_depth", "Records waiting for the request log's writer",
                                value=stats.queued)


class ServerMetrics:
    def __init__(self, engine, request_log=None, collector=None):
        """`engine`: queue depth and running sequences; `collector`: its counters (default: the generation engine's)."""
        disable_created_metrics()  # no `_created` series beside every counter: half the text, nothing lost
        self.registry = CollectorRegistry()
        self.requests = Counter("tuneforge_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=self.registry)
        self.errors = Counter("tuneforge_request_errors", "Requests answered with an error (status >= 400, or an error "
                              "event in a stream), by endpoint and status", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("tuneforge_request_latency_seconds", "Time from request to the last byte of the answer",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.first_token = Histogram("tuneforge_time_to_first_token_seconds", "Time from request to the first generated text",
                                     ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.prompt_tokens = Counter("tuneforge_prompt_tokens", "Prompt tokens of admitted requests (tokens in)",
                                     ["model"], registry=self.registry)
        self.completion_tokens = Counter("tuneforge_completion_tokens", "Generated tokens (tokens out)",
                                         ["model"], registry=self.registry)
        self.in_flight = Gauge("tuneforge_requests_in_flight", "Generation or classify requests admitted and not "
                               "yet answered", registry=self.registry)
        Gauge("tuneforge_queue_depth", "Requests waiting to join the running batch",
              registry=self.registry).set_function(lambda: engine.queue_depth)
        Gauge("tuneforge_running_sequences", "Sequences in the running batch",
              registry=self.registry).set_function(lambda: engine.running)
        self.registry.register(collector or EngineCollector(engine))
        if request_log is not None:
            self.registry.register(RequestLogCollector(request_log))

    def render(self) -> bytes:
        return generate_latest(self.registry)
