"""Prometheus exposition shared by the services.

Services keep plain counters (dataclasses of ints) on their hot paths; a collector turns them
into metrics only when Prometheus scrapes, so counting costs an integer increment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


@dataclass(frozen=True)
class Sample:
    name: str
    help: str
    kind: Literal["counter", "gauge"]
    value: float
    labels: tuple[tuple[str, str], ...] = ()


class CallbackCollector(Collector):
    """Reads :class:`Sample` values from a callback at scrape time."""

    def __init__(self, read: Callable[[], Iterable[Sample]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for s in self._read():
            family = families.get(s.name)
            if family is None:
                labels = [k for k, _ in s.labels]
                family = (
                    CounterMetricFamily(s.name, s.help, labels=labels)
                    if s.kind == "counter"
                    else GaugeMetricFamily(s.name, s.help, labels=labels)
                )
                families[s.name] = family
            family.add_metric([v for _, v in s.labels], s.value)
        return list(families.values())
