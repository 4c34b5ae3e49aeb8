"""Sender Lambda: deliver queued events to TikTok per route, dead-letter what cannot be delivered with the
reason, keep the rest queued.

`process(records)` handles a whole SQS batch at once (TikTok takes up to 1,000 events per request, so records
are posted in groups, not one by one) and returns the message ids to leave on the queue. `lambda_handler` then
lets Powertools' `BatchProcessor` build the partial batch response from that set: its record handler raises
for exactly those ids. Logs and metrics carry counts, codes, TikTok's request id and SQS message ids, never
event data.

How records fare (SPEC §4.1, §4.2):
- A request TikTok rejects (4xxxx) or takes in part (20001, which names no event) is split in halves until the
  bad events are alone; they are dead-lettered with TikTok's code and message. When both halves of a rejected
  request get the whole's answer, the answer is about the request (its source id, say), not about its events:
  the records are held as a configuration error.
- A request that fails (5xx, transport) with records that failed before is split the same way, so that an
  event that breaks TikTok does not hold back its neighbours.
- Splitting spends at most MAX_SPLIT_REQUESTS requests an invocation, and every TikTok call ends before the
  invocation's deadline (less a margin for the DLQ and the response); what is left stays queued.
- A record that would stay queued on its last try goes to the DLQ instead, with the last verdict: SQS would
  move it without one. The last try is the receive before maxReceiveCount's; a record that comes back once
  more (its last try crashed, or the DLQ was unavailable) is dead-lettered first thing, before any request.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSEvent, SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from tiktok_bridge import queue, tiktok
from tiktok_bridge.metric import count_by
from tiktok_bridge.model import STANDARD_EVENTS, MappedEvent, Route, chunked, group_by_route, request_body
from tiktok_bridge.secret import BridgeSecret, SecretError, fetch_secret
from tiktok_bridge.settings import Settings
from tiktok_bridge.tiktok import Action, Verdict

logger = Logger()
metrics = Metrics()

MAX_SPLIT_REQUESTS = 100  # requests an invocation spends on the halves of failed requests
MAX_MARGIN_S = 5.0  # of the invocation's time, a quarter (at most this) is kept for the DLQ and the response
MIN_CALL_S = 0.25  # a TikTok call is not started with less time than this left
DLQ_ATTEMPTS = 5  # SendMessageBatch tries for the dead letters, queue.BACKOFF_S apart, doubling (0.75 s)
NOT_POSTED = Verdict(Action.BUSY, "deadline", "not posted before the invocation's deadline")
UNFINISHED = Verdict(Action.RETRY, "unfinished", "its last try ended without a delivery or a dead letter")


class RetryLater(Exception):
    """Not delivered now: the record stays queued for another try."""


@dataclass(frozen=True)
class Pending:
    record: SQSRecord
    event: MappedEvent

    @property
    def receives(self) -> int:
        """How often SQS has handed out the record, this time included."""
        return int(self.record.attributes.approximate_receive_count)


@dataclass(frozen=True)
class DeadLetter:
    """A record for the DLQ: its body and attributes unchanged, plus `reason` attributes."""

    record: SQSRecord
    reason: dict[str, str]
    event: MappedEvent | None = None  # None: a corrupt record


def labels(event: MappedEvent | None) -> tuple[str, str]:
    """The (EventSource, Event) metric dimensions of an event: bounded, custom event names count as Custom."""
    if event is None:
        return "unknown", "unknown"
    name = event.data.get("event")
    return event.route.event_source, name if name in STANDARD_EVENTS else "Custom"


@dataclass
class Delivery:
    """One batch's delivery: the secret (refreshed at most once), the time left, and what became of each
    record."""

    settings: Settings
    deadline: float = math.inf  # `time.monotonic()` by which every TikTok call must have ended
    secret: BridgeSecret = field(default_factory=BridgeSecret)
    refreshed: bool = False
    split_requests: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    failed: set[str] = field(default_factory=set)
    misconfigured: int = 0  # records kept because of the secret, token or source id, not TikTok's load
    dead: list[DeadLetter] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    by_source: dict[str, Counter[tuple[str, str]]] = field(
        default_factory=lambda: {
            "EventsDeliveredBySource": Counter(),
            "EventsDeadLetteredBySource": Counter(),
        }
    )

    @property
    def last_try(self) -> int:
        """The receive on which a record that fails is dead-lettered: the one before maxReceiveCount's."""
        return max(1, self.settings.max_receive_count - 1)

    def decode(self, records: Iterable[SQSRecord]) -> list[Pending]:
        """The events to post; a record that is not a bridge event, or is past its last try, is dead-lettered
        with the reason."""
        pending = []
        for record in records:
            try:
                event = queue.decode(record.body, record.raw_event.get("messageAttributes") or {})
            except queue.QueueFormatError as exc:
                self.dead.append(DeadLetter(record, {"dlq_reason": f"corrupt record: {exc}"}))
                continue
            item = Pending(record, event)
            if item.receives > self.last_try:
                self._exhausted(item, UNFINISHED)
            else:
                pending.append(item)
        return pending

    def deliver(self, pending: Sequence[Pending]) -> None:
        """Post `pending` per route in requests of ≤ 1,000 events."""
        if not pending:
            return
        try:
            self.secret = fetch_secret(self.settings.tiktok_secret_id)
        except SecretError as exc:
            logger.error("cannot read the secret; events stay queued", extra={"error": str(exc)})
            self._keep(pending, Verdict(Action.AUTH, "secret_error", str(exc)), misconfigured=True)
            return
        for route, group in group_by_route(pending, lambda item: item.event.route).items():
            key = route.source_id_key
            if not self.secret.source_ids()[key]:
                logger.error("no source id in the secret; events stay queued", extra={"key": key})
                self._keep(group, Verdict(Action.AUTH, "no_source_id", f"the secret has no {key}"), True)
                continue
            for chunk in chunked(group):
                self._post(route, chunk)

    def _post(self, route: Route, items: Sequence[Pending]) -> None:
        self._act(route, items, self._request(route, items))

    def _call_timeout(self) -> float:
        """Seconds a TikTok call may take if it starts now: 0 when too little is left before the deadline."""
        time_left = self.deadline - time.monotonic()
        return min(self.settings.tiktok_timeout_s, time_left) if time_left >= MIN_CALL_S else 0.0

    def _request(self, route: Route, items: Sequence[Pending]) -> Verdict:
        """TikTok's verdict on `items` in one request that ends by the deadline (NOT_POSTED without time)."""
        if not (timeout := self._call_timeout()):
            return NOT_POSTED
        source_id = self.secret.source_ids()[route.source_id_key]
        body = request_body(route, source_id, [item.event.data for item in items])
        token = self.secret.access_token.get_secret_value()
        started = time.monotonic()
        verdict = tiktok.track(self.settings.tiktok_base_url, token, body, timeout)
        metrics.add_metric(
            name="TikTokLatency", unit=MetricUnit.Milliseconds, value=1000 * (time.monotonic() - started)
        )
        self._record(verdict, len(items))
        return verdict

    def _act(self, route: Route, items: Sequence[Pending], verdict: Verdict) -> None:
        match verdict.action:
            case Action.DELIVERED:
                self.delivered += len(items)
                self.by_source["EventsDeliveredBySource"].update(labels(item.event) for item in items)
            case Action.AUTH if not self.refreshed:
                self.refreshed = True
                try:
                    self.secret = fetch_secret(self.settings.tiktok_secret_id, force=True)
                except SecretError as exc:
                    logger.error("cannot refresh the secret", extra={"error": str(exc)})
                    self._keep(items, verdict, misconfigured=True)
                    return
                self._post(route, items)
            case Action.INVALID | Action.PARTIAL if len(items) > 1:
                self._split(route, items, verdict)
            case Action.INVALID | Action.PARTIAL:
                self._dead_letter(items[0], f"rejected by TikTok with code {verdict.code}", verdict)
            case Action.RETRY if len(items) > 1 and any(item.receives > 1 for item in items):
                self._split(route, items, verdict)  # it failed before: an event may be what breaks TikTok
            case _:  # BUSY, RETRY, or AUTH again after the refresh
                self._keep(items, verdict, misconfigured=verdict.action is Action.AUTH)

    def _split(self, route: Route, items: Sequence[Pending], verdict: Verdict) -> None:
        """Post the halves of a failed request and act on their verdicts; halves both rejected like the whole
        were rejected for the request, not for their events: a configuration error."""
        if self.split_requests + 2 > MAX_SPLIT_REQUESTS or not self._call_timeout():
            self._keep(items, verdict)
            return
        self.split_requests += 2
        halves = (items[: len(items) // 2], items[len(items) // 2 :])
        verdicts = [self._request(route, half) for half in halves]
        answer = (verdict.code, verdict.message)
        if verdict.action is Action.INVALID and all((v.code, v.message) == answer for v in verdicts):
            extra = {"code": verdict.code, "tiktok_message": verdict.message}
            logger.error("TikTok rejects the request, not its events; events stay queued", extra=extra)
            self._keep(items, verdict, misconfigured=True)
            return
        for half, half_verdict in zip(halves, verdicts, strict=True):
            self._act(route, half, half_verdict)

    def _record(self, verdict: Verdict, events: int) -> None:
        self.codes[verdict.code] += 1
        metrics.add_metric(name="EventsPerRequest", unit=MetricUnit.Count, value=events)
        if verdict.code == "0":
            return
        log = logger.info if verdict.action is Action.DELIVERED else logger.warning
        log(
            "TikTok answered",
            extra={
                "action": verdict.action.value,
                "code": verdict.code,
                "tiktok_message": verdict.message,
                "request_id": verdict.request_id,
                "events": events,
            },
        )

    def _keep(self, items: Sequence[Pending], verdict: Verdict, misconfigured: bool = False) -> None:
        """Leave `items` on the queue; one on its last try goes to the DLQ with `verdict` instead."""
        for item in items:
            if item.receives < self.last_try:
                self.failed.add(item.record.message_id)
                self.misconfigured += misconfigured
            else:
                self._exhausted(item, verdict)

    def _exhausted(self, item: Pending, verdict: Verdict) -> None:
        self._dead_letter(item, f"retries exhausted, last verdict {verdict.code}", verdict)

    def _dead_letter(self, item: Pending, reason: str, verdict: Verdict) -> None:
        letter = {
            "dlq_reason": reason,
            "tiktok_code": verdict.code,
            "tiktok_message": verdict.message or "(no message)",
            "attempts": str(item.receives),
        }
        self.dead.append(DeadLetter(item.record, letter, item.event))

    def dead_letter(self) -> None:
        """Send the dead letters so far to the DLQ (DLQ_ATTEMPTS tries); one that cannot be sent stays on the
        source queue instead."""
        letters, self.dead = self.dead, []
        if not letters:
            return
        if not self.settings.dlq_url:
            logger.error("DLQ_URL is not set; dead letters stay queued", extra={"count": len(letters)})
            self.failed.update(letter.record.message_id for letter in letters)
            return
        sqs, url = boto3.client("sqs"), self.settings.dlq_url
        unsent = [_dlq_entry(str(index), letter) for index, letter in enumerate(letters)]
        for attempt in range(DLQ_ATTEMPTS):
            if attempt:
                time.sleep(queue.BACKOFF_S * 2 ** (attempt - 1))
            unsent = [entry for batch in queue.batches(unsent) for entry in queue.send_batch(sqs, url, batch)]
            if not unsent:
                break
        unsent_ids = {int(entry["Id"]) for entry in unsent}
        self.failed.update(letters[index].record.message_id for index in unsent_ids)
        self.dead_lettered += len(letters) - len(unsent)
        sent = (letter for index, letter in enumerate(letters) if index not in unsent_ids)
        self.by_source["EventsDeadLetteredBySource"].update(labels(letter.event) for letter in sent)
        reasons = Counter(letter.reason["dlq_reason"] for letter in letters)
        message_ids = [letter.record.message_id for letter in letters]
        extra = {"reasons": dict(reasons), "unsent": len(unsent), "message_ids": message_ids}
        logger.warning("dead-lettered", extra=extra)


def _dlq_entry(entry_id: str, letter: DeadLetter) -> dict[str, Any]:
    """A SendMessageBatch entry: the original body and string attributes, plus the reason attributes."""
    attributes = {
        name: {"DataType": value["dataType"], "StringValue": value["stringValue"]}
        for name, value in (letter.record.raw_event.get("messageAttributes") or {}).items()
        if isinstance(value, dict) and isinstance(value.get("stringValue"), str)
    }
    for name, text in letter.reason.items():
        attributes[name] = {"DataType": "String", "StringValue": text}
    return {"Id": entry_id, "MessageBody": letter.record.body, "MessageAttributes": attributes}


def process(
    records: Sequence[SQSRecord], settings: Settings | None = None, time_left_s: float = math.inf
) -> set[str]:
    """Deliver a batch of queue records within `time_left_s`; return the message ids that must stay queued."""
    margin_s = min(MAX_MARGIN_S, time_left_s / 4)
    delivery = Delivery(settings or Settings.from_env(), deadline=time.monotonic() + time_left_s - margin_s)
    pending = delivery.decode(records)
    delivery.dead_letter()  # before any request: a crash while posting cannot keep these from the DLQ
    delivery.deliver(pending)
    delivery.dead_letter()
    counts = {
        "RecordsReceived": len(records),
        "EventsDelivered": delivery.delivered,
        "EventsRetried": len(delivery.failed),
        "EventsHeldByConfigError": delivery.misconfigured,
        "EventsDeadLettered": delivery.dead_lettered,
        "TikTokRequests": delivery.codes.total(),
    }
    for name, value in counts.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    for code, count in delivery.codes.items():
        count_by(metrics, "TikTokResponses", count, TikTokCode=code)
    for name, counter in delivery.by_source.items():
        for (source, event), count in counter.items():
            count_by(metrics, name, count, EventSource=source, Event=event)
    if delivery.failed:
        logger.warning("events stay queued", extra={"message_ids": sorted(delivery.failed)})
    logger.info("batch processed", extra=counts)
    return delivery.failed


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """SQS event -> `{"batchItemFailures": [...]}` for the records that stay queued."""
    failed = process(list(SQSEvent(event).records), time_left_s=context.get_remaining_time_in_millis() / 1000)

    def record_handler(record: SQSRecord) -> None:
        if record.message_id in failed:
            raise RetryLater(record.message_id)

    # A wholly failed batch (e.g. throttled) is reported record by record, not raised: Lambda's `Errors` (and
    # its alarm) stay for real faults; configuration errors have their own metric and alarm.
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    return dict(process_partial_response(event, record_handler, processor, context))
