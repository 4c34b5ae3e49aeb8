"""Ingest Lambda (SPEC §2): authenticate Segment's POST, map and hash its events, enqueue them for the sender.

Answers 200 `{accepted, rejected: [{messageId, reason}], skipped}`, 400 for a body that holds no events, 401,
413 over `MAX_BODY_BYTES`, and 503 only when events could not be durably enqueued (Segment then retries;
a retried event keeps its `event_id`, which TikTok deduplicates). Never logs a body or a header value.
"""

from __future__ import annotations

import base64
import functools
import math
import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from tiktok_bridge import auth, identity, queue, segment
from tiktok_bridge.config import BridgeConfig, load_config
from tiktok_bridge.mapping import map_events
from tiktok_bridge.metric import count_by
from tiktok_bridge.model import MappedEvent, MappingResult, Outcome
from tiktok_bridge.secret import BridgeSecret, SecretError, fetch_secret
from tiktok_bridge.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

ROUTE = "/v1/events"
MAX_ID_CHARS = 100  # of a messageId in a log line (it is the sender's to choose)
REFRESH_AFTER_REFUSAL_S = 60
UNAUTHORIZED = "invalid or missing signature/token"

logger = Logger()
metrics = Metrics(namespace="TikTokBridge")
app = APIGatewayHttpResolver()
Answer = tuple[dict[str, Any], int]


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    config: BridgeConfig
    sqs: SQSClient
    profiles: identity.ProfileStore | None  # None: no PROFILES_TABLE, or identity disabled in the config
    refreshed_at: list[float] = field(default_factory=lambda: [-math.inf])  # secrets last re-read (monotonic)


@functools.cache
def runtime() -> Runtime:
    """Settings, mapping config and AWS clients, made once per Lambda instance (`cache_clear()` resets)."""
    settings = Settings.from_env()
    config = load_config(settings.config_text) if settings.config_text.strip() else BridgeConfig()
    profiles = None
    if settings.profiles_table and config.identity.enabled:
        profiles = identity.ProfileStore(identity.client(), settings.profiles_table)
    return Runtime(settings, config, queue.client(), profiles)


def error(status: int, message: str) -> Answer:
    metrics.add_metric(name=f"Http{status}", unit=MetricUnit.Count, value=1)
    return {"error": message}, status


def request_body(body: str | None, is_base64: bool) -> bytes:
    """The raw request bytes; ValueError when API Gateway's base64 is invalid."""
    if is_base64:
        return base64.b64decode(body or "", validate=True)
    # Lone surrogates survive as bytes that are not UTF-8, so the body parser refuses them with a 400.
    return (body or "").encode("utf-8", "surrogatepass")


def reason_category(reason: str) -> str:
    """A reason's bounded part, for a metric dimension: `invalid event: messageId: ...` -> `invalid event`."""
    return re.split(r"[:(]", reason, maxsplit=1)[0].strip()


def log_outcomes(kind: str, outcomes: list[Outcome], types: Mapping[str, str]) -> None:
    """One log line per rejected or skipped event: its messageId, type (`types` by messageId) and reason
    (reasons hold no values)."""
    for outcome in outcomes:
        logger.info(
            f"event {kind}",
            extra={
                "messageId": outcome.message_id[:MAX_ID_CHARS],
                "type": types.get(outcome.message_id, "unknown"),
                "reason": outcome.reason,
            },
        )
    if kind == "rejected":
        for category, count in Counter(reason_category(o.reason) for o in outcomes).items():
            count_by(metrics, "EventsRejectedByReason", count, Reason=category)


def answer(events: list[object], result: MappingResult, report: queue.SendReport) -> Answer:
    """The response; `accepted` counts events (by `event_id`) whose every mapped copy was enqueued."""
    received = len(events)
    refused = {mapped.event_id: reason for mapped, reason in report.refused}
    not_enqueued = list(dict.fromkeys(m.event_id for m in report.failed if m.event_id not in refused))
    rejected = [*result.rejected, *(Outcome(event_id, reason) for event_id, reason in refused.items())]
    if rejected or result.skipped:
        types = {segment.message_id_of(raw): segment.event_type_of(raw) for raw in events}
        log_outcomes("rejected", rejected, types)
        log_outcomes("skipped", result.skipped, types)
    accepted = len({mapped.event_id for mapped in result.forwarded} - set(refused) - set(not_enqueued))
    counts = {
        "Received": received,
        "Accepted": accepted,
        "Rejected": len(rejected),
        "Skipped": len(result.skipped),
        "NotEnqueued": len(not_enqueued),
    }
    for name, value in counts.items():
        metrics.add_metric(name=f"Events{name}", unit=MetricUnit.Count, value=value)
    logger.info("ingested", extra={"events": counts})
    body: dict[str, Any] = {
        "accepted": accepted,
        "rejected": [{"messageId": outcome.message_id, "reason": outcome.reason} for outcome in rejected],
        "skipped": len(result.skipped),
    }
    if not not_enqueued:
        return body, 200
    logger.error("events could not be enqueued; answering 503 for a retry", extra={"ids": not_enqueued})
    return {"error": "some events could not be enqueued; retry", "not_enqueued": not_enqueued, **body}, 503


