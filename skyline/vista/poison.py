"""A worker's guard against poison items: a batch that fails for an unexpected reason (a bug,
or an item that triggers one) does not kill the worker. Each item still held is retried alone;
one that fails alone is given back with its attempt counted, and after VISTA_MAX_ATTEMPTS it is
dead-lettered, so a poison item cannot crash workers for ever. Redis errors are not caught:
the worker's loop rides out an outage."""

from __future__ import annotations

import logging
from collections.abc import Callable

from skyline.vista import codec, redisconn, telemetry
from skyline.vista.fetchqueue import FetchQueue

# The worker's logger: these lines are the worker's, whichever module writes them.
logger = logging.getLogger("skyline.vista.worker")


def process_safely(
    process: Callable[[list[str]], None],
    raws: list[str],
    queue: FetchQueue,
    wid: str,
    max_attempts: int,
) -> None:
    """``process(raws)``, falling back to one item at a time when it fails."""
    try:
        process(raws)
        return
    except redisconn.REDIS_ERRORS:
        raise
    except Exception:
        logger.exception("a batch of %d item(s) failed; retrying its items one by one", len(raws))
    for raw in queue.held_by(wid, raws):
        try:
            process([raw])
        except redisconn.REDIS_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - counted, then dead-lettered
            reason = f"{type(exc).__name__}: {exc}"
            _, dead = queue.release(
                wid, [raw], count_attempt=True, max_attempts=max_attempts, reason=reason
            )
            if dead:
                telemetry.ITEMS_DEAD.labels("attempts").inc(dead)
            logger.error("an item of %s failed (%s)%s", codec.item_metric(raw) or "?",
                         reason, "; dead-lettered" if dead else "; given back")  # fmt: skip
