"""The SPEC §4.1 response table (`classify`) and the client call over real sockets (`track`)."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tiktok_bridge import tiktok
from tiktok_bridge.tiktok import Action, classify, track
from tiktok_bridge_cli.emulator import Emulator

DELIVERED, PARTIAL, BUSY, RETRY = Action.DELIVERED, Action.PARTIAL, Action.BUSY, Action.RETRY
AUTH, INVALID = Action.AUTH, Action.INVALID
BODY = {
    "event_source": "web",
    "event_source_id": "PIXEL123",
    "data": [{"event": "Pageview", "event_time": 1767225600}],
}


def answer(code: object, message: object = "msg", **extra: Any) -> bytes:
    return json.dumps({"code": code, "message": message, "request_id": "req-1", "data": {}, **extra}).encode()


@pytest.mark.parametrize(
    ("code", "action"),
    [
        (0, DELIVERED),
        (20001, PARTIAL),  # some events not accepted, none named: never a delivery
        *[(code, BUSY) for code in (40100, 40016, 40132, 40133, 61000)],  # throttled
        (40202, BUSY),  # write conflict
        *[(code, RETRY) for code in (50000, 50002, 51000, 52345, 53999, 60001)],  # TikTok-side fault
        *[(code, AUTH) for code in (40104, 40105, 40102, 40001)],
        *[(code, INVALID) for code in (40002, 40000, 40061, 40062, 40003, 41000, 49999)],
        *[
            (code, RETRY) for code in (50001, 54000, 60002, 20002, 1, -1, 99999999)
        ],  # unknown: kept, not dropped
    ],
)
def test_every_code_of_the_table(code: int, action: Action) -> None:
    verdict = classify(200, answer(code, "TikTok says"))
    assert verdict == tiktok.Verdict(action, str(code), "TikTok says", "req-1")


@pytest.mark.parametrize(
    ("status", "action"), [*[(s, RETRY) for s in (500, 502, 503, 504, 599)], (429, BUSY)]
)
def test_transport_statuses_retry_whatever_the_body(status: int, action: Action) -> None:
    for body in (answer(0), answer(40002), b"<html>Bad Gateway</html>"):
        assert classify(status, body) == tiktok.Verdict(action, f"http_{status}")


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>502 Bad Gateway</body></html>",
        b"",
        b"not json",
        b"\xff\xfe\x00garbage",
        b"[0]",
        b'"code"',
        b"{}",
        b'{"message": "no code"}',
        b'{"code": null}',
        b'{"code": "0"}',
        b'{"code": 0.0}',
        b'{"code": true}',
        b'{"code": 0',
    ],
)
def test_unusable_body_retries(body: bytes) -> None:
    assert classify(200, body) == tiktok.Verdict(RETRY, "bad_response")


def test_success_code_on_an_error_status_is_not_a_success() -> None:
    assert classify(404, answer(0)).action is RETRY
    assert classify(400, answer(40002)).action is INVALID
    assert classify(404, b"404 page not found") == tiktok.Verdict(RETRY, "http_404")


def test_hostile_text_fields_are_bounded_and_typed() -> None:
    verdict = classify(200, answer(40002, "x" * 100_000, request_id=["not", "a", "string"]))
    assert verdict.action is INVALID
    assert verdict.message == "x" * tiktok.MAX_TEXT_CHARS
    assert verdict.request_id == ""
    assert classify(200, answer(40002, {"nested": "object"})).message == ""
    assert classify(200, answer(40002, "bad\x00\x1b[31m\nvalue\u200b")).message == "bad[31mvalue"


@given(status=st.integers(100, 999), body=st.binary(max_size=300))
def test_classify_never_raises(status: int, body: bytes) -> None:
    assert isinstance(classify(status, body).action, Action)


# --- track(): real HTTP on 127.0.0.1 ---


class Canned(BaseHTTPRequestHandler):
    """Answers every POST with the server's canned (status, content type, body) and records what it got."""

    server: CannedServer

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.path, dict(self.headers), raw))
        status, content_type, body = self.server.reply
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in self.server.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class CannedServer(ThreadingHTTPServer):
    reply: tuple[int, str, bytes] = (200, "application/json", answer(0, "OK"))
    headers: dict[str, str]  # more response headers
    received: list[tuple[str, dict[str, str], bytes]]


