"""The sender Lambda over real HTTP to the TikTok emulator; the template's queue, DLQ and secret in moto."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from tiktok_bridge import queue, sender
from tiktok_bridge.model import MappedEvent, Route
from tiktok_bridge.secret import fetch_secret
from tiktok_bridge_cli.emulator import Emulator, _invalid
from tiktok_bridge_cli.stack import Stack

from tests.conftest import lambda_context

SAMPLE_EVENT = Path(__file__).resolve().parents[2] / "events" / "sqs-sender.json"
WEB, OFFLINE = Route("web"), Route("offline")
RAW_EMAIL, RAW_PHONE, RAW_NAME = "jane.doe@example.com", "+14155550100", "Jane"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def mapped(n: int, route: Route = WEB, event_id: str | None = None, **properties: Any) -> MappedEvent:
    """A TikTok-ready event as ingest queues it: PII already hashed."""
    data: dict[str, Any] = {
        "event": "Purchase",
        "event_time": 1767225600 + n,
        "event_id": event_id or f"msg-{route.event_source}-{n:05d}",
        "user": {"email": sha(f"user{n}@example.com"), "phone": sha(RAW_PHONE), "external_id": sha(f"u{n}")},
        "properties": {"currency": "USD", "value": 10.5, **properties},
    }
    if route.event_source == "web":
        data["user"]["ip"] = "203.0.113.7"
        data["page"] = {"url": f"https://shop.example.com/p/{n}"}
    return MappedEvent(route, data)


def lambda_record(
    message_id: str, body: str, attributes: dict[str, Any], receives: int = 1
) -> dict[str, Any]:
    """An SQS record as Lambda delivers it (for the `receives`-th time), from SQS-API-shaped attributes."""
    return {
        "messageId": message_id,
        "receiptHandle": f"rh-{message_id}",
        "body": body,
        "attributes": {"ApproximateReceiveCount": str(receives)},
        "messageAttributes": {
            name: {
                "stringValue": a["StringValue"],
                "stringListValues": [],
                "binaryListValues": [],
                "dataType": "String",
            }
            for name, a in attributes.items()
        },
        "md5OfBody": hashlib.md5(body.encode()).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:EventsQueue",
        "awsRegion": "us-east-1",
    }


def sqs_event(events: Sequence[MappedEvent], receives: int | Sequence[int] = 1) -> dict[str, Any]:
    """The Lambda event for `events` encoded in the queue format (message id = `m<index>`), each received
    `receives` times (one count for all, or one per event)."""
    counts = [receives] * len(events) if isinstance(receives, int) else receives
    entries = [queue.encode(event, str(n)) for n, event in enumerate(events)]
    return {
        "Records": [
            lambda_record(f"m{e['Id']}", e["MessageBody"], e["MessageAttributes"], count)
            for e, count in zip(entries, counts, strict=True)
        ]
    }


def invoke(event: dict[str, Any], seconds: float = 60) -> list[str]:
    """Run the Lambda handler with `seconds` left; the message ids it reports as batch item failures."""
    context = dataclasses.replace(lambda_context("SenderFunction"), deadline=time.monotonic() + seconds)
    response = sender.lambda_handler(event, context)
    return [failure["itemIdentifier"] for failure in response["batchItemFailures"]]


def process(event: dict[str, Any]) -> set[str]:
    return sender.process([SQSRecord(record) for record in event["Records"]])


def dead_letters(stack: Stack) -> list[dict[str, Any]]:
    sqs = boto3.client("sqs", region_name=stack.region)
    messages: list[Any] = []
    while batch := sqs.receive_message(
        QueueUrl=stack.dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    ).get("Messages", []):
        messages += batch
    return messages


def attributes(message: dict[str, Any]) -> dict[str, str]:
    return {name: a["StringValue"] for name, a in message.get("MessageAttributes", {}).items()}


def emf_metrics(output: str) -> dict[str, Any]:
    """Metric values (lists) from the EMF lines Powertools printed; a later line wins for a repeated name."""
    values: dict[str, Any] = {}
    for line in output.splitlines():
        blob = json.loads(line) if line.startswith("{") else {}
        for directive in blob.get("_aws", {}).get("CloudWatchMetrics", []):
            for metric in directive["Metrics"]:
                values[metric["Name"]] = blob[metric["Name"]]
    return values


@pytest.fixture(autouse=True)
def clean_metrics(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(sender.metrics, "namespace", "TikTokBridge")  # env is set after the module's import
    sender.metrics.clear_metrics()
    yield
    sender.metrics.clear_metrics()


@pytest.fixture
def output(capsys: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[[], str]:
    """Everything the sender writes: its Powertools log lines and the EMF metrics lines."""
    logs = io.StringIO()
    monkeypatch.setattr(sender.logger.registered_handler, "stream", logs)
    return lambda: logs.getvalue() + capsys.readouterr().out


@pytest.fixture
def tiktok(stack: Stack, emulator: Emulator) -> Emulator:
    """The template's resources in moto and the emulator as TikTok (strict: hashed PII only)."""
    emulator.strict = True
    return emulator


