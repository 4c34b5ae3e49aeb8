"""Ingest against an attacker and a misconfigured workspace (issue 11): captured signatures, bodies that break
parsers, numbers that break arithmetic, values that are almost booleans, and one event that breaks mapping."""

from __future__ import annotations

import json
import math
from typing import Any

import boto3
import pytest
from tiktok_bridge import ingest, mapping, normalize
from tiktok_bridge.auth import signature
from tiktok_bridge_cli.stack import Stack

from events.make_apigw_events import DEMO_WEBHOOK_SECRET, compact
from tests.unit.test_identity import EMAIL, identify, items, purchase, send, sha256
from tests.unit.test_ingest import BEARER, post, queued, track

VICTIM = "victim-user-1"
ATTACKER_EMAIL = "attacker@evil.example"


def first_element_signed(events: list[dict[str, Any]], **headers: str) -> tuple[int, dict[str, Any]]:
    """POST `events` as Segment's Actions webhook does: a bare array signed over its first element only."""
    parts = [compact(event) for event in events]
    signed = {"X-Signature": signature(DEMO_WEBHOOK_SECRET, parts[0]), **headers}
    status, body = post(b"[" + b",".join(parts) + b"]", signed)
    return status, body


def injection() -> list[dict[str, Any]]:
    """A genuine event E whose signature was captured, then what an attacker appends to it."""
    genuine = purchase(1, userId="someone-else")
    hostile = identify(9, userId=VICTIM)
    hostile["traits"] = {"email": ATTACKER_EMAIL, "phone": "+1 202 555 0199"}
    alias = {"type": "alias", "messageId": "alias-9", "userId": VICTIM, "previousId": "attacker-anon"}
    return [genuine, hostile, alias]


def victim_profile(stack: Stack) -> list[dict[str, Any]]:
    key = f"user#{sha256(VICTIM)}"
    return [item for item in items(stack) if item["pk"]["S"] == key]


def test_a_captured_first_element_signature_cannot_rewrite_a_profile(bridge: Stack) -> None:
    """The default deployment has a webhook token: a first-element signature without it is refused."""
    send(bridge, identify(1, userId=VICTIM))
    before = victim_profile(bridge)
    assert before
    status, _ = first_element_signed(injection())
    assert status == 401
    assert victim_profile(bridge) == before
    assert queued(bridge) == []


def test_without_a_token_configured_first_element_batches_are_refused_by_default(
    bridge: Stack, bridge_secret: dict[str, str]
) -> None:
    bridge.put_secret({**bridge_secret, "webhook_secret": DEMO_WEBHOOK_SECRET, "webhook_token": ""})
    assert first_element_signed(injection())[0] == 401
    body = compact(track(1))
    assert post(body, {"X-Signature": signature(DEMO_WEBHOOK_SECRET, body)})[0] == 200  # whole body: fine


def test_the_opt_out_forwards_later_events_but_never_lets_them_write_or_link_profiles(
    bridge: Stack, bridge_secret: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bridge.put_secret({**bridge_secret, "webhook_secret": DEMO_WEBHOOK_SECRET, "webhook_token": ""})
    send(bridge, identify(1, userId=VICTIM))  # (send signs the whole body)
    before = victim_profile(bridge)
    monkeypatch.setenv("FIRST_ELEMENT_SIGNATURE", "without-token")
    ingest.runtime.cache_clear()
    later = purchase(2, userId=VICTIM)
    status, answer = first_element_signed([*injection(), later])
    assert (status, answer["accepted"]) == (200, 2)
    assert victim_profile(bridge) == before  # neither the identify nor the alias reached the profile
    anon = [item for item in items(bridge) if item["pk"]["S"] == f"anon#{sha256('attacker-anon')}"]
    assert anon == []
    forwarded = {m.event_id: m.data for m in queued(bridge)}
    assert set(forwarded) == {"buy-1", "buy-2"}
    assert "email" not in forwarded["buy-2"]["user"]  # an untrusted event is not enriched either


def test_with_the_token_a_first_element_batch_is_trusted_whole(bridge: Stack) -> None:
    later = purchase(2, userId=VICTIM)
    status, answer = first_element_signed(
        [purchase(1, userId="someone-else"), identify(3, userId=VICTIM), later], **BEARER
    )
    assert (status, answer["accepted"]) == (200, 2)
    forwarded = {m.event_id: m.data for m in queued(bridge)}
    assert forwarded["buy-2"]["user"]["email"] == sha256(EMAIL.lower())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 5_000 + b"]" * 5_000, "deeper than the JSON parser allows"),
        (b'{"a":' * 200_000 + b"1" + b"}" * 200_000, "deeper than the JSON parser allows"),
        (
            b'[{"type":"track","messageId":"m","properties":{"price":' + b"9" * 5_000 + b"}}]",
            "too many digits",
        ),
    ],
)
def test_bodies_that_break_the_parser_get_400(bridge: Stack, body: bytes, message: str) -> None:
    status, answer = post(body)
    assert status == 400
    assert message in answer["error"]


def test_deep_nesting_is_checked_after_the_signature_without_recursion(bridge: Stack) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    assert post(body, {"X-Signature": "0" * 40, **BEARER})[0] == 401


