"""A string that never shows itself in a repr, a log line or an exception message."""

from __future__ import annotations

import logging
from collections.abc import Iterable

MASK = "********"


class Secret:
    """Wraps a credential. ``str()``/``repr()`` give a mask; ``reveal()`` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        # Worker processes receive the configuration by pickling (spawn start method).
        return (Secret, (self._value,))


class RedactingFilter(logging.Filter):
    """Replaces every known secret value in a record's final message with a mask.

    A second line of defence: the code never formats a secret into a message on purpose, but a
    library exception text (a URL, a header dump) might carry one.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: tuple[str, ...] = ()
        self.set_secrets(secrets)

    def set_secrets(self, secrets: Iterable[str]) -> None:
        # Longest first so that a secret containing another is masked whole; very short values
        # (under 4 characters) would mask ordinary words and are left alone.
        self._secrets = tuple(sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True))

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        redacted = message
        for secret in self._secrets:
            if secret in redacted:
                redacted = redacted.replace(secret, MASK)
        if record.exc_info and record.exc_info[1] is not None:
            # Format the traceback now and scrub it too; the handler then uses exc_text.
            text = logging.Formatter().formatException(record.exc_info)
            for secret in self._secrets:
                text = text.replace(secret, MASK)
            record.exc_text = text
            record.exc_info = None
        if redacted != message:
            record.msg = redacted
            record.args = None
        return True
