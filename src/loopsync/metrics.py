"""Prometheus metrics: the only module that imports prometheus-client.

Two sources. Events (`loopsync.telemetry`) counted as they happen in this process: HTTP
requests, throttling, rate-limit waits, cycles. State figures (returns by stage, effects
by kind and status, the verdict) read at scrape time through a callable the caller
supplies (`web.py` keeps all data access), so a scrape shows what the state files say
even right after a restart.

Labels are bounded: a merchant, a system, a stage, an effect kind and status, a status
code, a verdict. Never a return id, a URL or an error text. A value outside a known set
(an effect kind a newer loopsync wrote) is counted as "other".

Each `Metrics` owns its registry (no process-global state): tests build their own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from loopsync import telemetry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Stage names a cycle reports errors under (cycle.py's stages, runner's "credentials").
# "state": the state file failed; "crashed": the cycle raised something unforeseen.
STAGES = frozenset({"ingest", "push", "poll", "act", "credentials", "state", "crashed"})
# Cycles last seconds to hours (a backfill): buckets up to six hours.
CYCLE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
# How late a cycle got a worker: on time is under a second; 10 % of a 15-minute interval
# is 90 s (serve.cycle_late); a pool too small for its merchants shows minutes.
LATENESS_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 90, 180, 300, 900, 3600)


@dataclass(frozen=True)
class StateFigures:
    """One merchant's figures read from its state file at scrape time."""

    merchant: str
    returns_by_stage: Mapping[str, int] = field(default_factory=dict)
    effects: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (kind, status)
    verdict: str = ""
    interval_seconds: float = 0.0
    last_success_epoch: float | None = None
    webhook_missed: int | None = None  # returns polling found first while webhooks were healthy
    webhook_last_epoch: float | None = None


Figures = Callable[[], Iterable[StateFigures]]

# Every metric name this module exports (the alert-rule test checks against it).
NAMES = frozenset(
    {
        "loopsync_up",
        "loopsync_scheduler_heartbeat_timestamp_seconds",
        "loopsync_last_success_timestamp_seconds",
        "loopsync_cycle_duration_seconds",
        "loopsync_cycle_start_lateness_seconds",
        "loopsync_cycles_total",
        "loopsync_stage_errors_total",
        "loopsync_returns",
        "loopsync_effects",
        "loopsync_merchant_verdict",
        "loopsync_schedule_interval_seconds",
        "loopsync_http_requests_total",
        "loopsync_http_throttled_total",
        "loopsync_throttle_waits_total",
        "loopsync_rate_limit_wait_seconds_total",
        "loopsync_webhooks_total",
        "loopsync_webhook_missed_returns",
        "loopsync_webhook_last_event_timestamp_seconds",
    }
)


SERIES_SUFFIXES = ("_bucket", "_sum", "_count", "_created")


def _bounded(value: str, known: frozenset[str]) -> str:
    return value if value in known else "other"


def _status_label(status: int | None) -> str:
    if status is None:
        return "none"  # no answer: connection failed, deadline passed
    return str(status) if 100 <= status <= 599 else "other"


class _StateCollector(Collector):
    """Figures read at scrape time (one read-only look at each state file)."""

    def __init__(
        self,
        figures: Figures,
        kinds: frozenset[str],
        statuses: frozenset[str],
        stages: frozenset[str],
    ) -> None:
        self.figures = figures
        self.kinds, self.statuses, self.stages = kinds, statuses, stages

    def collect(self) -> Iterator[Metric]:
        returns = GaugeMetricFamily(
            "loopsync_returns",
            "Returns in the state file by stage (the backlog)",
            labels=["merchant", "stage"],
        )
        effects = GaugeMetricFamily(
            "loopsync_effects",
            "Ledger effects by kind and status",
            labels=["merchant", "kind", "status"],
        )
        verdict = GaugeMetricFamily(
            "loopsync_merchant_verdict",
            "1 for the merchant's current verdict",
            labels=["merchant", "verdict"],
        )
        interval = GaugeMetricFamily(
            "loopsync_schedule_interval_seconds",
            "The merchant's schedule.every",
            labels=["merchant"],
        )
        success = GaugeMetricFamily(
            "loopsync_last_success_timestamp_seconds",
            "End of the last cycle without errors (Unix time)",
            labels=["merchant"],
        )
        missed = GaugeMetricFamily(
            "loopsync_webhook_missed_returns",
            "Returns a scheduled cycle found first while webhooks were healthy (missed)",
            labels=["merchant"],
        )
        last_hook = GaugeMetricFamily(
            "loopsync_webhook_last_event_timestamp_seconds",
            "When the last webhook event was accepted (Unix time)",
            labels=["merchant"],
        )
        for fig in self.figures():
            if fig.webhook_missed is not None:
                missed.add_metric([fig.merchant], fig.webhook_missed)
            if fig.webhook_last_epoch is not None:
                last_hook.add_metric([fig.merchant], fig.webhook_last_epoch)
            for stage, n in sorted(fig.returns_by_stage.items()):
                returns.add_metric([fig.merchant, _bounded(stage, self.stages)], n)
            for (kind, status), n in sorted(fig.effects.items()):
                effects.add_metric(
                    [fig.merchant, _bounded(kind, self.kinds), _bounded(status, self.statuses)], n
                )
            if fig.verdict:
                verdict.add_metric([fig.merchant, fig.verdict], 1)
            if fig.interval_seconds:
                interval.add_metric([fig.merchant], fig.interval_seconds)
            if fig.last_success_epoch is not None:
                success.add_metric([fig.merchant], fig.last_success_epoch)
        yield from (returns, effects, verdict, interval, success, missed, last_hook)


