"""The SQS message format between ingest and sender, and batched enqueueing with bounded retries.

A message body is the compact JSON of one `MappedEvent.data` (hashed, TikTok-ready); its routing travels in
the message attributes `event_source`, `source_id_key` and, only when set, `test_event_code`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, get_args

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tiktok_bridge.model import EventSource, MappedEvent, Route

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

MAX_BATCH_ENTRIES = 10
MAX_BATCH_BYTES = 256 * 1024  # SendMessageBatch payload: bodies + attribute names, types and values.
MAX_ATTEMPTS = 3
BACKOFF_S = 0.05
# Parallel SendMessageBatch calls: a 4,000-event Segment batch is 400 calls, which must finish well within
# Segment's 5 s timeout. Stays below botocore's default pool of 10 connections.
MAX_WORKERS = 8
_EVENT_SOURCES: tuple[str, ...] = get_args(EventSource)


def client() -> SQSClient:
    """An SQS client for the calls made here: their parameters are built by this module, so botocore's
    client-side validation (a large share of ingest's CPU on a big webhook) is off."""
    return boto3.client("sqs", config=Config(parameter_validation=False))


class QueueFormatError(ValueError):
    """A queue message that is not a bridge event; the message names what is wrong, never the values."""


@dataclass
class SendReport:
    """What `send_all` could not enqueue. Both lists empty means everything is durably queued."""

    failed: list[MappedEvent] = field(default_factory=list)  # transient: SQS kept failing through the retries
    refused: list[tuple[MappedEvent, str]] = field(default_factory=list)  # permanent, with the reason


TOO_LARGE = f"mapped event exceeds the queue's {MAX_BATCH_BYTES}-byte message limit"
NOT_JSON = "mapped event holds a number JSON cannot carry (NaN or Infinity)"


def _string_attribute(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


def encode(mapped: MappedEvent, entry_id: str) -> dict[str, Any]:
    """A SendMessageBatch entry for `mapped`: strict, ASCII-only JSON (every character is valid in SQS);
    ValueError for NaN or an infinity, which TikTok refuses."""
    attributes = {
        "event_source": _string_attribute(mapped.route.event_source),
        "source_id_key": _string_attribute(mapped.route.source_id_key),
    }
    if mapped.route.test_event_code:
        attributes["test_event_code"] = _string_attribute(mapped.route.test_event_code)
    body = json.dumps(mapped.data, separators=(",", ":"), allow_nan=False)
    return {"Id": entry_id, "MessageBody": body, "MessageAttributes": attributes}


def _attribute(attributes: Mapping[str, Any], name: str, *, required: bool) -> str | None:
    """A string attribute in the SQS API shape (`StringValue`) or the Lambda event shape (`stringValue`)."""
    raw = attributes.get(name)
    if raw is None:
        if required:
            raise QueueFormatError(f"message attribute {name!r} is missing")
        return None
    value = raw.get("StringValue", raw.get("stringValue")) if isinstance(raw, Mapping) else None
    if not isinstance(value, str) or not value:
        raise QueueFormatError(f"message attribute {name!r} is not a non-empty string value")
    return value


def decode(body: str, attributes: Mapping[str, Any]) -> MappedEvent:
    """The `MappedEvent` a queue message carries; `QueueFormatError` for anything `encode` cannot make."""
    event_source = _attribute(attributes, "event_source", required=True)
    if event_source not in _EVENT_SOURCES:
        raise QueueFormatError(f"message attribute 'event_source' must be one of {', '.join(_EVENT_SOURCES)}")
    route = Route(event_source, _attribute(attributes, "test_event_code", required=False))  # type: ignore[arg-type]
    if _attribute(attributes, "source_id_key", required=True) != route.source_id_key:
        expected = route.source_id_key
        raise QueueFormatError(f"message attribute 'source_id_key' must be {expected!r} for {event_source}")
    try:
        data = json.loads(body)
    except (TypeError, ValueError):
        raise QueueFormatError("message body is not JSON") from None
    if not isinstance(data, dict):
        raise QueueFormatError("message body is not a JSON object")
    return MappedEvent(route, data)


def entry_size(entry: Mapping[str, Any]) -> int:
    """Bytes SQS counts for an entry: body plus each attribute's name, data type and value."""
    parts = [entry["MessageBody"]]
    for name, attribute in entry["MessageAttributes"].items():
        parts += [name, attribute["DataType"], attribute["StringValue"]]
    return sum(len(part.encode()) for part in parts)


def batches(entries: Sequence[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Consecutive groups of ≤ 10 entries and ≤ 256 KiB each (every entry must fit on its own)."""
    batch: list[dict[str, Any]] = []
    batch_size = 0
    for entry in entries:
        size = entry_size(entry)
        if batch and (len(batch) == MAX_BATCH_ENTRIES or batch_size + size > MAX_BATCH_BYTES):
            yield batch
            batch, batch_size = [], 0
        batch.append(entry)
        batch_size += size
    if batch:
        yield batch


def send_batch(sqs: SQSClient, queue_url: str, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send one batch; return its entries that SQS did not accept (all of them if the call failed)."""
    try:
        response = sqs.send_message_batch(QueueUrl=queue_url, Entries=batch)  # type: ignore[arg-type]
    except (BotoCoreError, ClientError):
        return batch
    failed_ids = {failure["Id"] for failure in response.get("Failed", [])}
    return [entry for entry in batch if entry["Id"] in failed_ids]


def send_all(
    sqs: SQSClient,
    queue_url: str,
    events: Sequence[MappedEvent],
    *,
    max_attempts: int = MAX_ATTEMPTS,
    backoff_s: float = BACKOFF_S,
) -> SendReport:
    """Enqueue `events` in parallel SendMessageBatch calls, retrying failures (`max_attempts` in all)."""
    report = SendReport()
    by_id: dict[str, MappedEvent] = {}
    pending: list[dict[str, Any]] = []
    for index, mapped in enumerate(events):
        try:
            entry = encode(mapped, str(index))
        except ValueError:
            report.refused.append((mapped, NOT_JSON))
            continue
        if entry_size(entry) > MAX_BATCH_BYTES:
            report.refused.append((mapped, TOO_LARGE))
            continue
        by_id[entry["Id"]] = mapped
        pending.append(entry)
    with ThreadPoolExecutor(MAX_WORKERS) as pool:
        for attempt in range(max_attempts):
            if not pending:
                break
            if attempt:
                time.sleep(backoff_s * 2 ** (attempt - 1))
            rounds = pool.map(lambda batch: send_batch(sqs, queue_url, batch), batches(pending))
            pending = [entry for failed in rounds for entry in failed]
    report.failed = [by_id[entry["Id"]] for entry in pending]
    return report
