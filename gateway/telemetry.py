"""OpenTelemetry metrics of the gateway, and their Prometheus text rendering for ``GET /metrics``.

Metric names live here, nowhere else. Each ``Telemetry`` owns its own ``MeterProvider`` read by an
``InMemoryMetricReader`` (no global provider: several apps in one process stay apart, and no
exporter package is needed); ``render_prometheus`` turns one collection into the text exposition
format (version 0.0.4) for the instruments defined below.

Metrics must stay off the hot path: counters move on retries and failures only, never per
successful read, and gauges are observed at scrape time. Order calls (far rarer than reads, and
each already costing Redis round trips) are counted by outcome.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData, NumberDataPoint

from gateway.core.relay_order import Role
from gateway.upstream.breaker import CircuitBreaker, CircuitState

CIRCUIT_STATE = "expie_gateway.upstream.circuit_state"
RETRIES = "expie_gateway.upstream.retries"
FAILURES = "expie_gateway.upstream.failures"
ORDER_CALLS = "expie_gateway.orders.calls"
ORDER_REFUSALS = "expie_gateway.orders.refusals"
AUDIT_SPOOLED = "expie_gateway.audit.spooled"
SETTLEMENTS_SPOOLED = "expie_gateway.orders.settlements_spooled"
ORDERS_RECONCILED = "expie_gateway.orders.reconciled"
WS_SLOW_CLOSED = "expie_gateway.ws.slow_consumers_closed"
WS_CONFLATED = "expie_gateway.ws.depth_conflations"
LIVE_BOOK_RESYNCS = "expie_gateway.live_book.resyncs"
STATE_LOST = "expie_gateway.state.lost"
RELAY_STREAMS = "expie_gateway.fanout.relay_streams"
RELAY_SYNCS = "expie_gateway.fanout.relay_syncs"
METER_NAME = "expie_gateway"
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CIRCUIT_VALUES = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}

Attributes = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Instrument:
    name: str
    kind: str  # the Prometheus type: "gauge" or "counter"
    description: str

    @property
    def exposed_name(self) -> str:
        """Prometheus spelling: dots become underscores, counters end in ``_total``."""
        base = self.name.replace(".", "_")
        return f"{base}_total" if self.kind == "counter" else base


INSTRUMENTS = (
    Instrument(CIRCUIT_STATE, "gauge",
               "State of the upstream circuit breaker: 0 closed, 1 half-open, 2 open."),
    Instrument(RETRIES, "counter", "Upstream GET attempts repeated after a failure, by cause."),
    Instrument(FAILURES, "counter", "Failed upstream attempts (counted by the breaker), by cause."),
    Instrument(ORDER_CALLS, "counter",
               "Order calls sent to the exchange, by action and outcome (accepted, rejected, "
               "upstream_error, unknown)."),
    Instrument(ORDER_REFUSALS, "counter",
               "Order calls the gateway refused before the exchange, by action and reason."),
    Instrument(AUDIT_SPOOLED, "gauge",
               "Audit records waiting in memory for the audit store to come back."),
    Instrument(WS_SLOW_CLOSED, "counter",
               "WebSocket clients closed (1013) for falling too far behind on price or deals."),
    Instrument(WS_CONFLATED, "counter",
               "Times a lagging WebSocket client's depth was conflated into a fresh snapshot."),
    Instrument(SETTLEMENTS_SPOOLED, "gauge",
               "Idempotency results and order owners waiting in memory for their store."),
    Instrument(ORDERS_RECONCILED, "counter",
               "Order calls of unknown outcome settled from the exchange's state, by action and "
               "verdict (placed, not_placed, cancelled, not_cancelled, unresolved)."),
    Instrument(LIVE_BOOK_RESYNCS, "counter",
               "Live books resynced after disagreeing with the exchange's depth.query, by market."),
    Instrument(STATE_LOST, "gauge",
               "1 while this replica refuses order calls because Redis lost the shared state "
               "(until an admin acknowledges the loss), else 0."),
    Instrument(RELAY_STREAMS, "gauge",
               "Market-data streams (a market's depth, the ticker) this replica follows, by role: "
               "leader (holds the upstream subscription for the cluster), follower (fed by the "
               "relay), standalone (Redis unavailable: its own upstream subscription)."),
    Instrument(RELAY_SYNCS, "counter",
               "Times a follower loaded a stream's state from the relay's snapshot (joining, "
               "after a gap, a new leader or a Redis reconnect), by stream."),
)


def _description(name: str) -> str:
    return next(instrument.description for instrument in INSTRUMENTS if instrument.name == name)


class UpstreamMetrics:
    """The upstream client's ``UpstreamEvents``, and the circuit-state gauge of watched breakers."""

    def __init__(self, meter: Meter, upstream: str = "expie") -> None:
        self._upstream = upstream
        self._retries = meter.create_counter(
            RETRIES, unit="1", description=INSTRUMENTS[1].description)
        self._failures = meter.create_counter(
            FAILURES, unit="1", description=INSTRUMENTS[2].description)
        self._breakers: list[tuple[Attributes, CircuitBreaker]] = []
        self._by_cause: dict[str, Attributes] = {}
        meter.create_observable_gauge(CIRCUIT_STATE, callbacks=[self._observe],
                                      description=INSTRUMENTS[0].description)

    def watch(self, breaker: CircuitBreaker, upstream: str | None = None) -> None:
        self._breakers.append(({"upstream": upstream or self._upstream}, breaker))

    def retried(self, cause: str) -> None:
        self._retries.add(1, self._attributes(cause))

    def failed(self, cause: str) -> None:
        self._failures.add(1, self._attributes(cause))

    def _attributes(self, cause: str) -> Attributes:
        attributes = self._by_cause.get(cause)
        if attributes is None:
            attributes = self._by_cause[cause] = {"upstream": self._upstream, "cause": cause}
        return attributes

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(CIRCUIT_VALUES[breaker.state], attributes)
                for attributes, breaker in self._breakers]


