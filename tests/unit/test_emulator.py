"""The TikTok emulator over real HTTP on 127.0.0.1: validation, codes, auth, limiter, dedup, faults, CLI."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from tiktok_bridge_cli.emulator import MAX_BODY_BYTES, TRACK_PATH, Emulator, Faults

TOKEN = {"Access-Token": "test-token"}
RAW_EMAIL = "jane.doe@example.com"
HASHED = hashlib.sha256(RAW_EMAIL.encode()).hexdigest()


def event(**fields: Any) -> dict[str, Any]:
    """A valid web event; `fields` override (value None deletes the key)."""
    base: dict[str, Any] = {
        "event": "Purchase",
        "event_time": int(time.time()) - 60,
        "event_id": "msg-1",
        "user": {"email": HASHED, "external_id": [HASHED], "ip": "203.0.113.9"},
        "page": {"url": "https://shop.example/checkout"},
        "properties": {
            "contents": [{"content_id": "sku-1", "price": 9.5, "quantity": 2}],
            "value": 19.0,
            "currency": "USD",
        },
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def body(*events: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"event_source": "web", "event_source_id": "PIXEL123", "data": list(events) or [event()], **top}


@pytest.fixture(scope="module")
def server() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


@pytest.fixture
def emu(server: Emulator) -> Emulator:
    server.reset()
    return server


@pytest.fixture
def client(emu: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.url, timeout=10) as c:
        yield c


def track(client: httpx.Client, payload: Any, headers: dict[str, str] = TOKEN) -> dict[str, Any]:
    response = client.post(TRACK_PATH, json=payload, headers=headers)
    assert response.status_code == 200
    answer = response.json()
    assert set(answer) == {"code", "message", "request_id", "data"}
    return dict(answer)


def test_accepts_valid_request_and_records_it(emu: Emulator, client: httpx.Client) -> None:
    offline = body(event(event_id="o-1", page=None), event_source="offline", event_source_id="EVENTSET123")
    web = body(event(), test_event_code="TEST123")
    assert track(client, web)["code"] == track(client, offline)["code"] == 0
    assert emu.accepted_requests() == [web, offline]
    assert emu.delivered_keys() == {("PIXEL123", "Purchase", "msg-1"), ("EVENTSET123", "Purchase", "o-1")}
    assert emu.request_count == 2


def _mutated(**fields: Any) -> dict[str, Any]:
    e = event()
    for path, value in fields.items():
        *parents, key = path.split("__")
        target = e
        for p in parents:
            target = target[int(p)] if isinstance(target, list) else target[p]
        target[key] = value
    return body(e)


MS = int(time.time() * 1000)
CONTENT = "properties__contents__0__"
INVALID = [
    ([], "request body: not a valid JSON object"),
    ("text", "request body: not a valid JSON object"),
    (body(event_source="tv"), "event_source: must be one of web, offline, app, crm"),
    (body(event_source_id=123), "event_source_id: not a valid string"),
    (body(test_event_code=5), "test_event_code: not a valid string"),
    ({"event_source": "web", "event_source_id": "PIXEL123"}, "data: must be a list of 1 to 1000"),
    (body(data=[]), "data: must be a list of 1 to 1000"),
    (body(data={"event": "x"}), "data: must be a list of 1 to 1000"),
    (body(*[event(event_id=f"e{i}") for i in range(1001)]), "data: must be a list of 1 to 1000"),
    (
        body(event(), "not-an-event"),  # type: ignore[arg-type]
        "data: not a valid object. (data[1])",
    ),
    (body(event(event=None)), "event: not a valid non-empty string. (data[0])"),
    (_mutated(event=" "), "event: not a valid non-empty string"),
    (body(event(event_time=None)), "event_time: not a valid integer"),
    (_mutated(event_time="1700000000"), "event_time: not a valid integer"),
    (_mutated(event_time=1700000000.5), "event_time: not a valid integer"),
    (_mutated(event_time=True), "event_time: not a valid integer"),
    (_mutated(event_time=MS), "event_time: out of range, expected Unix seconds (not milliseconds)"),
    (_mutated(event_time=12345), "event_time: out of range"),
    (_mutated(event_time=int(time.time()) + 3 * 86_400), "event_time: out of range"),
    (_mutated(event_id=123), "event_id: not a valid string. (data[0])"),
    (_mutated(test_event_code="TEST1"), "test_event_code: belongs at the top level"),
    (_mutated(user="jane"), "user: not a valid object"),
    (_mutated(page=["x"]), "page: not a valid object"),
    (_mutated(properties=None), "properties: not a valid object"),
    (_mutated(limited_data_use="yes"), "limited_data_use: not a valid boolean"),
    (_mutated(user__email=5), "user.email: not a valid string or list of strings"),
    (_mutated(user__phone=[HASHED, 5]), "user.phone: not a valid string or list of strings"),
    (_mutated(user__ip=203), "user.ip: not a valid string"),
    (_mutated(page__url=1), "page.url: not a valid string"),
    (_mutated(properties__contents={"content_id": "a"}), "properties.contents: not a valid list"),
    (_mutated(properties__contents=["sku"]), "properties.contents[0]: not a valid object"),
    (_mutated(**{CONTENT + "content_id": 123}), "properties.contents[0].content_id: not a valid string"),
    (_mutated(**{CONTENT + "price": "9.50"}), "properties.contents[0].price: not a valid number"),
    (_mutated(**{CONTENT + "quantity": True}), "properties.contents[0].quantity: not a valid number"),
    (_mutated(properties__value="19"), "properties.value: not a valid number"),
    (_mutated(properties__currency=840), "properties.currency: not a valid string"),
]


@pytest.mark.parametrize(("payload", "message"), INVALID, ids=[m for _, m in INVALID])
def test_rejects_invalid_body_with_40002(
    emu: Emulator, client: httpx.Client, payload: Any, message: str
) -> None:
    answer = track(client, payload)
    assert answer["code"] == 40002
    assert answer["message"].startswith(f"Invalid value for {message}")
    assert emu.accepted_requests() == [] and emu.request_count == 1


def test_event_id_message_is_tiktoks() -> None:
    with Emulator() as emu, httpx.Client(base_url=emu.url) as client:
        message = track(client, _mutated(event_id=1))["message"]
    assert message.startswith("Invalid value for event_id: not a valid string.")


def test_strict_mode_requires_hashes_and_offline_identifiers() -> None:
    offline = {"event_source": "offline", "event_source_id": "EVENTSET123"}
    with Emulator(strict=True) as emu, httpx.Client(base_url=emu.url) as client:
        unhashed = track(client, _mutated(user__email=RAW_EMAIL))
        assert unhashed["code"] == 40002 and "user.email: not a SHA-256 hash" in unhashed["message"]
        assert RAW_EMAIL not in json.dumps(unhashed)
        upper = track(client, _mutated(user__external_id=[HASHED.upper()]))
        assert "user.external_id: not a SHA-256 hash" in upper["message"]
        no_id = track(client, body(event(user={"ip": "203.0.113.9"}, page=None), **offline))
        assert "offline events need a hashed email, phone or external_id" in no_id["message"]
        with_page = track(client, body(event(), **offline))
        assert "page: not allowed for offline events" in with_page["message"]
        assert track(client, body(event(page=None), **offline))["code"] == 0
        assert track(client, body())["code"] == 0
    with Emulator() as lenient, httpx.Client(base_url=lenient.url) as client:
        assert track(client, _mutated(user__email=RAW_EMAIL))["code"] == 0


def test_unknown_paths_get_plain_text_404(client: httpx.Client) -> None:
    for response in (
        client.post(TRACK_PATH.rstrip("/"), json=body(), headers=TOKEN),
        client.get(TRACK_PATH),
        client.post("/open_api/v1.2/event/track/", json=body()),
        client.get("/"),
    ):
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("text/plain")
        assert response.text == "404 page not found"


def test_auth_codes(emu: Emulator, client: httpx.Client) -> None:
    missing = track(client, body(), headers={})
    assert (missing["code"], missing["message"]) == (
        40104,
        "Access token is null. Set the Access-Token header.",
    )
    wrong = track(client, body(), headers={"Access-Token": "stolen"})
    assert (wrong["code"], wrong["message"]) == (40105, "Access token is incorrect or has been revoked.")
    foreign = track(client, body(event_source_id="OTHERPIXEL"))
    assert foreign["code"] == 40001 and "OTHERPIXEL" in foreign["message"]
    assert emu.accepted_requests() == [] and emu.request_count == 3


def test_rate_limiter_answers_40100() -> None:
    now = [1000.0]
    with Emulator(rate_limit_per_s=2, clock=lambda: now[0]) as emu, httpx.Client(base_url=emu.url) as client:
        codes = [track(client, body())["code"] for _ in range(3)]
        now[0] += 1.01
        codes.append(track(client, body())["code"])
    assert codes == [0, 0, 40100, 0]
    assert len(emu.accepted_requests()) == 3


def test_dedup_bookkeeping(emu: Emulator, client: httpx.Client) -> None:
    track(client, body(event(), event(event_id="msg-2")))
    track(client, body(event(), event(event="AddToCart"), event(event_id=None)))
    assert emu.delivered_keys() == {
        ("PIXEL123", "Purchase", "msg-1"),
        ("PIXEL123", "Purchase", "msg-2"),
        ("PIXEL123", "AddToCart", "msg-1"),
    }
    stats = client.get("/_emulator/requests").json()
    assert (stats["event_count"], stats["duplicate_count"], stats["accepted_count"]) == (5, 1, 2)
    assert stats["requests"] == emu.accepted_requests()


def test_http_error_and_throttle_faults(emu: Emulator, client: httpx.Client) -> None:
    emu.set_faults(http_errors=2, http_status=503, throttle=1)
    statuses = [client.post(TRACK_PATH, json=body(), headers=TOKEN).status_code for _ in range(2)]
    assert statuses == [503, 503]
    assert [track(client, body())["code"] for _ in range(2)] == [40100, 0]
    assert emu.request_count == 4 and len(emu.accepted_requests()) == 1


def test_slow_responses_and_dropped_connections(emu: Emulator, client: httpx.Client) -> None:
    emu.set_faults(delay_s=5)
    with pytest.raises(httpx.ReadTimeout):
        client.post(TRACK_PATH, json=body(), headers=TOKEN, timeout=0.3)
    emu.set_faults(delay_s=0, drop=1, drop_after_s=5)
    with pytest.raises(httpx.ReadTimeout):
        client.post(TRACK_PATH, json=body(), headers=TOKEN, timeout=0.3)
    emu.set_faults(drop=1, drop_after_s=0)
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(TRACK_PATH, json=body(), headers=TOKEN)
    assert track(client, body())["code"] == 0
    assert emu.request_count == 4


def test_poison_marker_rejects_the_whole_batch(emu: Emulator, client: httpx.Client) -> None:
    emu.set_faults(poison_marker="POISON")
    by_id = track(client, body(event(), event(event_id="x-POISON-1")))
    assert (by_id["code"], by_id["message"]) == (40002, "Event data[1] (event_id 'x-POISON-1') is poisoned.")
    bad_description = event(event_id="m-3", properties={"description": "POISON here"})
    assert "data[0] (event_id 'm-3')" in track(client, body(bad_description))["message"]
    assert emu.accepted_requests() == []
    assert track(client, body())["code"] == 0


def test_partial_marker_accepts_the_rest_and_answers_20001(emu: Emulator, client: httpx.Client) -> None:
    emu.set_faults(partial_marker="REFUSED")
    answer = track(client, body(event(event_id="a"), event(event_id="b-REFUSED"), event(event_id="c")))
    assert (answer["code"], answer["data"]) == (20001, {})  # no per-event detail, as at TikTok
    assert [e["event_id"] for r in emu.accepted_requests() for e in r["data"]] == ["a", "c"]
    assert emu.delivered_keys() == {("PIXEL123", "Purchase", "a"), ("PIXEL123", "Purchase", "c")}
    by_description = event(event_id="d", properties={"description": "REFUSED here"})
    assert track(client, body(by_description))["code"] == 20001  # all refused: nothing accepted
    assert track(client, body(event(event_id="e")))["code"] == 0
    assert [len(r["data"]) for r in emu.accepted_requests()] == [2, 1]


def test_crash_marker_answers_http_500(emu: Emulator, client: httpx.Client) -> None:
    emu.set_faults(crash_marker="CRASH")
    response = client.post(TRACK_PATH, json=body(event(), event(event_id="x-CRASH")), headers=TOKEN)
    assert response.status_code == 500 and response.headers["content-type"].startswith("text/plain")
    assert emu.accepted_requests() == []
    assert track(client, body())["code"] == 0


def test_drip_sends_every_answer_a_byte_at_a_time(emu: Emulator, client: httpx.Client) -> None:
    emu.set_faults(drip=1, drip_s=0.005)
    raw = json.dumps(body()).encode()
    head = f"POST {TRACK_PATH} HTTP/1.1\r\nHost: x\r\nAccess-Token: test-token\r\nContent-Length: {len(raw)}"
    started = time.monotonic()
    reply = raw_exchange(emu, head.encode() + b"\r\n\r\n" + raw)  # ends: the connection is closed
    assert time.monotonic() - started >= (len(reply) - 1) * 0.005
    assert reply.startswith(b"HTTP/1.1 200 OK") and b'"code": 0' in reply
    assert track(client, body())["code"] == 0  # the next answer comes at once


def test_faults_and_reset_over_http(emu: Emulator, client: httpx.Client) -> None:
    answer = client.post("/_emulator/faults", json={"throttle": 1, "poison_marker": "P!"})
    assert answer.status_code == 200 and answer.json()["throttle"] == 1
    assert track(client, body())["code"] == 40100
    assert track(client, body(event(event_id="P!")))["code"] == 40002
    assert track(client, body())["code"] == 0
    for bad in ({"explode": 1}, {"throttle": -1}, {"throttle": "3"}, {"http_status": 200}, [1]):
        rejected = client.post("/_emulator/faults", json=bad)
        assert rejected.status_code == 400 and rejected.json()["error"]
    assert client.post("/_emulator/faults", content=b"{nope").status_code == 400
    assert "explode" in client.post("/_emulator/faults", json={"explode": 1}).json()["error"]
    assert client.get("/_emulator/requests").json()["faults"]["poison_marker"] == "P!"
    assert client.post("/_emulator/reset").status_code == 200
    state = client.get("/_emulator/requests").json()
    assert (state["requests"], state["request_count"], state["delivered_keys"]) == ([], 0, [])
    assert state["faults"] == Faults().model_dump()
    assert track(client, body(event(event_id="P!")))["code"] == 0


def test_python_fault_api_validates() -> None:
    with pytest.raises(ValidationError, match="explode"):
        Emulator().set_faults(explode=True)
    with pytest.raises(ValidationError):
        Emulator().set_faults(drop=-1)
    emu = Emulator(faults=Faults(throttle=2))
    emu.set_faults(throttle=0)
    emu.reset()
    assert emu.snapshot()["faults"]["throttle"] == 2


def literal(text: str, **fields: Any) -> bytes:
    """A request body with the raw JSON `text` where `fields` say "@"."""
    return json.dumps(body(event(**fields))).replace('"@"', text).encode()


BIG = "9" * 400
HOSTILE: list[bytes] = [
    b"",
    b"not json",
    b"\xff\xfe\x00garbage",
    b'{"event_source": NaN}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a": 1' + b"0" * 10_000 + b"}",
    json.dumps(body(event(user=[[[{}]]], properties={"contents": [[None]]}))).encode(),
    json.dumps({"event_source": {"web": 1}, "event_source_id": [], "data": "x" * 1000}).encode(),
    literal(BIG, properties={"value": "@"}),  # no double holds it
    literal(BIG, properties={"contents": [{"price": 1, "quantity": "@"}]}),
    literal(f"-{BIG}", event_time="@"),
    literal(f"1{BIG}.5", properties={"value": "@"}),  # a float: infinite
    literal("[" * 500 + "]" * 500, custom="@"),  # parses, but deeper than TikTok's fields go
    literal('{"a":' * 40 + "1" + "}" * 40, custom="@"),
]


@pytest.mark.parametrize("raw", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_input_gets_an_error_and_server_survives(client: httpx.Client, raw: bytes) -> None:
    response = client.post(TRACK_PATH, content=raw, headers=TOKEN)
    assert response.status_code == 200 and response.json()["code"] in {40000, 40002}
    assert track(client, body())["code"] == 0
    assert client.get("/_emulator/requests").json()["accepted_count"] == 1


def raw_exchange(emu: Emulator, request: bytes) -> bytes:
    """Send raw bytes over a socket; everything the server answers until it closes the connection."""
    host, port = emu.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        return b"".join(iter(lambda: sock.recv(65536), b""))


def test_oversized_body_and_bad_content_length(emu: Emulator, client: httpx.Client) -> None:
    huge = client.post(TRACK_PATH, content=b" " * (MAX_BODY_BYTES + 1), headers=TOKEN).json()
    assert huge["code"] == 40000 and "too large" in huge["message"]
    bad_length = (
        f"POST {TRACK_PATH} HTTP/1.1\r\nHost: x\r\nAccess-Token: test-token\r\nContent-Length: -5\r\n\r\n"
    )
    reply = raw_exchange(emu, bad_length.encode())
    assert b"Invalid Content-Length header." in reply and b'"code": 40000' in reply
    assert b"400 - Bad request" in raw_exchange(emu, b"\x00\x01 garbage request line \r\n\r\n")
    assert track(client, body())["code"] == 0


def test_url_requires_running_emulator() -> None:
    with pytest.raises(RuntimeError, match="context manager"):
        _ = Emulator().url


CLI = (
    "import argparse, sys; from tiktok_bridge_cli import emulator; p = argparse.ArgumentParser(); "
    "emulator.register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.run(a))"
)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_serves_until_signalled(signum: signal.Signals) -> None:
    args = ["emulator", "--port", "0", "--access-token", "tok", "--source-id", "PX", "--throttle", "1"]
    proc = subprocess.Popen([sys.executable, "-c", CLI, *args], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        assert "Access-Token: tok" in proc.stdout.readline() and "PX" in proc.stdout.readline()
        with httpx.Client(base_url=url) as client:
            codes = [
                track(client, body(event_source_id="PX"), {"Access-Token": "tok"})["code"] for _ in range(2)
            ]
        assert codes == [40100, 0]
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        proc.kill()
        proc.wait()


def test_cli_reports_a_busy_port_and_bad_flags() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = str(busy.getsockname()[1])
        done = subprocess.run(
            [sys.executable, "-c", CLI, "emulator", "--port", taken],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1 and f"127.0.0.1:{taken}" in done.stderr and "in use" in done.stderr
    bad = subprocess.run(
        [sys.executable, "-c", CLI, "emulator", "--http-status", "200"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "http_status" in bad.stderr