def test_handler_delivers_the_sample_event(tiktok: Emulator, stack: Stack) -> None:
    event = json.loads(SAMPLE_EVENT.read_text())
    assert invoke(event) == []
    requests = tiktok.accepted_requests()
    assert [(r["event_source"], r["event_source_id"], len(r["data"])) for r in requests] == [
        ("web", "PIXEL123", 2),
        ("offline", "EVENTSET123", 1),
    ]
    assert [json.loads(record["body"]) for record in event["Records"]] == [
        e for r in requests for e in r["data"]
    ]
    assert dead_letters(stack) == []


def test_groups_by_route_with_at_most_1000_events_per_request(tiktok: Emulator) -> None:
    test_route = Route("web", test_event_code="TEST123")
    events = [mapped(n) for n in range(2300)] + [mapped(n, OFFLINE) for n in range(5)]
    events += [mapped(n, test_route, event_id=f"msg-test-{n}") for n in range(3)]
    events.insert(1500, mapped(9999, OFFLINE))  # interleaved routes are still grouped
    assert invoke(sqs_event(events)) == []
    shape = [
        (r["event_source"], r.get("test_event_code"), len(r["data"])) for r in tiktok.accepted_requests()
    ]
    web = [("web", None, 1000), ("web", None, 1000), ("web", None, 300)]
    assert shape == [*web, ("offline", None, 6), ("web", "TEST123", 3)]
    assert all("test_event_code" not in e for r in tiktok.accepted_requests() for e in r["data"])
    assert len(tiktok.delivered_keys()) == len(events)


def test_a_poison_event_is_isolated_and_dead_lettered(
    tiktok: Emulator, stack: Stack, output: Callable[[], str]
) -> None:
    tiktok.set_faults(poison_marker="POISON")
    events = [mapped(n) for n in range(1000)]
    events[637] = mapped(637, description="POISON")
    event = sqs_event(events)
    assert invoke(event) == []
    assert tiktok.request_count <= 25
    assert len(tiktok.delivered_keys()) == 999
    [letter] = dead_letters(stack)
    assert letter["Body"] == event["Records"][637]["body"]
    attrs = attributes(letter)
    assert attrs["event_source"] == "web"
    assert attrs["source_id_key"] == "pixel_code"
    assert attrs["tiktok_code"] == "40002"
    assert "poisoned" in attrs["tiktok_message"]
    assert attrs["dlq_reason"] == "rejected by TikTok with code 40002"
    metrics = emf_metrics(output())
    assert metrics["RecordsReceived"] == [1000]
    assert metrics["EventsDelivered"] == [999]
    assert metrics["EventsDeadLettered"] == [1]
    assert metrics["EventsRetried"] == [0]
    assert metrics["TikTokRequests"] == [tiktok.request_count]
    assert metrics["EventsPerRequest"][:3] == [1000, 500, 500]
    assert len(metrics["TikTokLatency"]) == tiktok.request_count


def by_source(output: str) -> dict[tuple[str, str, str], float]:
    """The per-source counts: (metric, EventSource, Event) -> value."""
    found = {}
    for line in output.splitlines():
        blob = json.loads(line) if line.startswith("{") else {}
        for name in ("EventsDeliveredBySource", "EventsDeadLetteredBySource"):
            if name in blob:
                found[(name, blob["EventSource"], blob["Event"])] = blob[name][0]
    return found


