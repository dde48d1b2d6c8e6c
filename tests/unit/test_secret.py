"""Secret never shows itself; RedactingFilter masks known secrets in log records."""

from __future__ import annotations

import io
import logging
import pickle
from collections.abc import Iterator

import pytest

from skyline.vista.secret import MASK, RedactingFilter, Secret

TOKEN = "eyJhbGciOi-SECRET-token"
PASSWORD = "hunter2-Pa55word"
KEY = "abcdefghijklmnopqrstuvwxyz012345"


# --- Secret -----------------------------------------------------------------------------------


def test_secret_masks_its_repr_and_str() -> None:
    secret = Secret(TOKEN)
    assert repr(secret) == "Secret('********')"
    assert str(secret) == MASK == "********"
    assert f"{secret}" == MASK
    assert TOKEN not in repr([secret, {"k": secret}])
    assert secret.reveal() == TOKEN


def test_secret_equality_truth_and_pickling() -> None:
    assert Secret(TOKEN) == Secret(TOKEN)
    assert Secret(TOKEN) != Secret(PASSWORD)
    assert Secret(TOKEN) != TOKEN  # never equal to the bare string
    assert hash(Secret(TOKEN)) == hash(Secret(TOKEN))
    assert bool(Secret(TOKEN)) is True
    assert bool(Secret("")) is False
    copy = pickle.loads(pickle.dumps(Secret(TOKEN)))
    assert isinstance(copy, Secret)
    assert copy.reveal() == TOKEN


# --- RedactingFilter ---------------------------------------------------------------------------


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO, RedactingFilter]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    redactor = RedactingFilter([TOKEN, PASSWORD, KEY])
    handler.addFilter(redactor)
    logger = logging.getLogger(f"vista-test-secret-{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, stream, redactor
    logger.removeHandler(handler)
    handler.close()


def test_masks_secrets_in_the_message(
    capture: tuple[logging.Logger, io.StringIO, RedactingFilter],
) -> None:
    logger, stream, _ = capture
    logger.warning(f"GET https://u:{PASSWORD}@remote/render failed with Bearer {TOKEN}")
    assert stream.getvalue() == (
        f"WARNING GET https://u:{MASK}@remote/render failed with Bearer {MASK}\n"
    )


def test_masks_secrets_in_the_args(
    capture: tuple[logging.Logger, io.StringIO, RedactingFilter],
) -> None:
    logger, stream, _ = capture
    logger.error("headers %s, key %r, n=%d", {"Authorization": f"Bearer {TOKEN}"}, KEY, 3)
    text = stream.getvalue()
    assert text == f"ERROR headers {{'Authorization': 'Bearer {MASK}'}}, key '{MASK}', n=3\n"


def test_masks_secrets_in_exception_text(
    capture: tuple[logging.Logger, io.StringIO, RedactingFilter],
) -> None:
    logger, stream, _ = capture
    try:
        raise ConnectionError(f"cannot connect to redis://:{PASSWORD}@10.0.0.1:6379")
    except ConnectionError:
        logger.exception("redis down")
    text = stream.getvalue()
    assert PASSWORD not in text
    assert text.startswith("ERROR redis down\nTraceback (most recent call last):\n")
    assert f"ConnectionError: cannot connect to redis://:{MASK}@10.0.0.1:6379" in text


def test_masks_secrets_in_a_chained_exception(
    capture: tuple[logging.Logger, io.StringIO, RedactingFilter],
) -> None:
    logger, stream, _ = capture
    try:
        try:
            raise ValueError(TOKEN)
        except ValueError as inner:
            raise RuntimeError(f"wrapped {KEY}") from inner
    except RuntimeError:
        logger.error("failed", exc_info=True)
    text = stream.getvalue()
    assert TOKEN not in text and KEY not in text
    assert f"ValueError: {MASK}" in text
    assert f"RuntimeError: wrapped {MASK}" in text


def test_records_without_secrets_are_untouched() -> None:
    redactor = RedactingFilter([TOKEN])
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "value %s of %s", (5, "m"), None)
    assert redactor.filter(record) is True
    assert record.msg == "value %s of %s"
    assert record.args == (5, "m")
    assert record.getMessage() == "value 5 of m"


def test_filter_rewrites_the_record_and_never_drops_it() -> None:
    redactor = RedactingFilter([TOKEN])
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "token=%s", (TOKEN,), None)
    assert redactor.filter(record) is True
    assert record.getMessage() == f"token={MASK}"
    assert record.args is None


def test_longest_secret_is_masked_whole_and_short_ones_are_ignored() -> None:
    redactor = RedactingFilter(["abc", "secret", "secret-long-value", ""])
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "a=secret-long-value b=secret c=abc", None, None
    )
    redactor.filter(record)
    assert record.getMessage() == f"a={MASK} b={MASK} c=abc"


def test_set_secrets_replaces_the_list() -> None:
    redactor = RedactingFilter()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, f"t={TOKEN}", None, None)
    assert redactor.filter(record) is True
    assert record.getMessage() == f"t={TOKEN}"  # nothing known yet
    redactor.set_secrets([TOKEN])
    record = logging.LogRecord("x", logging.INFO, __file__, 1, f"t={TOKEN}", None, None)
    redactor.filter(record)
    assert record.getMessage() == f"t={MASK}"
    redactor.set_secrets([PASSWORD])
    record = logging.LogRecord("x", logging.INFO, __file__, 1, f"t={TOKEN}", None, None)
    redactor.filter(record)
    assert record.getMessage() == f"t={TOKEN}"


def test_records_of_child_loggers_are_masked_by_the_handler_filter(
    capture: tuple[logging.Logger, io.StringIO, RedactingFilter],
) -> None:
    """logs.configure puts the filter on the handler, so propagated records pass through it."""
    logger, stream, _ = capture
    child = logger.getChild("sources.http")
    child.info("retrying with key %s", KEY)
    assert stream.getvalue() == f"INFO retrying with key {MASK}\n"
