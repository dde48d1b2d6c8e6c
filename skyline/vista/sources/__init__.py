"""Remote sources: Graphite render API and Prometheus HTTP API, and the polite HTTP edge they
share (http.py).

Each source module holds its pure URL building and answer parsing, and a :class:`Source`: how
a cycle's due windows of that source's metrics become requests, and their answers outcomes.
:data:`skyline.vista.sources.registry.SOURCES` maps ``remote_host_type`` to its Source; the
fetch cycle (fetch_cycle.py) runs them through the :class:`Fetching` it offers, and knows no
source by name.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from skyline.vista.config import VistaConfig
    from skyline.vista.entries import FetchEntry
    from skyline.vista.fetch_results import Member, MetricResult, Outcome
    from skyline.vista.sources.stream import StreamParser

HOST_LEVEL_ERRORS = frozenset(
    {
        "connect",
        "timeout",
        "truncated",
        "client_error",
        "http_429",
        "http_502",
        "http_503",
        "http_504",
        "host_backoff",
    }
)
"""Failures that say something about the host, not about one target: the host backs off, and a
failed Graphite batch is not split into single requests."""


class Fetching(Protocol):
    """What a source's requests may do in the cycle that runs them."""

    @property
    def config(self) -> VistaConfig: ...

    def spawn(self, fetch: Coroutine[Any, Any, None], members: Sequence[Member]) -> None:
        """Run ``fetch`` as a task of the cycle; ``members`` are the windows it answers for
        (settled with an 'internal' error should it fail unexpectedly)."""

    async def get(
        self,
        result: MetricResult | None,
        entry: FetchEntry,
        url: str,
        stream: StreamParser | None = None,
    ) -> object:
        """The JSON at ``url`` with ``entry``'s credentials and host limits (counted on
        ``result``): decoded, or what ``stream`` made of it (sources/stream.py); SourceError
        otherwise."""

    async def settle(self, result: MetricResult, n: int, outcome: Outcome) -> None:
        """Window ``n`` of ``result`` is answered."""

    def redactor(self, entry: FetchEntry) -> Callable[[str], str]:
        """Masks ``entry``'s credentials in a text from its remote."""


class Source(Protocol):
    """One kind of remote (``remote_host_type``)."""

    accepts_error_json: bool
    """Error answers (4xx/5xx) carry a JSON body worth reading (Prometheus' ``error``)."""

    def split_step(self, entry: FetchEntry) -> int:
        """The step a failed window of ``entry`` is split on when retried (0: any second)."""

    def start(self, cycle: Fetching, results: Sequence[MetricResult]) -> None:
        """Spawn the requests of these metrics' windows (all of this source) on ``cycle``."""
