"""The ingest Lambda handler on moto SQS + Secrets Manager (the template's resources), Node-signed bodies."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import boto3
import pytest
from tiktok_bridge import ingest, queue
from tiktok_bridge.auth import signature
from tiktok_bridge.config import ConfigError
from tiktok_bridge.model import MappedEvent
from tiktok_bridge.secret import BridgeSecret, fetch_secret
from tiktok_bridge_cli.stack import Stack

from events.make_apigw_events import (
    DEMO_WEBHOOK_SECRET,
    DEMO_WEBHOOK_TOKEN,
    EVENTS_DIR,
    apigw_event,
    render,
    samples,
)
from tests.conftest import lambda_context
from tests.unit.test_auth import FIXTURES
from tests.unit.test_queue import drain, fail_entries

TOKEN = "demo-bearer-token"
# Raw PII the tests send: none of it may appear in a log line, a queue message or a response, except the
# city, which TikTok takes normalised but unhashed (SPEC §3.2), so only the queue may carry it.
PII = ["Quixote", "Dulcinea", "dulcinea.quixote@example.com", "4155550123", "415 555 0123", "08001"]
CITY = "Barcelona"


def track(n: int, **properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Order Completed",
        "messageId": f"msg-{n}",
        "timestamp": "2026-01-15T10:00:00Z",
        "userId": f"user-{n}",
        "properties": {"currency": "USD", "value": 10, **properties},
    }


def pii_event(n: int) -> dict[str, Any]:
    event = track(n, email="Dulcinea.Quixote@example.com", phone="+1 415 555 0123", first_name="Dulcinea")
    event["context"] = {
        "traits": {"last_name": "Quixote", "address": {"city": "Barcelona", "postal_code": "08001"}}
    }
    return event


def invoke(event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = ingest.lambda_handler(event, lambda_context("IngestFunction"))
    return response["statusCode"], json.loads(response["body"])


BEARER = {"Authorization": f"Bearer {DEMO_WEBHOOK_TOKEN}"}


def post(body: bytes | str, headers: dict[str, str] | None = None, *, base64_body: bool = False) -> Any:
    """POST `body`, signed with the demo secret and with the demo token unless `headers` are given."""
    raw = body.encode() if isinstance(body, str) else body
    headers = {"X-Signature": signature(DEMO_WEBHOOK_SECRET, raw), **BEARER} if headers is None else headers
    return invoke(apigw_event(raw, headers, base64_body=base64_body))


def queued(stack: Stack) -> list[MappedEvent]:
    return drain(boto3.client("sqs"), stack.queue_url)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_node_signed_segment_requests(bridge: Stack, name: str) -> None:
    fixture = FIXTURES[name]
    status, body = post(fixture["body"], {"X-Signature": fixture["signature"], **BEARER})
    if not fixture["valid"]:
        assert (status, body) == (401, {"error": ingest.UNAUTHORIZED})
        assert queued(bridge) == []
        return
    ids = set(re.findall(r'"messageId":\s*"(fixture-\d+)"', fixture["body"]))
    assert (status, body) == (200, {"accepted": len(ids), "rejected": [], "skipped": 0})
    assert {m.event_id for m in queued(bridge)} == ids


def test_first_element_signatures_off(bridge: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIRST_ELEMENT_SIGNATURE", "refused")
    fixture = FIXTURES["batch-many"]
    assert post(fixture["body"], {"X-Signature": fixture["signature"], **BEARER})[0] == 401
    whole = FIXTURES["batch-whole-body-signature"]
    assert post(whole["body"], {"X-Signature": whole["signature"], **BEARER})[0] == 200


def test_bearer_token_configured_too(bridge: Stack, bridge_secret: dict[str, str]) -> None:
    bridge.put_secret({**bridge_secret, "webhook_secret": DEMO_WEBHOOK_SECRET, "webhook_token": TOKEN})
    tampered = FIXTURES["batch-later-tampered"]
    assert post(tampered["body"], {"X-Signature": tampered["signature"]})[0] == 401
    fixture = FIXTURES["batch-many"]
    basic = "Basic " + base64.b64encode(f"segment:{TOKEN}".encode()).decode()
    assert post(fixture["body"], {"x-signature": fixture["signature"], "authorization": basic})[0] == 200
    assert (
        post(fixture["body"], {"X-Signature": fixture["signature"], "Authorization": f"Bearer {TOKEN}x"})[0]
        == 401
    )


def test_bearer_token_alone(bridge: Stack, bridge_secret: dict[str, str]) -> None:
    bridge.put_secret({**bridge_secret, "webhook_secret": "", "webhook_token": TOKEN})
    body = json.dumps(track(1))
    assert post(body, {"AUTHORIZATION": f"bearer {TOKEN}"})[0] == 200
    assert post(body, {"Authorization": "Bearer nope"}) == (401, {"error": ingest.UNAUTHORIZED})
    assert post(body)[0] == 401  # a signature is no substitute for the configured token


def test_nothing_configured_is_closed(bridge: Stack, bridge_secret: dict[str, str]) -> None:
    bridge.put_secret({**bridge_secret, "webhook_secret": "", "webhook_token": ""})
    body = json.dumps(track(1)).encode()
    assert post(body, {"X-Signature": signature("", body), "Authorization": "Bearer "})[0] == 401


def test_missing_headers_and_odd_content_type(bridge: Stack) -> None:
    event = apigw_event(b"{}", {})
    del event["headers"]
    assert invoke(event) == (401, {"error": ingest.UNAUTHORIZED})
    body = json.dumps(track(1))
    headers = {
        "X-Signature": signature(DEMO_WEBHOOK_SECRET, body.encode()),
        **BEARER,
        "Content-Type": "text/plain; x=ü",
    }
    assert post(body, headers)[0] == 200


def test_secret_that_cannot_be_read_answers_503(bridge: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET_ID", "no-such-secret")
    assert post(json.dumps(track(1)))[0] == 503


@pytest.mark.parametrize(
    ("shape", "wrap"),
    [
        ("one event", lambda events: events[0]),
        ("array", lambda events: events),
        ("batch object", lambda events: {"batch": events, "sentAt": "2026-01-15T10:00:01Z"}),
    ],
)
def test_body_shapes(bridge: Stack, shape: str, wrap: Any) -> None:
    events = [track(n) for n in range(1 if shape == "one event" else 3)]
    status, body = post(json.dumps(wrap(events)))
    assert (status, body) == (200, {"accepted": len(events), "rejected": [], "skipped": 0})
    assert sorted(m.event_id for m in queued(bridge)) == [e["messageId"] for e in events]


def test_rejected_and_skipped_events_are_counted(bridge: Stack) -> None:
    events = [
        track(1),
        {**track(2), "type": "launch"},
        {"type": "track", "event": "Order Completed"},
        "not an event",
        {"type": "identify", "messageId": "id-1", "traits": {"email": "x@example.com"}},
        {"type": "alias", "messageId": "alias-1", "userId": "a", "previousId": "b"},
        {**track(3), "event": "Something Unmapped"},
    ]
    status, body = post(json.dumps(events))
    assert status == 200
    assert body["accepted"] == 1
    assert body["skipped"] == 3
    assert [r["messageId"] for r in body["rejected"]] == ["msg-2", "", ""]
    assert all(r["reason"] for r in body["rejected"])
    assert [m.event_id for m in queued(bridge)] == ["msg-1"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "not valid JSON"),
        (b"   ", "not valid JSON"),
        (b"not json", "not valid JSON"),
        (b'{"type": "track",', "not valid JSON"),
        (b"42", "must be a JSON object"),
        (b'"a string"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b"true", "must be a JSON object"),
        (b'{"batch": 5}', '"batch" must be an array'),
        (b'{"batch": {"type": "track"}}', '"batch" must be an array'),
        (b'{"email": "\xff\xfe"}', "not UTF-8"),
    ],
)
def test_bodies_without_events_get_a_clear_400(bridge: Stack, raw: bytes, message: str) -> None:
    status, body = post(raw, base64_body=True)
    assert status == 400
    assert message in body["error"]
    assert queued(bridge) == []


def test_invalid_base64_is_a_400(bridge: Stack) -> None:
    event = apigw_event(b"", {"X-Signature": "0" * 40}, base64_body=True)
    for bad in ["%%% not base64 %%%", "abc", "é"]:
        assert invoke({**event, "body": bad})[0] == 400


def test_base64_bodies_are_decoded_before_verifying(bridge: Stack) -> None:
    fixture = FIXTURES["batch-non-ascii"]
    status, body = post(
        fixture["body"].encode(), {"X-Signature": fixture["signature"], **BEARER}, base64_body=True
    )
    assert (status, body["accepted"]) == (200, 2)


def test_lone_surrogates_in_a_text_body_are_a_400(bridge: Stack) -> None:
    text = '{"type": "track", "messageId": "\ud800"}'
    raw = text.encode("utf-8", "surrogatepass")
    event = {**apigw_event(b"", {"X-Signature": signature(DEMO_WEBHOOK_SECRET, raw), **BEARER}), "body": text}
    status, body = invoke(event)
    assert (status, body) == (400, {"error": "body is not UTF-8 text"})


def test_body_size_limit(bridge: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_BODY_BYTES", "2048")
    at_limit = json.dumps(track(1)).ljust(2048)
    assert post(at_limit)[0] == 200
    status, body = post(at_limit + " ")
    assert status == 413
    assert "2049" in body["error"] and "2048" in body["error"]


def consume_after_each_send(sqs: Any, queue_url: str) -> list[str]:
    """Receive and delete what each SendMessageBatch call queued, as the sender Lambda would; returns the
    event ids. Keeps moto's queue short: moto spends time proportional to its length on every message."""
    consumer = boto3.client("sqs")
    consumed: list[str] = []

    def consume(**_: Any) -> None:
        while messages := consumer.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
        ).get("Messages"):
            consumed.extend(queue.decode(m["Body"], m["MessageAttributes"]).event_id for m in messages)
            handles: Any = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ]
            consumer.delete_message_batch(QueueUrl=queue_url, Entries=handles)

    sqs.meta.events.register("after-call.sqs.SendMessageBatch", consume)
    return consumed


