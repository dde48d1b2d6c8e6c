"""The small exception tree of Vista.

VistaError
├── ConfigError     settings that cannot run (carries every problem found)
├── SourceError     a remote answered badly or not at all
├── SinkError       Flux or carbon did not take a batch
│   └── SinkAuthError     the sink refused our credentials (configuration, not transient)
└── PayloadError    a queue item that cannot be decoded
"""

from __future__ import annotations


class VistaError(Exception):
    """Base class of every error Vista raises on purpose."""


class ConfigError(VistaError):
    """The settings are invalid. ``problems`` lists every mistake, one line each."""

    def __init__(
        self, problems: list[str], path: str = "", warnings: list[str] | None = None
    ) -> None:
        self.problems = problems
        self.path = path
        self.warnings = warnings or []
        where = f" in {path}" if path else ""
        super().__init__(f"{len(problems)} problem(s){where}:\n  " + "\n  ".join(problems))


class SourceError(VistaError):
    """A fetch failed. ``kind`` is a short stable label used for counting (e.g. 'http_503')."""

    def __init__(self, kind: str, message: str, *, retry_after: float | None = None) -> None:
        self.kind = kind
        self.retry_after = retry_after
        super().__init__(message)


class SinkError(VistaError):
    """A batch was not accepted for a transient reason; the items are kept and retried."""


class SinkAuthError(SinkError):
    """The sink refused our key (Flux 401): a configuration error, retried slowly."""


class PayloadError(VistaError):
    """A queue item could not be decoded."""