def credentials(settings: Settings, *, force: bool = False) -> BridgeSecret:
    """The webhook credentials: the webhook secret, with the token from its own secret when there is one."""
    secret = fetch_secret(settings.webhook_secret_id, force=force)
    if not settings.webhook_token_secret_id:
        return secret
    token = fetch_secret(settings.webhook_token_secret_id, force=force)
    return secret.model_copy(
        update={"webhook_token": token.webhook_token, "previous_webhook_token": token.previous_webhook_token}
    )


def authenticate(raw: bytes, headers: Mapping[str, str], settings: Settings) -> auth.Proof | None:
    """What the request proves (auth.authenticate). A refused request re-reads the secrets, at most once every
    REFRESH_AFTER_REFUSAL_S, so a rotated secret or token works at once, not after the 5-minute cache."""
    mode = settings.first_element_signature
    proof = auth.authenticate(raw, headers, credentials(settings), first_element=mode)
    refreshed_at, now = runtime().refreshed_at, time.monotonic()
    if proof is None and now - refreshed_at[0] >= REFRESH_AFTER_REFUSAL_S:
        refreshed_at[0] = now
        proof = auth.authenticate(raw, headers, credentials(settings, force=True), first_element=mode)
    return proof


@app.post(ROUTE)
def receive() -> Answer:
    """Authenticate, parse, map and enqueue one Segment request."""
    settings, event = runtime().settings, app.current_event
    try:
        raw = request_body(event.body, bool(event.is_base64_encoded))
    except ValueError:
        return error(400, "body is marked base64 but is not valid base64")
    if len(raw) > settings.max_body_bytes:
        return error(413, f"body is {len(raw)} bytes; the limit is {settings.max_body_bytes}")
    try:
        proof = authenticate(raw, event.headers, settings)
    except SecretError as exc:
        logger.error("cannot read the webhook secrets", extra={"reason": str(exc)})
        return error(503, "authentication is temporarily unavailable; retry")
    if proof is None:
        logger.warning("request refused: " + UNAUTHORIZED)
        return error(401, UNAUTHORIZED)
    try:
        events = segment.parse_body(raw)
    except segment.BodyError as exc:
        return error(400, str(exc))
    if len(events) > settings.max_events:
        return error(413, f"body holds {len(events)} events; the limit is {settings.max_events} (MAX_EVENTS)")
    config = runtime().config
    consented, refused = identity.split_by_consent(events, config.consent.required_categories)
    result = map_events(consented, config)
    result.skipped.extend(refused)
    # A first-element signature proves the first event only: the others never write or link profiles.
    trusted = consented if proof is auth.Proof.BODY else [e for e in consented[:1] if e is events[0]]
    result.forwarded = identified(trusted, result.forwarded, config, len(refused))
    return answer(events, result, queue.send_all(runtime().sqs, settings.queue_url, result.forwarded))


def identified(
    events: list[object], forwarded: list[MappedEvent], config: BridgeConfig, no_consent: int
) -> list[MappedEvent]:
    """The forwarded events enriched from the request's profiles (docs/identity.md), with their metrics."""
    report = identity.identify(events, forwarded, config, runtime().profiles)
    if report.error is not None:
        logger.warning("profiles unavailable; events go on without them", extra={"error": report.error})
    counts = {
        "EventsNoConsent": no_consent,
        "EventsEnriched": report.enriched,
        "ProfilesWritten": report.written,
        "ProfileStoreErrors": int(report.error is not None),
        "EventsForwarded": report.after["events"],
    }
    for stage, found in (("Before", report.before), ("After", report.after)):
        for key in identity.COVERAGE_KEYS:
            counts[f"MatchKey{key.title().replace('_', '')}{stage}"] = found[key]
    for name, value in counts.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    return report.forwarded


# log_event=False always: the event holds raw PII, whatever POWERTOOLS_LOGGER_LOG_EVENT says.
@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, log_event=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """API Gateway HTTP API (payload 2.0) event -> response."""
    return app.resolve(event, context)
