"""End to end over real sockets: HTTP -> ingest -> moto SQS -> sender -> TikTok emulator, and the CLIs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tiktok_bridge.auth import signature
from tiktok_bridge_cli.local import LOCAL_CREDENTIALS, LocalStack

from tests.e2e.conftest import CLI, serve
from tests.unit.test_hostile_ingest import FREE_TEXT_PII, free_text_pii_event

pytestmark = pytest.mark.e2e

SAMPLES = Path(__file__).resolve().parents[2] / "events" / "segment"
ORDER = json.loads((SAMPLES / "order-completed.json").read_text(encoding="utf-8"))
RAW_PII = [
    "Jane.Doe@Example.com",
    "jane.doe@example.com",
    "(415) 555-0134",
    "+14155550134",
    "100 Example Street",
]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def local() -> Iterator[LocalStack]:
    with LocalStack(batching_window_s=0) as running:
        yield running


@pytest.fixture
def fresh(local: LocalStack) -> LocalStack:
    """The shared stack with an empty emulator record and no faults."""
    assert local.emulator is not None
    local.emulator.reset()
    return local


def post(local: LocalStack, body: bytes, **headers: str) -> httpx.Response:
    signed = local.webhook_headers(body)
    return httpx.post(local.ingest_url, content=body, headers={**signed, **headers}, timeout=30)


def empty_dlq(local: LocalStack) -> None:
    """Delete every dead letter (moto, like SQS, allows one PurgeQueue a minute)."""
    sqs, url = local.stack.client("sqs"), local.stack.dlq_url
    while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        for message in messages:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def delivered(local: LocalStack) -> list[dict[str, Any]]:
    assert local.emulator is not None
    return [event for request in local.emulator.accepted_requests() for event in request["data"]]


def test_a_sample_arrives_at_tiktok_hashed(fresh: LocalStack) -> None:
    response = post(fresh, (SAMPLES / "order-completed.json").read_bytes())
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 1, "rejected": [], "skipped": 0}
    fresh.wait_until_drained(30)
    assert fresh.emulator is not None
    [request] = fresh.emulator.accepted_requests()
    assert (request["event_source"], request["event_source_id"]) == ("web", "PIXEL123")
    [event] = request["data"]
    assert (event["event"], event["event_id"]) == ("Purchase", ORDER["messageId"])
    assert event["user"]["email"] == sha256("jane.doe@example.com")
    assert event["user"]["phone"] == sha256("+14155550134")
    assert event["properties"]["value"] == 119.97 and event["properties"]["currency"] == "USD"
    assert fresh.dlq_messages() == []


def test_every_sample_is_delivered_and_counts_match(fresh: LocalStack) -> None:
    accepted = 0
    for path in sorted(SAMPLES.glob("*.json")):
        response = post(fresh, path.read_bytes())
        assert response.status_code == 200, (path.name, response.text)
        accepted += response.json()["accepted"]
    fresh.wait_until_drained(60)
    events = delivered(fresh)
    assert len(events) == accepted
    names = Counter(event["event"] for event in events)
    assert names == {"Purchase": 3, "Pageview": 2, "ViewContent": 2, "Search": 2, "CompleteRegistration": 2}
    text = json.dumps(fresh.emulator.accepted_requests() if fresh.emulator else [])
    assert not [pii for pii in RAW_PII if pii in text]


def test_a_poison_event_ends_in_the_dlq_with_its_reason_and_the_rest_is_delivered(fresh: LocalStack) -> None:
    assert fresh.emulator is not None
    fresh.emulator.set_faults(poison_marker="poison-")
    good = {**ORDER, "messageId": "good-1"}
    bad = {**ORDER, "messageId": "poison-1"}
    response = post(fresh, json.dumps([good, bad]).encode())
    assert response.json()["accepted"] == 2
    fresh.wait_until_drained(30)
    assert [event["event_id"] for event in delivered(fresh)] == ["good-1"]
    [letter] = fresh.dlq_messages()
    assert json.loads(letter.body)["event_id"] == "poison-1"
    assert letter.attributes["dlq_reason"].startswith("rejected by TikTok")
    assert letter.attributes["tiktok_code"] == "40002"
    assert not [pii for pii in RAW_PII if pii in letter.body + json.dumps(letter.attributes)]
    empty_dlq(fresh)  # for the next test


def test_pii_in_urls_and_free_text_reaches_neither_tiktok_nor_the_dlq_nor_a_log(fresh: LocalStack) -> None:
    """Thank-you and password-reset URLs carry `email=`; customers type emails into searches and notes."""
    assert fresh.emulator is not None
    fresh.emulator.set_faults(poison_marker="poison-")
    events = [free_text_pii_event(1), {**free_text_pii_event(2), "messageId": "poison-2"}]
    assert post(fresh, json.dumps(events).encode()).json()["accepted"] == 2
    fresh.wait_until_drained(30)
    [letter] = fresh.dlq_messages()
    seen = [json.dumps(delivered(fresh)), letter.body, json.dumps(letter.attributes), *fresh.logs]
    assert not [text for text in seen for pii in FREE_TEXT_PII if pii.lower() in text.lower()]
    assert [event["page"]["url"] for event in delivered(fresh)] == [
        "https://shop.example/thanks?order=77&ttclid=E.C.P.abc"
    ]
    empty_dlq(fresh)


def test_function_logs_never_hold_raw_pii(local: LocalStack) -> None:
    post(local, (SAMPLES / "order-completed.json").read_bytes())
    local.wait_until_drained(30)
    assert any('"function_name":"IngestFunction"' in line for line in local.logs)
    assert any('"function_name":"SenderFunction"' in line for line in local.logs)
    assert not [line for line in local.logs for pii in RAW_PII if pii in line]


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"not json", {}, 400),
        (b'{"type":"track"}', {"x-signature": "0" * 40}, 401),
        (b'{"type":"track"}', {"x-signature": ""}, 401),
        (b"[" + b" " * 5_000_001 + b"]", {}, 413),
    ],
)
def test_bad_requests_get_clear_answers_and_enqueue_nothing(
    fresh: LocalStack, body: bytes, headers: dict[str, str], status: int
) -> None:
    response = post(fresh, body, **headers)
    assert response.status_code == status
    assert response.json()["error"]
    assert fresh.queue_depth()["queued"] == 0


def test_unknown_routes_get_api_gateway_404(local: LocalStack) -> None:
    response = httpx.get(local.ingest_url)
    assert (response.status_code, response.json()) == (404, {"message": "Not Found"})


def test_a_body_over_10_mb_gets_api_gateways_413(fresh: LocalStack) -> None:
    response = post(fresh, b"[" + b" " * (10 * 1024 * 1024) + b"]")
    assert (response.status_code, response.json()) == (413, {"message": "Request Entity Too Large"})
    assert fresh.queue_depth()["queued"] == 0


def kill_instance(local: LocalStack, name: str) -> int:
    """SIGKILL the function's running instance while it is idle; its pid."""
    pid = local.workers[name].pid
    assert pid is not None and not local.workers[name].busy
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return pid


