"""The queue message format and batched enqueueing, against moto SQS."""

from __future__ import annotations

import json
import math
from typing import Any

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tiktok_bridge import queue
from tiktok_bridge.model import MappedEvent, Route

WEB = Route("web")
OFFLINE_TEST = Route("offline", "TEST123")


def event(n: int, route: Route = WEB, **extra: Any) -> MappedEvent:
    return MappedEvent(
        route, {"event": "Purchase", "event_id": f"m-{n}", "event_time": 1_700_000_000, **extra}
    )


@pytest.fixture
def sqs(aws: None) -> Any:
    return boto3.client("sqs")


@pytest.fixture
def queue_url(sqs: Any) -> str:
    return str(sqs.create_queue(QueueName="events")["QueueUrl"])


def drain(sqs: Any, queue_url: str) -> list[MappedEvent]:
    """Every message on the queue, decoded from the SQS API shape."""
    received = []
    while messages := sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    ).get("Messages"):
        for message in messages:
            received.append(queue.decode(message["Body"], message.get("MessageAttributes", {})))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return received


def fail_entries(sqs: Any, ids: set[str], times: int) -> list[list[str]]:
    """Make moto really fail the entries `ids` (DelaySeconds out of range) for the next `times` calls.

    The hook sends altered copies, so the caller's own entries stay intact for its retries. Returns the ids
    of every call's entries, in order.
    """
    calls: list[list[str]] = []

    def corrupt(params: dict[str, Any], **_: Any) -> None:
        calls.append([entry["Id"] for entry in params["Entries"]])
        if len(calls) <= times:
            params["Entries"] = [
                {**entry, "DelaySeconds": 901} if entry["Id"] in ids else entry for entry in params["Entries"]
            ]

    sqs.meta.events.register("before-parameter-build.sqs.SendMessageBatch", corrupt)
    return calls


def test_encode_carries_only_data_and_routing() -> None:
    entry = queue.encode(event(1, OFFLINE_TEST, user={"email": "a" * 64}), "7")
    assert entry["Id"] == "7"
    assert json.loads(entry["MessageBody"]) == event(1, OFFLINE_TEST, user={"email": "a" * 64}).data
    assert " " not in entry["MessageBody"]
    assert entry["MessageAttributes"] == {
        "event_source": {"DataType": "String", "StringValue": "offline"},
        "source_id_key": {"DataType": "String", "StringValue": "event_set_id"},
        "test_event_code": {"DataType": "String", "StringValue": "TEST123"},
    }


@pytest.mark.parametrize("route", [Route("web"), Route("web", "")])
def test_encode_omits_unset_test_event_code(route: Route) -> None:
    assert set(queue.encode(event(1, route), "0")["MessageAttributes"]) == {"event_source", "source_id_key"}


def test_encode_is_ascii_and_round_trips_non_ascii_text() -> None:
    mapped = event(1, properties={"description": "Crème brûlée 🍮 東京 \u2028 \x00"})
    entry = queue.encode(mapped, "0")
    assert entry["MessageBody"].isascii()
    assert queue.decode(entry["MessageBody"], entry["MessageAttributes"]) == mapped


def test_decode_accepts_the_lambda_event_attribute_shape() -> None:
    attributes = {
        "event_source": {"stringValue": "offline", "stringListValues": [], "dataType": "String"},
        "source_id_key": {"stringValue": "event_set_id", "dataType": "String"},
        "test_event_code": {"stringValue": "TEST123", "dataType": "String"},
    }
    body = queue.encode(event(2, OFFLINE_TEST), "0")["MessageBody"]
    assert queue.decode(body, attributes) == event(2, OFFLINE_TEST)


GOOD = queue.encode(event(0), "0")["MessageAttributes"]


@pytest.mark.parametrize(
    ("body", "attributes", "message"),
    [
        ('{"event_id":"x"}', {}, "'event_source' is missing"),
        ('{"event_id":"x"}', {**GOOD, "event_source": {"StringValue": "app"}}, "must be one of web"),
        ('{"event_id":"x"}', {**GOOD, "event_source": "web"}, "'event_source' is not a non-empty"),
        ('{"event_id":"x"}', {**GOOD, "event_source": {"StringValue": ""}}, "not a non-empty"),
        ('{"event_id":"x"}', {"event_source": GOOD["event_source"]}, "'source_id_key' is missing"),
        (
            '{"event_id":"x"}',
            {**GOOD, "source_id_key": {"StringValue": "event_set_id"}},
            "must be 'pixel_code' for web",
        ),
        ('{"event_id":"x"}', {**GOOD, "test_event_code": {"BinaryValue": b"x"}}, "'test_event_code'"),
        ('{"email": "jane@example.com"', GOOD, "not JSON"),
        ('["jane@example.com"]', GOOD, "not a JSON object"),
        ("", GOOD, "not JSON"),
    ],
)
def test_decode_rejects_corrupt_messages_without_echoing(body: str, attributes: Any, message: str) -> None:
    with pytest.raises(queue.QueueFormatError, match=message) as caught:
        queue.decode(body, attributes)
    assert "jane@example.com" not in str(caught.value)


