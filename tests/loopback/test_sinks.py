"""Sinks: the exact bytes sent to carbon, the Flux request body, and FluxSink's handling of each
Flux answer against the Flux double (tests/fakes/flux.py), which answers as listen.py does."""

from __future__ import annotations

import ast
import json
import pickle
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from skyline.vista.config import CarbonConfig, FluxConfig
from skyline.vista.errors import SinkAuthError
from skyline.vista.secret import Secret
from skyline.vista.sinks import SinkPoint, SinkResult
from skyline.vista.sinks.carbon import CarbonSink, pickle_message, plaintext_message
from skyline.vista.sinks.flux import (
    FluxSink,
    offending_index,
    point_json,
    rejected_names,
    request_body,
)
from tests.fakes.flux import DEFAULT_KEY, FluxServer

NOW = 1_800_000_000


def entries(metric: str, start: int, count: int, step: int = 60) -> list[SinkPoint]:
    return [SinkPoint(metric, start + i * step, float(i) + 0.5) for i in range(count)]


# --- carbon -------------------------------------------------------------------------------


def test_plaintext_lines_are_exact_and_positional() -> None:
    data = plaintext_message(
        [SinkPoint("a.b", 1718000040, 1.00243039089e11), SinkPoint("c", 1718000100, 1e-05)]
    )
    assert data == b"a.b 100243039089 1718000040\nc 0.00001 1718000100\n"


def test_pickle_message_is_length_prefixed_protocol_2() -> None:
    message = pickle_message([SinkPoint("a.b", 1718000040, 2.5)])
    (length,) = struct.unpack("!L", message[:4])
    assert length == len(message) - 4
    assert message[4:6] == b"\x80\x02"  # protocol 2, what carbon's unpickler expects
    assert pickle.loads(message[4:]) == [("a.b", (1718000040, 2.5))]