@pytest.fixture
def canned() -> Iterator[CannedServer]:
    server = CannedServer(("127.0.0.1", 0), Canned)
    server.received, server.headers = [], {}
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def url_of(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_track_posts_the_body_with_token_and_json_headers(canned: CannedServer) -> None:
    verdict = track(url_of(canned) + "/", "tok-123", BODY, 5)
    assert verdict == tiktok.Verdict(DELIVERED, "0", "OK", "req-1")
    [(path, headers, raw)] = canned.received
    assert path == "/open_api/v1.3/event/track/"
    assert headers["Access-Token"] == "tok-123"
    assert headers["Content-Type"] == "application/json"
    assert headers["Accept-Encoding"] == "identity"
    assert json.loads(raw) == BODY


def test_track_reuses_one_client() -> None:
    assert tiktok.client() is tiktok.client()


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        ((502, "text/html", b"<html>Bad Gateway</html>"), "http_502"),
        ((200, "text/html", b"<html>maintenance</html>"), "bad_response"),
        ((200, "application/json", b'{"message": "no code"}'), "bad_response"),
        ((200, "application/json", b"x" * (tiktok.MAX_RESPONSE_BYTES + 1)), "response_too_large"),
    ],
)
def test_track_unusable_answers_retry(canned: CannedServer, reply: tuple[int, str, bytes], code: str) -> None:
    canned.reply = reply
    assert track(url_of(canned), "tok", BODY, 5) == tiktok.Verdict(RETRY, code)


def test_track_maps_tiktok_codes(canned: CannedServer) -> None:
    canned.reply = (200, "application/json", answer(40100, "App reaches the QPS limit."))
    assert track(url_of(canned), "tok", BODY, 5).action is BUSY
    canned.reply = (200, "application/json", answer(20001, "Partial success."))
    assert track(url_of(canned), "tok", BODY, 5).action is PARTIAL
    canned.reply = (200, "application/json", answer(40002, "Invalid value for event_id: not a valid string."))
    assert track(url_of(canned), "tok", BODY, 5).action is INVALID


def test_track_connection_refused_retries() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert track(f"http://127.0.0.1:{port}", "tok", BODY, 5) == tiktok.Verdict(RETRY, "ConnectError")


@pytest.mark.parametrize("base_url", ["", "not a url", "ftp://127.0.0.1:1", "http://[::1"])
def test_track_bad_base_url_retries(base_url: str) -> None:
    assert track(base_url, "tok", BODY, 1).action is RETRY


def test_track_timeout_and_dropped_connection_retry() -> None:
    with Emulator(access_token="tok", source_ids=["PIXEL123"]) as emulator:
        emulator.set_faults(delay_s=5)
        assert track(emulator.url, "tok", BODY, 0.2) == tiktok.Verdict(RETRY, "timeout")
        emulator.set_faults(delay_s=0, drop=1)
        assert track(emulator.url, "tok", BODY, 5).action is RETRY
        assert track(emulator.url, "tok", BODY, 5).action is DELIVERED


def test_track_against_the_emulator_codes() -> None:
    with Emulator(access_token="tok", source_ids=["PIXEL123"]) as emulator:
        assert track(emulator.url, "tok", BODY, 5).action is DELIVERED
        rejected = track(emulator.url, "wrong", BODY, 5)
        assert (rejected.action, rejected.code) == (AUTH, "40105")
        assert rejected.message == "Access token is incorrect or has been revoked."
        assert rejected.request_id
        bad = {**BODY, "data": [{"event": "Pageview", "event_time": 1767225600, "event_id": 7}]}
        invalid = track(emulator.url, "tok", bad, 5)
        assert (invalid.action, invalid.code) == (INVALID, "40002")
        assert invalid.message.startswith("Invalid value for event_id: not a valid string.")


def test_track_has_a_wall_clock_deadline() -> None:
    """An answer dripped a byte at a time (status line and headers too) never times out a read; the call ends
    at its deadline all the same."""
    with Emulator(access_token="tok", source_ids=["PIXEL123"]) as emulator:
        emulator.set_faults(drip=1, drip_s=0.05)  # some 250 bytes: over 12 s for the whole answer
        started = time.monotonic()
        assert track(emulator.url, "tok", BODY, 1) == tiktok.Verdict(RETRY, "timeout")
        assert time.monotonic() - started < 1.5
        assert emulator.request_count == 1


def test_track_reads_a_compressed_answer_as_sent_and_bounded(canned: CannedServer) -> None:
    """A gzip bomb (64 MB of zeros in 64 KB) is not inflated: TikTok is asked for identity, and what it sends
    is read raw, at most MAX_RESPONSE_BYTES."""
    canned.reply = (200, "application/json", gzip.compress(bytes(64 * 1024 * 1024)))
    canned.headers = {"Content-Encoding": "gzip"}
    tracemalloc.start()
    try:
        verdict = track(url_of(canned), "tok", BODY, 5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert verdict == tiktok.Verdict(RETRY, "bad_response")
    assert peak < 4 * 1024 * 1024


@pytest.mark.parametrize("token", ["t\u00f6ken", "tok\u20ac", "tok\nen", "tok\x00"])
def test_track_a_token_that_cannot_be_a_header_is_an_auth_error(canned: CannedServer, token: str) -> None:
    verdict = track(url_of(canned), token, BODY, 5)
    assert verdict == tiktok.Verdict(AUTH, "invalid_token", "The access token is not printable ASCII.")
    assert canned.received == []