def test_delivered_and_dead_lettered_are_counted_per_source_and_event(
    tiktok: Emulator, stack: Stack, output: Callable[[], str]
) -> None:
    """Bounded dimensions: the destination and the TikTok event, custom event names counted together."""
    tiktok.set_faults(poison_marker="POISON")
    custom = MappedEvent(WEB, {**mapped(3).data, "event": "Custom_Quiz_Finished", "event_id": "quiz-3"})
    events = [mapped(0), mapped(1, OFFLINE), mapped(2, description="POISON"), custom]
    assert invoke(sqs_event(events)) == []
    assert by_source(output()) == {
        ("EventsDeliveredBySource", "web", "Purchase"): 1,
        ("EventsDeliveredBySource", "offline", "Purchase"): 1,
        ("EventsDeliveredBySource", "web", "Custom"): 1,
        ("EventsDeadLetteredBySource", "web", "Purchase"): 1,
    }


def test_throttling_keeps_the_records_and_never_dead_letters(
    tiktok: Emulator, stack: Stack, output: Callable[[], str]
) -> None:
    tiktok.set_faults(throttle=1)
    events = [mapped(n) for n in range(3)] + [mapped(n, OFFLINE) for n in range(2)]
    assert invoke(sqs_event(events)) == ["m0", "m1", "m2"]  # the web request was throttled, offline delivered
    tiktok.set_faults(throttle=1000)
    # a wholly throttled batch is reported record by record: no function error, no config-error count
    assert invoke(sqs_event(events)) == ["m0", "m1", "m2", "m3", "m4"]
    assert emf_metrics(output())["EventsHeldByConfigError"] == [0]
    assert dead_letters(stack) == []
    assert {key[2] for key in tiktok.delivered_keys()} == {"msg-offline-00000", "msg-offline-00001"}


@pytest.mark.parametrize(
    "faults",
    [{"http_errors": 1, "http_status": 503}, {"http_errors": 1, "http_status": 429}, {"drop": 1}],
)
def test_transport_failures_keep_the_records(tiktok: Emulator, stack: Stack, faults: dict[str, Any]) -> None:
    tiktok.set_faults(**faults)
    event = sqs_event([mapped(n) for n in range(3)])
    assert process(event) == {"m0", "m1", "m2"}
    assert process(event) == set()  # redelivered by SQS later: now delivered
    assert dead_letters(stack) == []


def test_unreachable_tiktok_keeps_the_records(stack: Stack) -> None:
    assert process(sqs_event([mapped(0), mapped(1, OFFLINE)])) == {"m0", "m1"}
    assert dead_letters(stack) == []


