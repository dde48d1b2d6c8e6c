"""A string that never shows itself in a repr, a log line or an exception message."""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections.abc import Iterable
from typing import TextIO
from urllib.parse import quote, quote_plus

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


MIN_LENGTH = 4
"""Values shorter than this would mask ordinary words; they are left alone."""


def forms(value: str) -> set[str]:
    """Every way ``value`` can be written back at us: as is, URL-quoted (path and form
    style), JSON-escaped, HTML-escaped, and base64 (an echoed ``Authorization: Basic`` header
    is the base64 of ``user:password``: give the pair, see :func:`basic_pair`)."""
    found = {
        value,
        quote(value, safe=""),
        quote(value),
        quote_plus(value),
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        html.escape(value),
        html.escape(value, quote=False),
        base64.b64encode(value.encode()).decode("ascii"),
        base64.b64encode(value.encode()).decode("ascii").rstrip("="),
    }
    return {f for f in found if len(f) >= MIN_LENGTH}


_SECRET_HEADER_WORDS = ("auth", "key", "token", "secret", "pass", "cookie", "session", "credential")


def is_secret_header(name: str) -> bool:
    """Whether a header's value is taken for a credential (Authorization, X-API-Key,
    X-Auth-Token, Cookie, a Grafana key...): masked wherever it could be shown."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_HEADER_WORDS)


def header_secrets(name: str, value: str) -> list[str]:
    """The secrets in a header: its value and, for 'Bearer xyz' or 'Basic xyz', the credential
    alone (and the user:password a Basic credential decodes to)."""
    if not is_secret_header(name):
        return []
    found = [value]
    scheme, _, credential = value.partition(" ")
    if credential:
        found.append(credential)
        if scheme.lower() == "basic":
            try:
                found.append(base64.b64decode(credential, validate=True).decode())
            except (ValueError, UnicodeDecodeError):
                pass  # not base64 of text: the credential itself is masked above
    return found


def basic_pair(user: str, password: str) -> str:
    """The text whose base64 is the credential of an ``Authorization: Basic`` header."""
    return f"{user}:{password}"


class Redactor:
    """Masks every form (:func:`forms`) of a set of secret values in a text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._forms: tuple[str, ...] = ()
        self.set_secrets(secrets)

    def set_secrets(self, secrets: Iterable[str]) -> None:
        every: set[str] = set()
        for value in secrets:
            if value and len(value) >= MIN_LENGTH:
                every |= forms(value)
        # Longest first, so that a secret containing another is masked whole.
        self._forms = tuple(sorted(every, key=len, reverse=True))

    def __bool__(self) -> bool:
        return bool(self._forms)

    def redact(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        return text


process_redactor = Redactor()
"""This process' secrets (every secret of the settings): set by :func:`use_secrets` (the CLI
after loading the settings, each process' logging set-up); used by the log filter, the CLI's
output and every text written to Redis that did not come from the settings."""


def use_secrets(secrets: Iterable[str]) -> None:
    process_redactor.set_secrets(secrets)


def redact(text: str) -> str:
    """``text`` with every form of every secret of this process masked."""
    return process_redactor.redact(text)


class RedactingStream(io.TextIOBase):
    """A text stream (stdout, stderr) that masks this process' secrets in what is written."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._stream.encoding


class RedactingFilter(logging.Filter):
    """Replaces every form of every known secret in a record's final message with a mask.

    A second line of defence: the code never formats a secret into a message on purpose, but a
    library exception text (a URL, a header dump) or a remote's echo might carry one.
    """

    def __init__(self, secrets: Iterable[str] | Redactor = ()) -> None:
        super().__init__()
        self.redactor = secrets if isinstance(secrets, Redactor) else Redactor(secrets)

    def set_secrets(self, secrets: Iterable[str]) -> None:
        self.redactor.set_secrets(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.redactor:
            return True
        message = record.getMessage()
        redacted = self.redactor.redact(message)
        if record.exc_info and record.exc_info[1] is not None:
            # Format the traceback now and scrub it too; the handler then uses exc_text.
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = self.redactor.redact(text)
            record.exc_info = None
        if redacted != message:
            record.msg = redacted
            record.args = None
        return True