def test_ten_thousand_events(bridge: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 10,000-event body (Segment's Actions batches hold up to 4,000): every tenth event is a conversion.

    Only 1,000 are forwarded because moto, unlike SQS, spends time proportional to its queue length on each
    message; the rest are identify/alias/group/unmapped events, which are mapped and counted as skipped."""
    monkeypatch.setenv("MAX_EVENTS", "10000")
    monkeypatch.setattr(
        queue, "MAX_WORKERS", 1
    )  # moto's queue is not safe for a consumer running in parallel
    consumed = consume_after_each_send(ingest.runtime().sqs, bridge.queue_url)
    others: list[dict[str, Any]] = [
        {"type": "identify", "userId": "u", "traits": {"plan": "pro"}},
        {"type": "alias", "userId": "u", "previousId": "anon"},
        {"type": "group", "userId": "u", "groupId": "g"},
        {"type": "track", "event": "Unmapped Event", "userId": "u"},
    ]
    events = [
        track(n) if n % 10 == 0 else {**others[n % 4], "messageId": f"other-{n}"} for n in range(10_000)
    ]
    status, body = post(json.dumps(events))
    assert (status, body) == (200, {"accepted": 1_000, "rejected": [], "skipped": 9_000})
    assert sorted(consumed) == sorted(f"msg-{n}" for n in range(0, 10_000, 10))


@pytest.mark.parametrize(("limit", "status"), [("4000", 413), ("5000", 200)])
def test_more_events_than_the_limit_get_413_before_anything_is_enqueued(
    bridge: Stack, monkeypatch: pytest.MonkeyPatch, limit: str | None, status: int
) -> None:
    """Segment drops a batch it cannot deliver in 5 s after hours of retries; a 413 naming the limit tells at
    once (and the default limit is what `make bench` shows ingest handles in time)."""
    if limit:
        monkeypatch.setenv("MAX_EVENTS", limit)
    events = [
        track(n) if n < 3 else {"type": "group", "messageId": f"g-{n}", "userId": "u"} for n in range(4001)
    ]
    answer = post(json.dumps(events))
    assert answer[0] == status
    if status == 413:
        assert answer[1] == {"error": "body holds 4001 events; the limit is 4000 (MAX_EVENTS)"}
        assert queued(bridge) == []
    else:
        assert {m.event_id for m in queued(bridge)} == {"msg-0", "msg-1", "msg-2"}


def test_failed_entries_are_retried(bridge: Stack) -> None:
    calls = fail_entries(ingest.runtime().sqs, {"1", "7"}, times=1)
    events = [track(n) for n in range(10)]
    assert post(json.dumps(events)) == (200, {"accepted": 10, "rejected": [], "skipped": 0})
    assert len(calls) == 2
    assert sorted(m.event_id for m in queued(bridge)) == sorted(e["messageId"] for e in events)


def test_503_names_only_what_was_not_enqueued(bridge: Stack) -> None:
    fail_entries(ingest.runtime().sqs, {"2", "11"}, times=100)
    events = [track(n) for n in range(15)] + [{**track(99), "type": "bogus"}]
    status, body = post(json.dumps(events))
    assert status == 503
    assert body["not_enqueued"] == ["msg-2", "msg-11"]
    assert body["accepted"] == 13
    assert [r["messageId"] for r in body["rejected"]] == ["msg-99"]
    assert len(queued(bridge)) == 13


def test_unreachable_queue_claims_nothing(bridge: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUEUE_URL", bridge.queue_url + "-gone")
    status, body = post(json.dumps([track(1), track(2)]))
    assert (status, body["accepted"], body["not_enqueued"]) == (503, 0, ["msg-1", "msg-2"])


def test_event_too_large_for_the_queue_is_rejected_not_retried(bridge: Stack) -> None:
    huge = track(2, description="x" * (queue.MAX_BATCH_BYTES + 10))
    status, body = post(json.dumps([track(1), huge]))
    assert status == 200
    assert body["accepted"] == 1
    assert body["rejected"] == [{"messageId": "msg-2", "reason": queue.TOO_LARGE}]


def test_no_raw_pii_in_logs_queue_or_responses(
    bridge: Stack,
    ingest_logs: io.StringIO,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = {**pii_event(3), "timestamp": {"email": "dulcinea.quixote@example.com"}}
    responses = [
        post(json.dumps([pii_event(1), pii_event(2), bad])),
        post(json.dumps(pii_event(4)), {"X-Signature": "0" * 40}),
        post(b'{"email": "dulcinea.quixote@example.com", ', base64_body=True),
    ]
    fail_entries(ingest.runtime().sqs, {"0"}, times=100)
    responses.append(post(json.dumps([pii_event(5)])))
    assert [status for status, _ in responses] == [200, 401, 400, 503]
    messages = queued(bridge)
    assert len(messages) >= 2
    logs = ingest_logs.getvalue()
    assert '"ingested"' in logs and "could not be enqueued" in logs and "request refused" in logs
    captured = capsys.readouterr()
    texts = [logs, captured.out, captured.err, caplog.text, json.dumps(responses)]
    bodies = [queue.encode(m, "0")["MessageBody"] for m in messages]
    for text in texts + bodies:
        for value in PII:
            assert value.lower() not in text.lower()
    for text in texts:
        assert CITY.lower() not in text.lower()


def test_every_sample_event_file(bridge: Stack) -> None:
    expected = {
        "apigw-track.json": 200,
        "apigw-page.json": 200,
        "apigw-identify.json": 200,
        "apigw-batch.json": 200,
        "apigw-bad-signature.json": 401,
    }
    files = sorted(p.name for p in Path(EVENTS_DIR).glob("apigw-*.json"))
    assert files == sorted(expected)
    for name in files:
        status, body = invoke(json.loads((EVENTS_DIR / name).read_text()))
        assert status == expected[name], (name, body)
    assert {m.event_id for m in queued(bridge)} == {"demo-order-completed-0001", "demo-page-0001"}


def test_sample_event_files_are_generated_from_the_segment_payloads() -> None:
    for name, event in samples().items():
        assert (EVENTS_DIR / name).read_text() == render(event), (
            f"{name} is stale: run events/make_apigw_events.py"
        )


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/events"), ("POST", "/v1/other"), ("PUT", "/")])
def test_other_routes_are_not_found(bridge: Stack, method: str, path: str) -> None:
    event = apigw_event(b"{}", {})
    event.update(rawPath=path, routeKey=f"{method} {path}")
    event["requestContext"]["http"].update(method=method, path=path)
    assert invoke(event)[0] == 404


def test_a_bad_mapping_config_fails_loudly(bridge: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_CONFIG", '{"no_such_setting": true}')
    with pytest.raises(ConfigError, match="no_such_setting"):
        post(json.dumps(track(1)))


def test_each_rejected_or_skipped_event_is_logged_with_its_id_type_and_reason(
    bridge: Stack, ingest_logs: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    """An operator can find which events were refused and why (never their values)."""
    events = [
        pii_event(1),
        {**pii_event(2), "timestamp": {"email": "dulcinea.quixote@example.com"}},  # rejected
        {"type": "identify", "messageId": "id-3", "userId": "u", "traits": {"email": PII[2]}},  # skipped
    ]
    status, body = post(json.dumps(events))
    assert (status, body["accepted"]) == (200, 1)
    lines = [json.loads(line) for line in ingest_logs.getvalue().splitlines() if '"event ' in line]
    found = {(line["message"], line["messageId"], line["type"]): line["reason"] for line in lines}
    assert found[("event rejected", "msg-2", "track")].startswith("invalid event: timestamp")
    assert found[("event skipped", "id-3", "identify")] == "identify events are not forwarded"
    blobs = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if "EventsRejectedByReason" in line
    ]
    assert [(blob["Reason"], blob["EventsRejectedByReason"]) for blob in blobs] == [("invalid event", [1.0])]
    assert not [pii for pii in PII for line in lines if pii.lower() in json.dumps(line).lower()]


def test_a_rotation_refuses_no_event_and_takes_effect_at_once(
    bridge: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Old and new webhook secret and token are both accepted during the overlap; the new ones work on the
    first request (a refused request re-reads the secrets), and a refusal re-reads at most once a minute."""
    body = json.dumps(track(1)).encode()

    def signed(secret: str, token: str) -> dict[str, str]:
        return {"X-Signature": signature(secret, body), "Authorization": f"Bearer {token}"}

    assert post(body, signed(DEMO_WEBHOOK_SECRET, DEMO_WEBHOOK_TOKEN))[0] == 200  # secrets now cached
    secrets = boto3.client("secretsmanager")
    rotated = {"webhook_secret": "new-secret", "previous_webhook_secret": DEMO_WEBHOOK_SECRET}
    secrets.put_secret_value(SecretId=bridge.secret_of("webhook_secret"), SecretString=json.dumps(rotated))
    token = {"webhook_token": "new-token", "previous_webhook_token": DEMO_WEBHOOK_TOKEN}
    secrets.put_secret_value(SecretId=bridge.secret_of("webhook_token"), SecretString=json.dumps(token))
    reads: list[bool] = []

    def fetch(secret_id: str, *, force: bool = False) -> BridgeSecret:
        reads.append(force)
        return fetch_secret(secret_id, force=force)

    monkeypatch.setattr(ingest, "fetch_secret", fetch)
    assert post(body, signed("new-secret", "new-token"))[0] == 200  # refused by the cache, then re-read
    assert reads.count(True) == 2  # both secrets, once
    assert post(body, signed(DEMO_WEBHOOK_SECRET, DEMO_WEBHOOK_TOKEN))[0] == 200  # the previous values
    assert post(body, signed("new-secret", DEMO_WEBHOOK_TOKEN))[0] == 200
    assert post(body, signed("wrong", "new-token"))[0] == 401
    assert post(body, signed("wrong", "new-token"))[0] == 401
    assert reads.count(True) == 2  # no re-read within the minute
