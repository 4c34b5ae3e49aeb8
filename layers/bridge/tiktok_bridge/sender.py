"""Sender Lambda: deliver queued events to TikTok per route, dead-letter what TikTok rejects, keep the rest.

`process(records)` handles a whole SQS batch at once (TikTok takes up to 1,000 events per request, so records
are posted in groups, not one by one) and returns the message ids to leave on the queue. `lambda_handler` then
lets Powertools' `BatchProcessor` build the partial batch response from that set: its record handler raises
for exactly those ids. Logs and metrics carry counts, codes and TikTok's request id, never event data.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, single_metric
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSEvent, SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from tiktok_bridge import queue, tiktok
from tiktok_bridge.model import MappedEvent, Route, chunked, group_by_route, request_body
from tiktok_bridge.secret import BridgeSecret, SecretError, fetch_secret
from tiktok_bridge.settings import Settings

logger = Logger()
metrics = Metrics()


class RetryLater(Exception):
    """Not delivered now: the record stays queued (SQS redrives it to the DLQ after maxReceiveCount)."""


@dataclass(frozen=True)
class Pending:
    record: SQSRecord
    event: MappedEvent


@dataclass(frozen=True)
class DeadLetter:
    """A record for the DLQ: its body and attributes unchanged, plus `reason` attributes."""

    record: SQSRecord
    reason: dict[str, str]


@dataclass
class Delivery:
    """One batch's delivery: the secret (refreshed at most once) and what became of each record."""

    settings: Settings
    secret: BridgeSecret = field(default_factory=BridgeSecret)
    refreshed: bool = False
    delivered: int = 0
    dead_lettered: int = 0
    failed: set[str] = field(default_factory=set)
    misconfigured: int = 0  # records kept because of the secret or the token, not TikTok's load
    dead: list[DeadLetter] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)

    def decode(self, records: Iterable[SQSRecord]) -> list[Pending]:
        """The records' events; a record that is not a bridge event is dead-lettered with the reason."""
        pending = []
        for record in records:
            try:
                event = queue.decode(record.body, record.raw_event.get("messageAttributes") or {})
            except queue.QueueFormatError as exc:
                self.dead.append(DeadLetter(record, {"dlq_reason": f"corrupt record: {exc}"}))
            else:
                pending.append(Pending(record, event))
        return pending

    def deliver(self, pending: Sequence[Pending]) -> None:
        """Post `pending` per route in requests of ≤ 1,000 events."""
        if not pending:
            return
        try:
            self.secret = fetch_secret(self.settings.secret_id)
        except SecretError as exc:
            logger.error("cannot read the secret; events stay queued", extra={"error": str(exc)})
            self._fail(pending, misconfigured=True)
            return
        for route, group in group_by_route(pending, lambda item: item.event.route).items():
            for chunk in chunked(group):
                self._post(route, chunk)

    def _post(self, route: Route, items: Sequence[Pending]) -> None:
        source_id = self.secret.source_ids()[route.source_id_key]
        if not source_id:
            logger.error("no source id in the secret; events stay queued", extra={"key": route.source_id_key})
            self._fail(items, misconfigured=True)
            return
        body = request_body(route, source_id, [item.event.data for item in items])
        token = self.secret.access_token.get_secret_value()
        verdict = tiktok.track(self.settings.tiktok_base_url, token, body, self.settings.tiktok_timeout_s)
        self._record(verdict, len(items))
        match verdict.action:
            case tiktok.Action.DELIVERED:
                self.delivered += len(items)
            case tiktok.Action.AUTH if not self.refreshed:
                self.refreshed = True
                try:
                    self.secret = fetch_secret(self.settings.secret_id, force=True)
                except SecretError as exc:
                    logger.error("cannot refresh the secret", extra={"error": str(exc)})
                    self._fail(items, misconfigured=True)
                    return
                self._post(route, items)
            case tiktok.Action.INVALID if len(items) > 1:
                half = len(items) // 2
                self._post(route, items[:half])
                self._post(route, items[half:])
            case tiktok.Action.INVALID:
                reason = {
                    "dlq_reason": f"rejected by TikTok with code {verdict.code}",
                    "tiktok_code": verdict.code,
                    "tiktok_message": verdict.message or "(no message)",
                }
                self.dead.append(DeadLetter(items[0].record, reason))
            case _:  # RETRY, or AUTH again after the refresh
                self._fail(items, misconfigured=verdict.action is tiktok.Action.AUTH)

    def _record(self, verdict: tiktok.Verdict, events: int) -> None:
        self.codes[verdict.code] += 1
        metrics.add_metric(name="EventsPerRequest", unit=MetricUnit.Count, value=events)
        if verdict.code == "0":
            return
        log = logger.info if verdict.action is tiktok.Action.DELIVERED else logger.warning
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

    def _fail(self, items: Sequence[Pending], misconfigured: bool = False) -> None:
        self.failed.update(item.record.message_id for item in items)
        self.misconfigured += len(items) if misconfigured else 0

    def dead_letter(self) -> None:
        """Send the dead letters to the DLQ; one that cannot be sent stays on the source queue instead."""
        if not self.dead:
            return
        if not self.settings.dlq_url:
            logger.error("DLQ_URL is not set; dead letters stay queued", extra={"count": len(self.dead)})
            self.failed.update(letter.record.message_id for letter in self.dead)
            return
        entries = [_dlq_entry(str(index), letter) for index, letter in enumerate(self.dead)]
        sqs = boto3.client("sqs")
        url = self.settings.dlq_url
        unsent = [entry for batch in queue.batches(entries) for entry in queue.send_batch(sqs, url, batch)]
        self.failed.update(self.dead[int(entry["Id"])].record.message_id for entry in unsent)
        self.dead_lettered = len(entries) - len(unsent)
        reasons = Counter(letter.reason["dlq_reason"] for letter in self.dead)
        logger.warning("dead-lettered", extra={"reasons": dict(reasons), "unsent": len(unsent)})


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


def process(records: Sequence[SQSRecord], settings: Settings | None = None) -> set[str]:
    """Deliver a batch of queue records; return the message ids that must stay on the queue."""
    delivery = Delivery(settings or Settings.from_env())
    delivery.deliver(delivery.decode(records))
    delivery.dead_letter()
    counts = {
        "EventsReceived": len(records),
        "EventsDelivered": delivery.delivered,
        "EventsRetried": len(delivery.failed),
        "EventsHeldByConfigError": delivery.misconfigured,
        "EventsDeadLettered": delivery.dead_lettered,
        "TikTokRequests": delivery.codes.total(),
    }
    for name, value in counts.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    for code, count in delivery.codes.items():
        with single_metric(
            name="TikTokResponses", unit=MetricUnit.Count, value=count, namespace=metrics.namespace
        ) as metric:
            metric.add_dimension(name="TikTokCode", value=code)
    logger.info("batch processed", extra=counts)
    return delivery.failed


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """SQS event -> `{"batchItemFailures": [...]}` for the records that stay queued."""
    failed = process(list(SQSEvent(event).records))

    def record_handler(record: SQSRecord) -> None:
        if record.message_id in failed:
            raise RetryLater(record.message_id)

    # A wholly failed batch (e.g. throttled) is reported record by record, not raised: Lambda's `Errors` (and
    # its alarm) stay for real faults; configuration errors have their own metric and alarm.
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    return dict(process_partial_response(event, record_handler, processor, context))