class Metrics:
    """The exporter: subscribe() to telemetry, render() for /metrics."""

    def __init__(
        self,
        figures: Figures | None = None,
        *,
        kinds: Iterable[str] = (),
        statuses: Iterable[str] = (),
        stages: Iterable[str] = (),
    ) -> None:
        # No `_created` series: they double the series count and no alert reads them.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in the library
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.up = Gauge("loopsync_up", "1 while serve runs", registry=r)
        self.up.set(1)
        self.heartbeat = Gauge(
            "loopsync_scheduler_heartbeat_timestamp_seconds",
            "Last tick of the scheduler's heartbeat (Unix time)",
            registry=r,
        )
        self.cycle_seconds = Histogram(
            "loopsync_cycle_duration_seconds",
            "Duration of a merchant's cycle",
            ["merchant"],
            buckets=CYCLE_BUCKETS,
            registry=r,
        )
        # One histogram for the process, no merchant label: lateness is the pool's (every
        # worker busy), and 500 merchants x 13 buckets would be series nobody reads.
        self.lateness = Histogram(
            "loopsync_cycle_start_lateness_seconds",
            "How long after it was due a scheduled cycle got a worker",
            buckets=LATENESS_BUCKETS,
            registry=r,
        )
        self.cycles = Counter(
            "loopsync_cycles",
            "Cycles ended, by outcome (ok, errors)",
            ["merchant", "outcome"],
            registry=r,
        )
        self.stage_errors = Counter(
            "loopsync_stage_errors",
            "Cycles in which a stage failed",
            ["merchant", "stage"],
            registry=r,
        )
        self.requests = Counter(
            "loopsync_http_requests",
            "HTTP attempts by system and status code (none: no answer)",
            ["merchant", "system", "status"],
            registry=r,
        )
        self.throttled = Counter(
            "loopsync_http_throttled",
            "Throttle answers (429 and in-band throttling) by system",
            ["merchant", "system"],
            registry=r,
        )
        self.waits = Counter(
            "loopsync_throttle_waits",
            "Waits before a request by cause "
            "(limiter: loopsync's budget; server: the remote throttled)",
            ["merchant", "system", "cause"],
            registry=r,
        )
        self.wait_seconds = Counter(
            "loopsync_rate_limit_wait_seconds",
            "Seconds waited on rate limits",
            ["merchant", "system", "cause"],
            registry=r,
        )
        self.webhooks = Counter(
            "loopsync_webhooks",
            "Webhook requests by source and outcome (accepted, duplicate, or why refused)",
            ["merchant", "source", "outcome"],
            registry=r,
        )
        self.last_success: dict[str, float] = {}
        if figures is not None:
            r.register(
                _StateCollector(
                    self._with_events(figures),
                    frozenset(kinds),
                    frozenset(statuses),
                    frozenset(stages),
                )
            )

    def _with_events(self, figures: Figures) -> Figures:
        """State figures, the last success taken from this process's events when newer."""

        def merged() -> Iterator[StateFigures]:
            for fig in figures():
                seen = self.last_success.get(fig.merchant)
                if seen is not None and (fig.last_success_epoch or 0) < seen:
                    yield StateFigures(
                        fig.merchant,
                        fig.returns_by_stage,
                        fig.effects,
                        fig.verdict,
                        fig.interval_seconds,
                        seen,
                        fig.webhook_missed,
                        fig.webhook_last_epoch,
                    )
                else:
                    yield fig

        return merged

    # -- events ---------------------------------------------------------------------------
    def on_event(self, event: telemetry.Event) -> None:
        if isinstance(event, telemetry.RequestDone):
            self.requests.labels(event.merchant, event.system, _status_label(event.status)).inc()
        elif isinstance(event, telemetry.ThrottleWait):
            self.waits.labels(event.merchant, event.system, event.cause.value).inc()
            self.wait_seconds.labels(event.merchant, event.system, event.cause.value).inc(
                max(event.seconds, 0.0)
            )
            if event.cause is telemetry.WaitCause.SERVER:
                self.throttled.labels(event.merchant, event.system).inc()
        elif isinstance(event, telemetry.WebhookReceived):
            self.webhooks.labels(event.merchant, event.source, event.outcome).inc()
        elif isinstance(event, telemetry.CycleStarted):
            self.lateness.observe(max(event.late_seconds, 0.0))
        else:
            self.cycle_seconds.labels(event.merchant).observe(max(event.seconds, 0.0))
            self.cycles.labels(event.merchant, "ok" if event.ok else "errors").inc()
            for stage in event.failed_stages:
                self.stage_errors.labels(event.merchant, _bounded(stage, STAGES)).inc()
            if event.ok:
                self.last_success[event.merchant] = event.ended_epoch

    def subscribe(self) -> None:
        telemetry.subscribe(self.on_event)

    def unsubscribe(self) -> None:
        telemetry.unsubscribe(self.on_event)

    def beat(self, epoch: float) -> None:
        self.heartbeat.set(epoch)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def names_in(text: str) -> set[str]:
    """The loopsync metric names an expression mentions, a histogram's `_bucket`, `_sum`
    and `_count` series read as the histogram (for checking alert rules)."""
    names = set()
    for token in re.findall(r"\bloopsync_[a-z0-9_]+", text):
        base = next(
            (
                token.removesuffix(s)
                for s in SERIES_SUFFIXES
                if token.endswith(s) and token.removesuffix(s) in NAMES
            ),
            token,
        )
        names.add(base)
    return names