class OrderMetrics:
    """The order desk's ``DeskEvents``, and the gauges of its spools (audit, settlements) and of
    the shared state."""

    def __init__(self, meter: Meter) -> None:
        self._calls = meter.create_counter(ORDER_CALLS, unit="1",
                                           description=INSTRUMENTS[3].description)
        self._refusals = meter.create_counter(ORDER_REFUSALS, unit="1",
                                              description=INSTRUMENTS[4].description)
        self._spooled: list[Callable[[], int]] = []
        meter.create_observable_gauge(AUDIT_SPOOLED, callbacks=[self._observe],
                                      description=INSTRUMENTS[5].description)
        self._reconciled = meter.create_counter(ORDERS_RECONCILED, unit="1",
                                                description=_description(ORDERS_RECONCILED))
        self._settlements: list[Callable[[], int]] = []
        meter.create_observable_gauge(SETTLEMENTS_SPOOLED, callbacks=[self._observe_settlements],
                                      description=_description(SETTLEMENTS_SPOOLED))
        self._lost: list[Callable[[], bool]] = []
        meter.create_observable_gauge(STATE_LOST, callbacks=[self._observe_lost],
                                      description=_description(STATE_LOST))

    def sent(self, action: str, outcome: str) -> None:
        self._calls.add(1, {"action": action, "outcome": outcome})

    def refused(self, action: str, reason: str) -> None:
        self._refusals.add(1, {"action": action, "reason": reason})

    def watch_spool(self, spooled: Callable[[], int]) -> None:
        self._spooled.append(spooled)

    def reconciled(self, action: str, verdict: str) -> None:
        self._reconciled.add(1, {"action": action, "verdict": verdict})

    def watch_settlements(self, spooled: Callable[[], int]) -> None:
        self._settlements.append(spooled)

    def watch_state(self, lost: Callable[[], bool]) -> None:
        self._lost.append(lost)

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(sum(count() for count in self._spooled))]

    def _observe_settlements(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(sum(count() for count in self._settlements))]

    def _observe_lost(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(int(any(lost() for lost in self._lost)))]


class FanoutMetrics:
    """The subscribers' ``SubscriberEvents`` and the live books' ``BookEvents``."""

    def __init__(self, meter: Meter) -> None:
        self._slow = meter.create_counter(WS_SLOW_CLOSED, unit="1",
                                          description=INSTRUMENTS[6].description)
        self._conflated = meter.create_counter(WS_CONFLATED, unit="1",
                                               description=INSTRUMENTS[7].description)
        self._resyncs = meter.create_counter(LIVE_BOOK_RESYNCS, unit="1",
                                             description=_description(LIVE_BOOK_RESYNCS))
        self._syncs = meter.create_counter(RELAY_SYNCS, unit="1",
                                           description=_description(RELAY_SYNCS))
        self._roles: dict[str, str] = {}
        meter.create_observable_gauge(RELAY_STREAMS, callbacks=[self._observe_roles],
                                      description=_description(RELAY_STREAMS))

    def slow_consumer_closed(self) -> None:
        self._slow.add(1)

    def depth_conflated(self) -> None:
        self._conflated.add(1)


    def live_book_resynced(self, market: str) -> None:
        self._resyncs.add(1, {"market": market})

    def relay_role(self, stream: str, role: Role | None) -> None:
        if role is None:
            self._roles.pop(stream, None)
        else:
            self._roles[stream] = role.value

    def relay_resynced(self, stream: str) -> None:
        self._syncs.add(1, {"stream": stream})

    def _observe_roles(self, _options: CallbackOptions) -> Iterable[Observation]:
        counts = Counter(self._roles.values())
        return [Observation(counts.get(role.value, 0), {"role": role.value}) for role in Role]


class Telemetry:
    """One app's meters; ``shutdown`` when the app stops."""

    def __init__(self) -> None:
        self._reader = InMemoryMetricReader()
        self._provider = MeterProvider(metric_readers=[self._reader], shutdown_on_exit=False)
        meter = self._provider.get_meter(METER_NAME)
        self.upstream = UpstreamMetrics(meter)
        self.orders = OrderMetrics(meter)
        self.fanout = FanoutMetrics(meter)

    def render_prometheus(self) -> str:
        points = _points_by_name(self._reader.get_metrics_data())
        return "".join(_render(instrument, points.get(instrument.name, []))
                       for instrument in INSTRUMENTS)

    def shutdown(self) -> None:
        self._provider.shutdown()


def _points_by_name(data: MetricsData | None) -> dict[str, list[NumberDataPoint]]:
    found: dict[str, list[NumberDataPoint]] = {}
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(
                    point for point in metric.data.data_points
                    if isinstance(point, NumberDataPoint))
    return found


def _render(instrument: Instrument, points: list[NumberDataPoint]) -> str:
    name = instrument.exposed_name
    lines = [f"# HELP {name} {instrument.description}", f"# TYPE {name} {instrument.kind}"]
    lines.extend(f"{name}{_labels(point.attributes or {})} {_number(point.value)}"
                 for point in points)
    return "\n".join(lines) + "\n"


def _labels(attributes: Mapping[str, object]) -> str:
    if not attributes:
        return ""
    pairs = ",".join(f'{_label_name(key)}="{_escape(str(value))}"'
                     for key, value in sorted(attributes.items()))
    return "{" + pairs + "}"


def _label_name(key: str) -> str:
    return "".join(char if char.isalnum() or char == "_" else "_" for char in key)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)

