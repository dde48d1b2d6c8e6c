"""Bytes <-> records: queue items (versioned JSON) and Skyline's watermark values.

Everything Vista writes to Redis is JSON that Python's ``ast.literal_eval`` also reads (no
``null``/``true``/``false`` in values an unmodified Skyline parses).
"""

from __future__ import annotations

import ast
import json
import math
from typing import Any

from skyline.vista.errors import PayloadError
from skyline.vista.model import ITEM_VERSION, DeadLetter, QueueItem, Watermark

_SOURCES = ("graphite", "prometheus", "replay")


def encode_item(item: QueueItem) -> str:
    body: dict[str, Any] = {
        "v": item.version,
        "id": item.id,
        "metric": item.metric,
        "source": item.source,
        "host": item.host,
        "target": item.target,
        "frequency": item.frequency,
        "fetched_at": round(item.fetched_at, 3),
        "seq": item.seq,
        "points": item.points,
    }
    if item.replay:
        body["replay"] = True
    # allow_nan=False: a NaN/Inf that slipped through validation is a bug, not a value to queue.
    try:
        return json.dumps(body, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        raise PayloadError(f"item {item.id} of {item.metric} cannot be encoded: {exc}") from exc


def _points(raw: object) -> tuple[tuple[int, float], ...]:
    if not isinstance(raw, list):
        raise PayloadError("'points' is not a list")
    points = []
    for pair in raw:
        # The shape encode_item writes ([int, float]) first; anything else is checked in full.
        if type(pair) is list and len(pair) == 2:
            ts, value = pair
            if type(ts) is int and type(value) is float:
                points.append((ts, value))
                continue
        if not isinstance(pair, list) or len(pair) != 2:
            raise PayloadError(f"point {pair!r} is not [timestamp, value]")
        ts, value = pair
        if isinstance(ts, bool) or not isinstance(ts, int):
            raise PayloadError(f"timestamp {ts!r} is not an integer")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PayloadError(f"value {value!r} is not a number")
        points.append((ts, float(value)))
    return tuple(points)


def decode_item(raw: str | bytes) -> QueueItem:
    """Parse a queue item. Raises PayloadError for anything that is not a valid v1 item."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise PayloadError("not a JSON object (an item of the original Vista?)")
    if body.get("v") != ITEM_VERSION:
        raise PayloadError(f"unsupported item version {body.get('v')!r}")
    try:
        source = body["source"]
        if source not in _SOURCES:
            raise PayloadError(f"unknown source {source!r}")
        return QueueItem(
            id=str(body["id"]),
            metric=_text(body, "metric"),
            source=source,
            host=str(body.get("host", "")),
            target=str(body.get("target", "")),
            points=_points(body["points"]),
            fetched_at=float(body["fetched_at"]),
            frequency=int(body.get("frequency", 60)),
            seq=int(body.get("seq", 0)),
            replay=bool(body.get("replay", False)),
        )
    except KeyError as exc:
        raise PayloadError(f"missing field {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"bad field: {exc}") from exc


def _text(body: dict[str, Any], key: str) -> str:
    value = body[key]
    if not isinstance(value, str) or not value:
        raise PayloadError(f"{key!r} is not a non-empty string")
    return value


def item_metric(raw: str | bytes) -> str | None:
    """The metric of an item, even of one that fails full decoding; None if unknowable."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    metric = body.get("metric") if isinstance(body, dict) else None
    return metric if isinstance(metric, str) and metric else None


def _literal(raw: str | bytes) -> object:
    text = raw.decode() if isinstance(raw, bytes) else raw
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def decode_watermark_hash(raw: str | bytes | None) -> Watermark | None:
    """A flux.last.metric_data field: {'timestamp': ts, 'value': v} as JSON or Python literal."""
    if raw is None:
        return None
    body = _literal(raw)
    if not isinstance(body, dict):
        return None
    ts = _number(body.get("timestamp"))
    if ts is None or not math.isfinite(ts):
        return None
    return Watermark(int(ts), _number(body.get("value")))


def decode_watermark_key(raw: str | bytes | None) -> Watermark | None:
    """A flux.last.<metric> value: [ts, value] as JSON or Python literal."""
    if raw is None:
        return None
    body = _literal(raw)
    if not isinstance(body, (list, tuple)) or not body:
        return None
    ts = _number(body[0])
    if ts is None or not math.isfinite(ts):
        return None
    return Watermark(int(ts), _number(body[1]) if len(body) > 1 else None)


def _float_text(value: float) -> str:
    # repr gives the shortest round-tripping form; it is valid JSON and a Python literal.
    return repr(float(value))


def encode_watermark_hash(mark: Watermark) -> str:
    """JSON that json.loads and ast.literal_eval both read: {"timestamp": 1, "value": 2.0}."""
    value = (
        "0.0" if mark.value is None or not math.isfinite(mark.value) else _float_text(mark.value)
    )
    return f'{{"timestamp": {int(mark.timestamp)}, "value": {value}}}'


def encode_watermark_key(mark: Watermark) -> str:
    value = (
        "0.0" if mark.value is None or not math.isfinite(mark.value) else _float_text(mark.value)
    )
    return f"[{int(mark.timestamp)}, {value}]"


def encode_dead(dead: DeadLetter) -> str:
    return json.dumps(
        {
            "id": dead.id,
            "reason": dead.reason,
            "dead_at": round(dead.dead_at, 3),
            "worker": dead.worker,
            "metric": dead.metric,
            "item": dead.item,
        },
        separators=(",", ":"),
    )


def decode_dead(raw: str | bytes) -> DeadLetter:
    try:
        body = json.loads(raw)
        return DeadLetter(
            id=str(body["id"]),
            reason=str(body["reason"]),
            dead_at=float(body["dead_at"]),
            worker=str(body.get("worker", "")),
            item=str(body["item"]),
            metric=str(body.get("metric", "")),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise PayloadError(f"bad dead letter: {exc}") from exc