def test_a_sender_killed_while_idle_is_replaced_and_events_are_still_delivered(fresh: LocalStack) -> None:
    killed = kill_instance(fresh, "sender")
    response = post(fresh, (SAMPLES / "order-completed.json").read_bytes())
    assert response.status_code == 200, response.text
    fresh.wait_until_drained(15)
    assert [event["event_id"] for event in delivered(fresh)] == [ORDER["messageId"]]
    assert fresh.workers["sender"].pid not in {None, killed}
    assert any("SenderFunction: the instance exited while idle" in line for line in fresh.logs)


def test_an_ingest_instance_killed_while_idle_is_replaced_before_the_next_request(fresh: LocalStack) -> None:
    killed = kill_instance(fresh, "ingest")
    response = post(fresh, (SAMPLES / "order-completed.json").read_bytes())
    assert (response.status_code, response.json()["accepted"]) == (200, 1)
    fresh.wait_until_drained(15)
    assert len(delivered(fresh)) == 1
    assert fresh.workers["ingest"].pid not in {None, killed}


def test_identify_then_an_enriched_purchase_and_forget(fresh: LocalStack) -> None:
    """Identify end to end: an ad click, an identify, a purchase carrying only the userId; then forget."""
    user, anon = "e2e-user@example.com", "e2e-anon-9c1d"
    page = {
        "type": "page",
        "messageId": "e2e-page-1",
        "anonymousId": anon,
        "context": {"page": {"url": "https://shop.example.com/?ttclid=E2E.click"}},
    }
    identify = {
        "type": "identify",
        "messageId": "e2e-identify-1",
        "userId": user,
        "anonymousId": anon,
        "traits": {"email": "Jane.Doe@Example.com", "phone": "(415) 555-0134"},
    }
    buy = {"type": "track", "event": "Order Completed", "messageId": "e2e-buy-1", "userId": user}
    for body in (page, identify, buy):
        assert post(fresh, json.dumps(body).encode()).status_code == 200
    fresh.wait_until_drained(30)
    [purchase] = [event for event in delivered(fresh) if event["event_id"] == "e2e-buy-1"]
    assert purchase["user"]["email"] == sha256("jane.doe@example.com")
    assert purchase["user"]["phone"] == sha256("+14155550134")
    assert purchase["user"]["ttclid"] == "E2E.click"

    table = fresh.stack.resources["ProfilesTable"]["TableName"]
    dynamodb = fresh.stack.client("dynamodb")
    stored = json.dumps(dynamodb.scan(TableName=table)["Items"])
    assert not [raw for raw in [user, anon, *RAW_PII] if raw in stored]
    env = {**os.environ, **LOCAL_CREDENTIALS, "AWS_DEFAULT_REGION": "us-east-1"}
    forget = [*CLI, "forget", "--user-id", user, "--table", table, "--endpoint-url", fresh.moto_url]
    done = subprocess.run(forget, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert "deleted 2 profile item(s)" in done.stdout
    keys = {item["pk"]["S"] for item in dynamodb.scan(TableName=table)["Items"]}
    assert not keys & {f"user#{sha256(user)}", f"anon#{sha256(anon)}"}


# --- the CLIs as subprocesses ---


def children_of(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(child) for child in (task / "children").read_text().split()}
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.split(") ")[1][0] != "Z"


def test_serve_prints_its_urls_accepts_a_signed_event_and_stops_cleanly_on_sigint() -> None:
    with serve("--webhook-secret", "s3cret", "--webhook-token", "t0ken") as served:
        process, urls = served.process, served.urls
        assert (urls["webhook secret"], urls["webhook token"]) == ("s3cret", "t0ken")
        assert urls["tiktok"].startswith("http://127.0.0.1:")
        children = children_of(process.pid)
        assert len(children) == 2  # the ingest and sender function instances
        body = (SAMPLES / "track.json").read_bytes()
        headers = {"x-signature": signature("s3cret", body), "authorization": "Bearer t0ken"}
        answer = httpx.post(urls["ingest"], content=body, headers=headers)
        assert (answer.status_code, answer.json()["accepted"]) == (200, 1)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert process.stdout is not None
        assert "stopped" in process.stdout.read()
        assert not [pid for pid in children if alive(pid)]


def test_serve_refuses_a_taken_port_clearly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*CLI, "serve", "--port", str(port)], capture_output=True, text=True, timeout=60, check=False
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port} for the ingest API" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_delivers_every_sample_and_exits_0() -> None:
    result = subprocess.run([*CLI, "demo"], capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"accepted (\d+),.*\ndelivered to TikTok: \1 events", result.stdout)
    assert "LOST" not in result.stdout and "FAILED" not in result.stdout
    assert re.search(r'"external_id": "[0-9a-f]{64}"', result.stdout)  # the sample body shows hashes
    # identify.json teaches the user's email, so every later event of that user carries it
    assert re.search(r"mapping alone\s+email\s+\d\d%", result.stdout)
    assert re.search(r"with Identify\s+email 100%", result.stdout)