@pytest.mark.parametrize(
    "properties",
    [
        {"products": [{"product_id": "a", "price": 1e300, "quantity": 1e300}]},
        {"products": [{"product_id": "a", "price": 10**400, "quantity": 1.5}]},
        {
            "products": [
                {"product_id": "a", "price": 1e308, "quantity": 10},
                {"product_id": "b", "price": 1e308},
            ]
        },
        {"value": 1e999, "products": [{"product_id": "a", "price": "1e999", "quantity": "nan"}]},
    ],
)
def test_numbers_that_overflow_never_leave_ingest_as_non_json(
    bridge: Stack, properties: dict[str, Any]
) -> None:
    event = {**track(1), "properties": {"currency": "USD", **properties}}
    raw = json.dumps([event]).replace("Infinity", "1e999").encode()
    status, answer = post(raw)
    assert (status, answer["accepted"]) == (200, 1)
    sqs = boto3.client("sqs")
    bodies = [
        m["Body"] for m in sqs.receive_message(QueueUrl=bridge.queue_url, MaxNumberOfMessages=10)["Messages"]
    ]
    for body in bodies:
        json.loads(body, parse_constant=lambda name: pytest.fail(f"{name} queued"))
    data = json.loads(bodies[0])
    assert all(math.isfinite(v) for v in (data["properties"].get("value", 0),))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True), ("true", True), ("TRUE", True), ("1", True), (1, True), ("yes", True), ("on", True),
        (False, False), ("false", False), ("0", False), (0, False), ("no", False), ("off", False),
        ("maybe", None), (2, None), ([], None), ({}, None), (None, None),
    ],
)  # fmt: skip
def test_limited_data_use_spellings(bridge: Stack, value: Any, expected: bool | None) -> None:
    """A value that is recognisably a boolean is taken; anything else falls back to the deployment's default
    (false here), never silently to false for `"true"` (issue 11: that was a privacy bug)."""
    assert normalize.flag(value) is expected
    event = track(1)
    event["properties"]["limited_data_use"] = value
    status, answer = post(json.dumps(event))
    assert (status, answer["accepted"]) == (200, 1)
    assert queued(bridge)[0].data["limited_data_use"] is (expected or False)


def test_a_top_level_limited_data_use_that_is_no_boolean_does_not_reject_the_event(bridge: Stack) -> None:
    event = {**track(1), "limited_data_use": "yes please"}
    assert post(json.dumps(event))[1]["accepted"] == 1


def test_a_mapping_error_in_one_event_rejects_only_that_event(
    bridge: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = normalize.email

    def email(value: str) -> str | None:
        if "boom" in value:
            raise RuntimeError(f"cannot normalise {value}")  # a message that quotes the value
        return real(value)

    monkeypatch.setattr(normalize, "email", email)
    mapping._fields.cache_clear()
    events = [track(1, email="ok@example.com"), track(2, email="boom@example.com"), track(3)]
    status, answer = post(json.dumps(events))
    mapping._fields.cache_clear()
    assert status == 200
    assert answer["accepted"] == 2
    assert answer["rejected"] == [{"messageId": "msg-2", "reason": "could not be mapped (RuntimeError)"}]
    assert "boom" not in json.dumps(answer)


FREE_TEXT_PII = ["jane.doe@example.com", "jane.doe%40example.com", "4155550100", "415 555 0100", "Jane Doe"]


def free_text_pii_event(n: int) -> dict[str, Any]:
    """PII where a site or a customer writes it in free text: thank-you URLs, searches, notes, order ids."""
    event = track(
        n,
        query="call me on +1 415 555 0100",
        description="gift for jane.doe@example.com",
        order_id="ORD-77 jane.doe@example.com",
        products=[{"product_id": "p1", "name": "Mug for jane.doe@example.com", "price": 5, "quantity": 1}],
    )
    url = "https://shop.example/thanks?order=77&email=jane.doe%40example.com&name=Jane+Doe&ttclid=E.C.P.abc"
    event["context"] = {
        "page": {
            "url": url,
            "referrer": "https://mail.example/reset?to=%2B14155550100#email=jane.doe@example.com",
        },
        "userAgent": "Mozilla/5.0 (contact jane.doe@example.com)",
    }
    return event


def test_pii_in_free_text_never_reaches_the_queue_a_log_or_the_answer(
    bridge: Stack, ingest_logs: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    status, answer = post(json.dumps([free_text_pii_event(1)]))
    assert (status, answer["accepted"]) == (200, 1)
    sqs = boto3.client("sqs")
    bodies = [m["Body"] for m in sqs.receive_message(QueueUrl=bridge.queue_url)["Messages"]]
    texts = [*bodies, ingest_logs.getvalue(), capsys.readouterr().out, json.dumps(answer)]
    for text in texts:
        for value in FREE_TEXT_PII:
            assert value.lower() not in text.lower()
    data = json.loads(bodies[0])
    assert data["user"]["ttclid"] == "E.C.P.abc"  # read from the URL before it was scrubbed
    assert data["page"]["url"] == "https://shop.example/thanks?order=77&ttclid=E.C.P.abc"
    assert data["properties"]["order_id"] == "ORD-77 redacted"


def test_scrubbing_can_be_configured_and_turned_off(bridge: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_CONFIG", "scrub: {query_parameters: [order]}")
    ingest.runtime.cache_clear()
    post(json.dumps([free_text_pii_event(1)]))
    url = queued(bridge)[0].data["page"]["url"]
    assert url == "https://shop.example/thanks?name=Jane+Doe&ttclid=E.C.P.abc"  # email= always goes
    monkeypatch.setenv("BRIDGE_CONFIG", "scrub: {enabled: false}")
    ingest.runtime.cache_clear()
    post(json.dumps([free_text_pii_event(2)]))
    assert "email=jane.doe%40example.com" in queued(bridge)[0].data["page"]["url"]