class Receiver:
    """A TCP server that records every byte, standing in for carbon's pickle receiver."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.data = bytearray()
        self.connections = 0
        self.current: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            self.current = conn
            with conn:
                try:
                    while chunk := conn.recv(65536):
                        self.data += chunk
                except OSError:
                    continue

    def drop(self) -> None:
        """Close the current connection from the server side (a restarted carbon)."""
        if self.current is not None:
            self.current.shutdown(socket.SHUT_RDWR)

    def messages(self) -> list[list[tuple[str, tuple[int, float]]]]:
        out, data = [], bytes(self.data)
        while data:
            (length,) = struct.unpack("!L", data[:4])
            out.append(pickle.loads(data[4 : 4 + length]))
            data = data[4 + length :]
        return out

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_carbon_sink_sends_every_point_in_messages_of_500(receiver: Receiver) -> None:
    sink = CarbonSink(CarbonConfig("127.0.0.1", pickle_port=receiver.port))
    batch = entries("x.y", NOW - 6000, 1234)
    result = sink.submit(batch, NOW)
    sink.close()
    assert result.handled == 1234 and result.error is None and not result.rejected
    deadline = time.monotonic() + 5
    while sum(len(m) for m in receiver.messages() if receiver.data) < 1234:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    messages = receiver.messages()
    assert [len(m) for m in messages] == [500, 500, 234]
    assert [p for m in messages for p in m] == [(e.metric, (e.timestamp, e.value)) for e in batch]


def test_carbon_sink_reports_a_refused_connection_without_raising() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = CarbonSink(CarbonConfig("127.0.0.1", pickle_port=port, timeout=1))
    result = sink.submit(entries("x", NOW, 3), NOW)
    assert result.handled == 0
    assert result.error is not None and f"127.0.0.1:{port}" in str(result.error)


def test_carbon_sink_reconnects_after_the_peer_closed(receiver: Receiver) -> None:
    sink = CarbonSink(CarbonConfig("127.0.0.1", pickle_port=receiver.port))
    assert sink.submit(entries("x", NOW, 2), NOW).handled == 2
    deadline = time.monotonic() + 5
    while receiver.connections < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    receiver.drop()
    time.sleep(0.05)  # let the FIN reach our side
    assert sink.submit(entries("x", NOW + 600, 2), NOW).handled == 2
    deadline = time.monotonic() + 5
    while len([p for m in receiver.messages() for p in m]) < 4:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert sink.connects == 2
    sink.close()


# --- Flux request body ----------------------------------------------------------------------


def test_flux_body_carries_the_key_and_fill_only_for_old_points() -> None:
    body = request_body(
        "k" * 32,
        [SinkPoint("a.b", NOW - 4000, 1.5), SinkPoint("a.b", NOW - 60, 1e11)],
        now=NOW,
        max_age=3600,
    )
    parsed = json.loads(body)
    assert parsed == {
        "key": "k" * 32,
        "metrics": [
            {"metric": "a.b", "timestamp": NOW - 4000, "value": 1.5, "fill": "true"},
            {"metric": "a.b", "timestamp": NOW - 60, "value": 100000000000},
        ],
    }
    assert b"e+" not in body


def test_point_json_is_valid_json() -> None:
    text = point_json(SinkPoint('we"ird', 1, -0.25), fill=False)
    assert json.loads(text) == {"metric": 'we"ird', "timestamp": 1, "value": -0.25}


def test_offending_index_reads_the_python_dict_flux_quotes() -> None:
    batch = [SinkPoint("a", NOW, 1.0), SinkPoint("b", NOW, 1.0), SinkPoint("b", NOW + 999, 1.0)]
    item = {"metric": "b", "timestamp": NOW + 999, "value": 1.0}
    message = (
        f"invalid timestamp - {NOW + 999} - timestamp is more than 1 minute in the future - {item}"
    )
    assert offending_index(message, batch, 0, 3) == 2
    assert offending_index("invalid json data", batch, 0, 3) is None
    assert offending_index(message, batch, 0, 2) is None


def test_rejected_names_from_a_207_body() -> None:
    body = {
        "code": 207,
        "data": [{"metric": "a", "status": "processed"}, {"metric": "b", "status": "rejected"}],
        "rejected metrics": ["b", "c"],
    }
    assert rejected_names(body) == {"b", "c"}
    assert rejected_names(None) == set()
    assert ast.literal_eval(repr(sorted(rejected_names(body)))) == ["b", "c"]


# --- FluxSink against the Flux double ---------------------------------------------------------


@pytest.fixture
def flux() -> Iterator[FluxServer]:
    with FluxServer() as server:
        yield server


def flux_sink(server: FluxServer, key: str = DEFAULT_KEY, batch_size: int = 450) -> FluxSink:
    return FluxSink(
        FluxConfig("127.0.0.1", server.port, Secret(key), batch_size=batch_size, timeout=5)
    )


def test_flux_204_delivers_everything_in_requests_of_450(flux: FluxServer) -> None:
    now = time.time()
    batch = entries("vista.test.a", int(now) - 1000 * 60, 1000)
    result = flux_sink(flux).submit(batch, now)
    assert result.handled == 1000 and not result.rejected and result.error is None
    assert flux.points_by_metric() == {"vista.test.a": [(e.timestamp, e.value) for e in batch]}
    posts = [r for r in flux.requests if r.method == "POST"]
    assert [r.metric_count for r in posts] == [450, 450, 100]
    assert all(r.status == 204 and not r.key_in_query for r in posts)


def test_flux_400_rejects_exactly_the_quoted_point_and_keeps_the_others(flux: FluxServer) -> None:
    now = time.time()
    good = entries("vista.test.b", int(now) - 600, 5)
    future = SinkPoint("vista.test.b", int(now) + 3600, 9.0)  # Flux: more than 1 minute ahead
    batch = good[:3] + [future] + good[3:]
    result = flux_sink(flux).submit(batch, now)
    assert result.handled == 6 and result.error is None
    assert list(result.rejected) == [3]
    assert "more than 1 minute in the future" in result.rejected[3]
    # Flux took the three before the bad one; the two after were sent again: each once.
    assert flux.points_by_metric() == {"vista.test.b": [(e.timestamp, e.value) for e in good]}


def test_flux_207_rejects_the_named_metric_only(flux: FluxServer) -> None:
    now = time.time()
    flux.reject_metric("vista.test.quota")
    batch = entries("vista.test.ok", int(now) - 600, 2) + entries(
        "vista.test.quota", int(now) - 600, 2
    )
    result = flux_sink(flux).submit(batch, now)
    assert result.handled == 4
    assert sorted(result.rejected) == [2, 3]
    assert all(reason.startswith("Flux 207") for reason in result.rejected.values())
    assert flux.points_by_metric() == {"vista.test.ok": [(e.timestamp, e.value) for e in batch[:2]]}


def test_flux_401_is_a_configuration_error(flux: FluxServer) -> None:
    with pytest.raises(SinkAuthError, match="HTTP 401"):
        flux_sink(flux, key="WrongKey0123456789abcdef01234567").submit(entries("a", NOW, 1), NOW)
    assert flux.accepted_count == 0


def test_flux_5xx_stops_at_the_failed_request_and_reports_progress(flux: FluxServer) -> None:
    now = time.time()
    batch = entries("vista.test.c", int(now) - 1000 * 60, 1000)
    sink = flux_sink(flux)
    flux.fail_next(503)
    result = sink.submit(batch, now)
    assert result.handled == 0 and result.error is not None and "503" in str(result.error)
    result = sink.submit(batch, now)
    assert result.handled == 1000 and result.error is None
    assert len(flux.points_by_metric()["vista.test.c"]) == 1000


def test_flux_down_is_transient(flux: FluxServer) -> None:
    flux.set_down(True)
    result = flux_sink(flux).submit(entries("vista.test.d", NOW, 3), NOW)
    assert result.handled == 0 and result.error is not None
    assert "cannot reach Flux" in str(result.error)


def test_flux_sink_reports_each_request_and_stops_between_requests() -> None:
    """progress() is called after each answered request with the result so far; when it
    returns False the sink sends nothing more and says it stopped."""
    with FluxServer(now=lambda: NOW) as server:
        seen: list[int] = []

        def progress(result: SinkResult) -> bool:
            seen.append(result.handled)
            return len(seen) < 2

        batch = entries("vista.test.p", NOW - 600, 5)
        sink = flux_sink(server, batch_size=2)
        result = sink.submit(batch, NOW, progress)
        assert seen == [2, 4]
        assert (result.handled, result.stopped, result.error) == (4, True, None)
        assert len(server.requests) == 2