def test_entry_size_counts_body_and_attributes_in_bytes() -> None:
    entry = queue.encode(event(1, properties={"description": "é"}), "0")
    attributes = entry["MessageAttributes"]
    attributes_size = sum(len(name) + len("String") + len(a["StringValue"]) for name, a in attributes.items())
    assert queue.entry_size(entry) == len(entry["MessageBody"].encode()) + attributes_size


def test_batches_split_at_ten_entries() -> None:
    entries = [queue.encode(event(n), str(n)) for n in range(25)]
    assert [len(batch) for batch in queue.batches(entries)] == [10, 10, 5]


def test_batches_split_at_256_kib() -> None:
    entries = [queue.encode(event(n, properties={"description": "x" * 100_000}), str(n)) for n in range(5)]
    assert [len(batch) for batch in queue.batches(entries)] == [2, 2, 1]


@given(st.lists(st.integers(min_value=0, max_value=120_000), max_size=40))
def test_batches_respect_both_limits_and_keep_order(sizes: list[int]) -> None:
    entries = [queue.encode(event(n, properties={"d": "x" * size}), str(n)) for n, size in enumerate(sizes)]
    batches = list(queue.batches(entries))
    assert [entry for batch in batches for entry in batch] == entries
    for batch in batches:
        assert 1 <= len(batch) <= queue.MAX_BATCH_ENTRIES
        assert sum(queue.entry_size(entry) for entry in batch) <= queue.MAX_BATCH_BYTES


def test_send_all_enqueues_every_event_once(sqs: Any, queue_url: str) -> None:
    events = [event(n, WEB if n % 2 else OFFLINE_TEST) for n in range(25)]
    report = queue.send_all(sqs, queue_url, events)
    assert report == queue.SendReport()
    assert sorted(drain(sqs, queue_url), key=lambda e: e.event_id) == sorted(events, key=lambda e: e.event_id)


def test_send_all_retries_entries_that_failed(sqs: Any, queue_url: str) -> None:
    calls = fail_entries(sqs, {"3", "12"}, times=2)
    events = [event(n) for n in range(15)]
    report = queue.send_all(sqs, queue_url, events, backoff_s=0)
    assert report == queue.SendReport()
    assert calls[2] == ["3", "12"]  # two first-round calls, then one retry with only the failed entries
    assert sorted(e.event_id for e in drain(sqs, queue_url)) == sorted(e.event_id for e in events)


def test_send_all_reports_what_still_failed_after_bounded_retries(sqs: Any, queue_url: str) -> None:
    calls = fail_entries(sqs, {"4"}, times=100)
    events = [event(n) for n in range(6)]
    report = queue.send_all(sqs, queue_url, events, max_attempts=3, backoff_s=0)
    assert report.failed == [events[4]]
    assert len(calls) == 3
    assert sorted(e.event_id for e in drain(sqs, queue_url)) == [f"m-{n}" for n in (0, 1, 2, 3, 5)]


def test_send_all_reports_everything_when_the_queue_is_unreachable(sqs: Any, queue_url: str) -> None:
    events = [event(n) for n in range(12)]
    report = queue.send_all(sqs, queue_url + "-missing", events, backoff_s=0)
    assert report.failed == events
    assert drain(sqs, queue_url) == []


def test_send_all_sets_aside_events_that_are_not_strict_json(sqs: Any, queue_url: str) -> None:
    infinite = event(1, properties={"value": math.inf})
    report = queue.send_all(sqs, queue_url, [event(0), infinite])
    assert report == queue.SendReport(refused=[(infinite, queue.NOT_JSON)])
    assert [e.event_id for e in drain(sqs, queue_url)] == ["m-0"]


def test_send_all_sets_aside_events_too_large_for_sqs(sqs: Any, queue_url: str) -> None:
    huge = event(1, properties={"description": "x" * queue.MAX_BATCH_BYTES})
    report = queue.send_all(sqs, queue_url, [event(0), huge, event(2)])
    assert report == queue.SendReport(refused=[(huge, queue.TOO_LARGE)])
    assert sorted(e.event_id for e in drain(sqs, queue_url)) == ["m-0", "m-2"]
