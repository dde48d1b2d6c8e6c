"""What a fetch cycle has finished and not pushed yet: each metric's chain of queue items and
its changed failed windows, taken out for one push and put back if the push fails."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from skyline.vista.fetch_results import MetricResult
from skyline.vista.holes import Hole

FULL = 500
"""Finished metrics that make a push due at once (else it waits for the flush timer)."""


@dataclass
class Batch:
    """One push: ``chains`` (metric, its items) and ``holes`` (metric -> its failed windows)."""

    chains: list[tuple[str, list[str]]]
    holes: dict[str, list[Hole]]

    def metrics(self, owner: dict[str, str]) -> Iterable[str]:
        """The cycle's metrics it settles (a templated entry's names count as the entry)."""
        yield from (owner.get(m, m) for m, _ in self.chains)
        yield from self.holes


@dataclass
class Outbox:
    chains: list[tuple[str, list[str]]] = field(default_factory=list)
    holes: dict[str, list[Hole]] = field(default_factory=dict)
    owner: dict[str, str] = field(default_factory=dict)  # expanded name -> its entry's metric

    def __bool__(self) -> bool:
        return bool(self.chains or self.holes)

    def add(self, result: MetricResult) -> bool:
        """Keep a finished metric's items and holes; True when a push is due at once."""
        if result.holes is not None:
            self.holes[result.metric] = result.holes
        if result.items and result.entry.name_template is not None:
            self.chains += result.chains
            self.owner.update((name, result.metric) for name, _ in result.chains)
        elif result.items:
            self.chains.append((result.metric, result.items))
        return len(self.chains) >= FULL

    def take(self) -> Batch:
        """Everything kept so far, for one push (what finishes meanwhile waits for the next)."""
        batch = Batch(self.chains, self.holes)
        self.chains, self.holes = [], {}
        return batch

    def put_back(self, batch: Batch) -> None:
        """A push failed or was cancelled: pushed again later, before what came since."""
        self.chains = batch.chains + self.chains
        self.holes = {**batch.holes, **self.holes}