def test_timeout_keeps_the_records(tiktok: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOK_TIMEOUT_S", "1")
    tiktok.set_faults(delay_s=30)
    assert process(sqs_event([mapped(0)])) == {"m0"}


def test_auth_error_refreshes_the_secret_once_and_delivers(
    tiktok: Emulator, stack: Stack, bridge_secret: dict[str, str]
) -> None:
    stack.put_secret({**bridge_secret, "access_token": "revoked-token"})
    tiktok_secret = stack.secret_of("access_token")
    assert fetch_secret(tiktok_secret).access_token.get_secret_value() == "revoked-token"  # now cached
    secrets = boto3.client("secretsmanager", region_name=stack.region)
    secrets.put_secret_value(SecretId=tiktok_secret, SecretString=json.dumps(bridge_secret))  # rotated
    assert process(sqs_event([mapped(n) for n in range(3)])) == set()
    assert tiktok.request_count == 2  # 40105 with the cached token, then delivered with the fresh one
    assert len(tiktok.delivered_keys()) == 3


def test_persistent_auth_error_keeps_the_records(
    tiktok: Emulator, stack: Stack, bridge_secret: dict[str, str], output: Callable[[], str]
) -> None:
    stack.put_secret({**bridge_secret, "access_token": "revoked-token"})
    event = sqs_event([mapped(0), mapped(1), mapped(0, OFFLINE)])
    assert process(event) == {"m0", "m1", "m2"}
    assert (
        tiktok.request_count == 3
    )  # web: refused, refreshed, refused again; offline: refused (no 2nd refresh)
    assert dead_letters(stack) == []
    sender.metrics.clear_metrics()
    assert invoke(event) == ["m0", "m1", "m2"]
    assert emf_metrics(output())["EventsHeldByConfigError"] == [3]  # what SenderConfigErrorAlarm watches


def test_unauthorised_source_id_is_an_auth_error(
    tiktok: Emulator, stack: Stack, bridge_secret: dict[str, str]
) -> None:
    stack.put_secret({**bridge_secret, "pixel_code": "SOMEONE_ELSES_PIXEL"})  # TikTok answers 40001
    assert invoke(sqs_event([mapped(0), mapped(0, OFFLINE)])) == ["m0"]
    assert dead_letters(stack) == []


def test_missing_source_id_keeps_the_records_without_a_request(
    tiktok: Emulator, stack: Stack, bridge_secret: dict[str, str]
) -> None:
    stack.put_secret({**bridge_secret, "event_set_id": ""})
    assert invoke(sqs_event([mapped(0), mapped(0, OFFLINE), mapped(1, OFFLINE)])) == ["m1", "m2"]
    assert [r["event_source"] for r in tiktok.accepted_requests()] == ["web"]
    assert tiktok.request_count == 1


def test_unreadable_secret_keeps_the_records(tiktok: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOK_SECRET_ID", "no-such-secret")
    assert process(sqs_event([mapped(0), mapped(0, OFFLINE)])) == {"m0", "m1"}
    assert tiktok.request_count == 0


def corrupt_records() -> dict[str, dict[str, Any]]:
    """Records no ingest could have written, by the reason the sender gives for each."""
    good = queue.encode(mapped(0), "x")
    body, attrs = good["MessageBody"], good["MessageAttributes"]
    offline = {"DataType": "String", "StringValue": "offline"}
    tv = {**offline, "StringValue": "tv"}
    return {
        "message body is not JSON": lambda_record("bad-json", "{not json", attrs),
        "message body is not a JSON object": lambda_record("bad-array", "[1, 2]", attrs),
        "message attribute 'event_source' is missing": lambda_record("no-attributes", body, {}),
        "message attribute 'event_source' must be one of web, offline": lambda_record(
            "bad-source", body, {**attrs, "event_source": tv}
        ),
        "message attribute 'source_id_key' must be 'event_set_id' for offline": lambda_record(
            "mismatched-key", body, {**attrs, "event_source": offline}
        ),
    }


def test_corrupt_records_are_dead_lettered_with_the_reason(tiktok: Emulator, stack: Stack) -> None:
    corrupt = corrupt_records()
    event = sqs_event([mapped(1)])
    event["Records"] += corrupt.values()
    assert invoke(event) == []
    assert len(tiktok.delivered_keys()) == 1
    letters = {attributes(letter)["dlq_reason"]: letter for letter in dead_letters(stack)}
    assert letters.keys() == {f"corrupt record: {reason}" for reason in corrupt}
    for reason, record in corrupt.items():
        letter = letters[f"corrupt record: {reason}"]
        assert letter["Body"] == record["body"]
        original = {name: a["stringValue"] for name, a in record["messageAttributes"].items()}
        assert attributes(letter) == {**original, "dlq_reason": f"corrupt record: {reason}"}


@pytest.mark.parametrize("dlq_url", ["", "https://sqs.us-east-1.amazonaws.com/123456789012/missing-queue"])
def test_an_unavailable_dlq_keeps_the_dead_letters_queued(
    tiktok: Emulator, monkeypatch: pytest.MonkeyPatch, dlq_url: str
) -> None:
    monkeypatch.setenv("DLQ_URL", dlq_url)
    tiktok.set_faults(poison_marker="POISON")
    event = sqs_event([mapped(0), mapped(1, description="POISON"), mapped(2)])
    event["Records"].append(corrupt_records()["message body is not JSON"])
    assert invoke(event) == ["m1", "bad-json"]
    assert len(tiktok.delivered_keys()) == 2


def test_logs_and_metrics_carry_no_event_data(
    tiktok: Emulator, stack: Stack, bridge_secret: dict[str, str], output: Callable[[], str]
) -> None:
    def leaves(value: Any) -> Iterator[str]:
        if isinstance(value, dict):
            for item in value.values():
                yield from leaves(item)
        elif isinstance(value, list):
            for item in value:
                yield from leaves(item)
        else:
            yield json.dumps(value).strip('"')

    events = [mapped(n, route) for n in range(4) for route in (WEB, OFFLINE)]
    event = sqs_event(events)
    event["Records"] += corrupt_records().values()
    tiktok.set_faults(throttle=1)  # web throttled; offline delivered; corrupt dead-lettered
    invoke(event)
    stack.put_secret({**bridge_secret, "access_token": "revoked-token"})
    invoke(sqs_event(events))
    tiktok.set_faults(http_errors=1)
    invoke(sqs_event(events))

    logged = output()
    assert "batch processed" in logged and "40105" in logged and "40100" in logged
    data_values = {leaf for e in events for leaf in leaves(e.data) if len(leaf) > 4} - {"Purchase"}
    data_values |= {RAW_EMAIL, RAW_PHONE, RAW_NAME, "revoked-token", bridge_secret["access_token"]}
    assert [value for value in data_values if value in logged] == []


def test_poison_logs_carry_no_user_data(tiktok: Emulator, stack: Stack, output: Callable[[], str]) -> None:
    tiktok.set_faults(poison_marker="POISON")
    events = [mapped(n, description="POISON" if n == 5 else "fine") for n in range(8)]
    invoke(sqs_event(events))
    logged = output()
    assert "40002" in logged and "dead-lettered" in logged
    user_values = {value for e in events for value in e.data["user"].values()} | {
        e.data["page"]["url"] for e in events
    }
    assert [value for value in user_values if value in logged] == []


def logged(output: str, message: str) -> dict[str, Any]:
    """The sender's log line with `message` (the last one)."""
    lines = [json.loads(line) for line in output.splitlines() if line.startswith('{"level"')]
    return dict([line for line in lines if line["message"] == message][-1])


def test_partial_success_loses_nothing(tiktok: Emulator, stack: Stack, output: Callable[[], str]) -> None:
    """20001 names no event: the request is split until the refused events are alone; they are dead-lettered
    with TikTok's code and message, the rest delivered."""
    tiktok.set_faults(partial_marker="REFUSED")
    events = [mapped(n) for n in range(1000)]
    for n in (3, 500, 998):
        events[n] = mapped(n, event_id=f"msg-REFUSED-{n}")
    assert invoke(sqs_event(events)) == []
    assert len(tiktok.delivered_keys()) == 997
    letters = {json.loads(letter["Body"])["event_id"]: attributes(letter) for letter in dead_letters(stack)}
    assert letters.keys() == {"msg-REFUSED-3", "msg-REFUSED-500", "msg-REFUSED-998"}
    for attrs in letters.values():
        assert attrs["dlq_reason"] == "rejected by TikTok with code 20001"
        assert (attrs["tiktok_code"], attrs["tiktok_message"]) == ("20001", "Partial success.")
        assert attrs["attempts"] == "1"
    assert emf_metrics(output())["EventsDeadLettered"] == [3]


def test_a_5xx_poison_event_is_isolated_once_it_failed_before(tiktok: Emulator, stack: Stack) -> None:
    """An event that makes TikTok answer 500 holds back its request once (it could be TikTok's outage); when
    its records come back, the request is split, the rest delivered, and on its last try the event is
    dead-lettered with the last verdict."""
    tiktok.set_faults(crash_marker="CRASH")
    events = [mapped(n) for n in range(1000)]
    events[637] = mapped(637, description="CRASH")
    assert len(invoke(sqs_event(events))) == 1000
    assert tiktok.request_count == 1
    assert invoke(sqs_event(events, receives=2)) == ["m637"]
    assert len(tiktok.delivered_keys()) == 999
    assert invoke(sqs_event([events[637]], receives=3)) == ["m0"]
    assert dead_letters(stack) == []
    assert invoke(sqs_event([events[637]], receives=4)) == []  # the try before maxReceiveCount's (5)
    [letter] = dead_letters(stack)
    assert json.loads(letter["Body"])["event_id"] == "msg-web-00637"
    assert attributes(letter) | {"tiktok_message": ""} == {
        "event_source": "web",
        "source_id_key": "pixel_code",
        "dlq_reason": "retries exhausted, last verdict http_500",
        "tiktok_code": "http_500",
        "tiktok_message": "",
        "attempts": "4",
    }


@pytest.mark.parametrize(
    ("faults", "code"),
    [
        ({"throttle": 10}, "40100"),
        ({"http_errors": 10, "http_status": 503}, "http_503"),
        ({"drop": 10}, "RemoteProtocolError"),
    ],
)
def test_on_its_last_try_a_record_is_dead_lettered_with_the_last_verdict(
    tiktok: Emulator, stack: Stack, faults: dict[str, Any], code: str, output: Callable[[], str]
) -> None:
    """SQS would move it after the next receive without a reason; the fresh record stays queued."""
    tiktok.set_faults(**faults)
    event = sqs_event([mapped(0), mapped(1)], receives=[4, 1])
    assert invoke(event) == ["m1"]
    [letter] = dead_letters(stack)
    assert letter["Body"] == event["Records"][0]["body"]
    attrs = attributes(letter)
    assert attrs["dlq_reason"] == f"retries exhausted, last verdict {code}"
    assert (attrs["tiktok_code"], attrs["attempts"]) == (code, "4")
    assert attrs["tiktok_message"]
    logs = output()
    assert logged(logs, "dead-lettered")["message_ids"] == ["m0"]
    assert logged(logs, "events stay queued")["message_ids"] == ["m1"]


def test_a_configuration_error_on_the_last_try_is_dead_lettered_with_the_reason(
    tiktok: Emulator, stack: Stack, bridge_secret: dict[str, str], output: Callable[[], str]
) -> None:
    stack.put_secret({**bridge_secret, "access_token": "revoked-token", "event_set_id": ""})
    event = sqs_event([mapped(0), mapped(1), mapped(2, OFFLINE), mapped(3, OFFLINE)], receives=[1, 4, 1, 4])
    assert invoke(event) == ["m0", "m2"]
    verdicts = {
        letter["Body"]: (attributes(letter)["tiktok_code"], attributes(letter)["tiktok_message"])
        for letter in dead_letters(stack)
    }
    web, offline = (verdicts[record["body"]] for record in event["Records"][1::2])
    assert web == ("40105", "Access token is incorrect or has been revoked.")
    assert offline == ("no_source_id", "the secret has no event_set_id")
    assert emf_metrics(output())["EventsHeldByConfigError"] == [2]


def test_a_token_that_is_not_ascii_holds_the_records(
    tiktok: Emulator, stack: Stack, bridge_secret: dict[str, str], output: Callable[[], str]
) -> None:
    """A configuration error (the secret is re-read once), not a crash of every batch."""
    stack.put_secret({**bridge_secret, "access_token": "t\u00f6ken-\u20ac"})
    assert invoke(sqs_event([mapped(0), mapped(1, OFFLINE)])) == ["m0", "m1"]
    assert tiktok.request_count == 0
    assert dead_letters(stack) == []
    assert emf_metrics(output())["EventsHeldByConfigError"] == [2]  # what SenderConfigErrorAlarm watches


def test_a_drip_fed_answer_ends_at_the_deadline(
    tiktok: Emulator, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each byte of the answer comes well within a read timeout, the whole answer takes minutes: the call ends
    at the invocation's deadline (20 s, less the margin), and every record is held or dead-lettered with the
    verdict."""
    monkeypatch.setenv("TIKTOK_TIMEOUT_S", "60")  # the deadline is what ends the call
    tiktok.set_faults(drip=10, drip_s=0.5)
    events = [mapped(n) for n in range(4)] + [mapped(n, OFFLINE) for n in range(2)]
    event = sqs_event(events, receives=[1, 1, 1, 4, 1, 1])
    started = time.monotonic()
    assert invoke(event, seconds=20) == ["m0", "m1", "m2", "m4", "m5"]  # offline: never posted
    assert time.monotonic() - started < 20 - sender.MAX_MARGIN_S + 1
    assert tiktok.request_count == 1
    [letter] = dead_letters(stack)
    assert letter["Body"] == event["Records"][3]["body"]
    assert attributes(letter)["dlq_reason"] == "retries exhausted, last verdict timeout"
    assert attributes(letter)["tiktok_code"] == "timeout"


def test_records_not_posted_before_the_deadline_stay_queued(tiktok: Emulator) -> None:
    tiktok.set_faults(delay_s=5)
    started = time.monotonic()
    assert invoke(sqs_event([mapped(0), mapped(1, OFFLINE)]), seconds=2) == ["m0", "m1"]
    assert time.monotonic() - started < 2
    assert tiktok.request_count == 1  # offline: no time left to post it


def test_an_answer_about_the_request_itself_holds_the_records(
    tiktok: Emulator, stack: Stack, monkeypatch: pytest.MonkeyPatch, output: Callable[[], str]
) -> None:
    """Both halves rejected like the whole (here: for the source id) is a configuration error, not 1,000
    events to isolate one by one and dead-letter."""

    def refuse(body: Any) -> dict[str, Any]:
        raise _invalid("event_source_id", "not a valid pixel code")

    monkeypatch.setattr(tiktok, "_validate", refuse)
    started = time.monotonic()
    assert len(invoke(sqs_event([mapped(n) for n in range(1000)]), seconds=20)) == 1000
    assert time.monotonic() - started < 20
    assert tiktok.request_count == 3
    assert dead_letters(stack) == []
    assert emf_metrics(output())["EventsHeldByConfigError"] == [1000]


def test_splitting_is_capped(tiktok: Emulator, stack: Stack) -> None:
    """A batch of bad events (each refused with its own message) is isolated as far as MAX_SPLIT_REQUESTS
    go; the rest stays queued for the next try."""
    tiktok.set_faults(poison_marker="POISON")
    event = sqs_event([mapped(n, description="POISON") for n in range(1000)])
    started = time.monotonic()
    kept = set(invoke(event, seconds=20))
    assert time.monotonic() - started < 20
    assert tiktok.request_count == 1 + sender.MAX_SPLIT_REQUESTS
    letters = dead_letters(stack)
    assert {attributes(letter)["tiktok_code"] for letter in letters} == {"40002"}
    dead = {letter["Body"] for letter in letters}
    assert len(dead) + len(kept) == 1000
    assert not {record["body"] for record in event["Records"] if record["messageId"] in kept} & dead


def test_a_record_back_after_its_last_try_is_dead_lettered_before_any_request(
    tiktok: Emulator, stack: Stack
) -> None:
    """Its last try ended without a verdict (the invocation crashed): SQS would move it without a reason on
    the next receive, so the sender moves it first thing, before a crash while posting could happen again."""
    event = sqs_event([mapped(0), mapped(1)], receives=[5, 1])
    assert invoke(event) == []
    assert tiktok.request_count == 1 and {key[2] for key in tiktok.delivered_keys()} == {"msg-web-00001"}
    [letter] = dead_letters(stack)
    assert letter["Body"] == event["Records"][0]["body"]
    attrs = attributes(letter)
    assert attrs["dlq_reason"] == "retries exhausted, last verdict unfinished"
    assert (attrs["tiktok_code"], attrs["attempts"]) == ("unfinished", "5")


def test_sending_to_the_dlq_is_retried(
    tiktok: Emulator, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    send_batch = queue.send_batch
    calls: list[int] = []

    def flaky(sqs: Any, url: str, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        calls.append(len(batch))
        return batch if len(calls) < 3 else send_batch(sqs, url, batch)  # SQS fails twice, then recovers

    monkeypatch.setattr(queue, "send_batch", flaky)
    tiktok.set_faults(poison_marker="POISON")
    assert invoke(sqs_event([mapped(0, description="POISON"), mapped(1)])) == []
    assert len(calls) == 3
    assert [attributes(letter)["tiktok_code"] for letter in dead_letters(stack)] == ["40002"]
