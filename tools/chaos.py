"""`make chaos`: Segment events through the local stack while everything that can fail does; then prove
that nothing was lost.

A driver POSTs Segment (Actions) batches over real HTTP and retries every 5xx and transport error with the
same messageIds, as Segment does. Meanwhile the TikTok emulator answers HTTP 5xx, 40100 bursts, slow
responses, timeouts and answers dripped a byte at a time; it rejects (40002) every batch holding a poison
event, answers HTTP 500 to every batch holding a crash event, and takes the rest of a batch holding a refused
event with a 20001 (partial success, naming no event). moto's SQS fails SendMessageBatch calls (HTTP 500,
retried by botocore) and entries (`Failed`, retried by `queue.send_all`), with short outages that make ingest
answer 503; and the sender's process is SIGKILLed while it is posting. The driver keeps the queue short
(moto's SQS slows down as a queue grows). At the end every accepted event must have reached TikTok (by the
emulator's dedup key) or the DLQ with a reason (`dlq_reason`; a dead letter without one fails the run), no
marked event may have been delivered, and no raw email, phone or name may appear in a function log line or a
dead letter. The timeouts of the template are scaled down (`chaos_template`) so that retries come round in
seconds instead of minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
from tiktok_bridge_cli.emulator import Emulator
from tiktok_bridge_cli.local import LocalStack
from tiktok_bridge_cli.stack import QUEUE_ID, SENDER_ID, load_template

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

SOURCE_ID = "PIXEL123"  # the emulator's pixel code: where web events go
POISON = "poison-"  # TikTok rejects (40002) a request holding such an event
CRASH = "crash-"  # TikTok answers HTTP 500 to a request holding such an event
REFUSED = "refused-"  # TikTok takes the rest of a request holding such an event and answers 20001
MARKED = (POISON, CRASH, REFUSED)  # events that must never be delivered
# Every raw identifier the driver sends matches this; none may surface in a log line or a dead letter.
PII = re.compile(r"pii-chaos\.example|zebediah|quackenbush|555[-. )]*01\d\d", re.IGNORECASE)
# (Segment type, event name, the TikTok event it maps to; None: skipped, as `identify` is)
KINDS: tuple[tuple[str, str | None, str | None], ...] = (
    ("page", None, "Pageview"),
    ("track", "Product Viewed", "ViewContent"),
    ("track", "Order Completed", "Purchase"),
    ("identify", None, None),
)


@dataclass(frozen=True)
class Plan:
    """How big and how hostile a run is; the defaults are `make chaos`."""

    events: int = 50_000
    events_per_request: int = 100
    poison_rate: float = 0.0005  # events marked (poison, crash or refused, in equal parts): never delivered
    seed: int = 5
    # the template's timeouts, scaled down so that failed records come back in seconds
    visibility_timeout_s: int = 10
    sender_timeout_s: int = 10
    tiktok_timeout_s: int = 2
    batching_window_s: int = 1
    # TikTok emulator faults in turn, one every `fault_every_requests` TikTok requests
    fault_every_requests: int = 8
    slow_s: float = 0.3
    drip_s: float = 0.05  # a byte of the answer every drip_s: a few seconds for the whole answer
    # moto SQS faults on SendMessageBatch
    sqs_call_failure_rate: float = 0.01
    sqs_entry_failure_rate: float = 0.01
    sqs_outage_every_s: float = 15.0
    sqs_outage_s: float = 0.6
    # a sender SIGKILL every `kill_every_requests` TikTok requests
    kill_every_requests: int = 40
    # The driver pauses while more messages than this wait in the queue: moto's SQS gets slower with every
    # stored message. (Records in flight are not counted: they are bounded by the sender's batch size.)
    max_queued: int = 300
    max_attempts: int = 10  # per webhook request, as Segment retries
    drain_timeout_s: float = 600.0
    sender_code: Path | None = None  # another sender function folder (the test's lossy variant)


# --- the workload -------------------------------------------------------------------------------------------


def segment_event(n: int, prefix: str, timestamp: str) -> dict[str, Any]:
    """Event `n` of the run: a page view, a product view, an order with PII, or an identify with PII."""
    kind, name, _ = KINDS[n % len(KINDS)]
    event: dict[str, Any] = {
        "type": kind,
        "messageId": f"{prefix}{n}",
        "timestamp": timestamp,
        "userId": f"user-{n % 997}",
        "context": {"ip": "203.0.113.9", "page": {"url": f"https://shop.example.com/p/{n % 50}"}},
    }
    person = {
        "email": f"Person.{n}@PII-Chaos.example",
        "phone": f"(415) 555-01{n % 100:02d}",
        "first_name": "Zebediah",
        "last_name": "Quackenbush",
    }
    if name:
        event["event"] = name
    if name == "Product Viewed":
        event["properties"] = {"product_id": f"SKU-{n % 40}", "price": 19.99, "currency": "usd"}
    elif name == "Order Completed":
        products = [{"product_id": f"SKU-{n % 40 + i}", "price": 9.5, "quantity": i + 1} for i in range(3)]
        event["properties"] = {"order_id": f"O-{n}", "currency": "USD", "products": products, **person}
    elif kind == "identify":
        event["traits"] = person
    return event


def expected_key(event: dict[str, Any]) -> tuple[str, str, str] | None:
    """The emulator's dedup key the event must arrive under; None for events the bridge skips."""
    kind = next(k for k in KINDS if k[:2] == (event["type"], event.get("event")))
    return None if kind[2] is None else (SOURCE_ID, kind[2], event["messageId"])


def segment_body(events: list[dict[str, Any]], local: LocalStack) -> tuple[bytes, dict[str, str]]:
    """An Actions webhook request: a bare JSON array, `X-Signature` over its first element's bytes, and
    the webhook token."""
    parts = [json.dumps(event, separators=(",", ":")).encode() for event in events]
    headers = local.webhook_headers(parts[0])
    return b"[" + b",".join(parts) + b"]", headers


def chaos_template(plan: Plan) -> dict[str, Any]:
    """template.yaml with the plan's timeouts (and sender code, if given); everything else as deployed."""
    template = load_template()
    resources = template["Resources"]
    resources[QUEUE_ID]["Properties"]["VisibilityTimeout"] = plan.visibility_timeout_s
    sender = resources[SENDER_ID]["Properties"]
    sender["Timeout"] = plan.sender_timeout_s
    sender["Environment"]["Variables"]["TIKTOK_TIMEOUT_S"] = str(plan.tiktok_timeout_s)
    sender["Events"]["Queue"]["Properties"]["MaximumBatchingWindowInSeconds"] = plan.batching_window_s
    if plan.sender_code:
        sender["CodeUri"] = str(plan.sender_code)
    return template


# --- fault injection ----------------------------------------------------------------------------------------


class SqsFaults:
    """WSGI middleware in front of moto failing SendMessageBatch: whole calls (HTTP 500 InternalError) and
    single entries (listed under `Failed`) at random, and every entry during periodic outages."""

    def __init__(self, plan: Plan, rng: random.Random) -> None:
        self.plan, self._rng, self._lock = plan, rng, threading.Lock()
        self.counts: Counter[str] = Counter()
        self.enabled = threading.Event()
        self._started = time.monotonic()

    def __call__(self, app: WSGIApp) -> WSGIApp:
        def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("HTTP_X_AMZ_TARGET") != "AmazonSQS.SendMessageBatch" or not self.enabled.is_set():
                return app(environ, start_response)
            request = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
            with self._lock:
                if self._rng.random() < self.plan.sqs_call_failure_rate:
                    self.counts["sqs_calls_failed"] += 1
                    return _json_answer(start_response, 500, {"__type": "InternalError", "message": "chaos"})
                outage = (
                    time.monotonic() - self._started
                ) % self.plan.sqs_outage_every_s < self.plan.sqs_outage_s
                rate = 1.0 if outage else self.plan.sqs_entry_failure_rate
                failing = {e["Id"] for e in request["Entries"] if self._rng.random() < rate}
                self.counts["sqs_entries_failed"] += len(failing)
            request["Entries"] = [e for e in request["Entries"] if e["Id"] not in failing]
            failed = [
                {"Id": i, "SenderFault": False, "Code": "InternalError", "Message": "chaos"} for i in failing
            ]
            answer: dict[str, Any] = {"Successful": []}
            if request["Entries"]:
                status, answer = _call(app, environ, request)
                if status != 200:
                    return _json_answer(start_response, status, answer)
            return _json_answer(
                start_response, 200, {**answer, "Failed": [*answer.get("Failed", []), *failed]}
            )

        return middleware


def _call(app: WSGIApp, environ: dict[str, Any], request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Call `app` with `request` as the JSON body; its status and JSON answer."""
    raw = json.dumps(request).encode()
    status: list[str] = []
    body = b"".join(
        app(
            {**environ, "wsgi.input": BytesIO(raw), "CONTENT_LENGTH": str(len(raw))},
            lambda line, headers, exc_info=None: status.append(line),
        )
    )
    return int(status[0].split()[0]), json.loads(body)


def _json_answer(start_response: Callable[..., Any], status: int, answer: dict[str, Any]) -> list[bytes]:
    raw = json.dumps(answer).encode()
    start_response(
        f"{status} {'OK' if status == 200 else 'Error'}",
        [("Content-Type", "application/x-amz-json-1.0"), ("Content-Length", str(len(raw)))],
    )
    return [raw]


def emulator_faults(plan: Plan, rng: random.Random) -> Iterator[tuple[str, dict[str, Any]]]:
    """TikTok faults in turn, forever: (name, `Emulator.set_faults` switches)."""
    while True:
        status = rng.choice((500, 502, 503, 504))
        yield f"tiktok_http_{status}", {"http_errors": rng.randint(1, 2), "http_status": status}
        # shorter than the sender's tries (maxReceiveCount - 1): a longer burst dead-letters whole batches
        yield "tiktok_40100_burst", {"throttle": rng.randint(1, 3)}
        yield "tiktok_slow", {"delay_s": plan.slow_s}
        yield "tiktok_drip", {"drip": rng.randint(1, 2), "drip_s": plan.drip_s}
        yield "tiktok_timeout", {"drop": 1, "drop_after_s": plan.tiktok_timeout_s + 0.5}


@dataclass
class Chaos:
    """The troublemaker, counting TikTok requests until `stop` is set: every `fault_every_requests` the next
    TikTok fault, every `kill_every_requests` a SIGKILL of the sender while it is posting (mid-batch)."""

    plan: Plan
    local: LocalStack
    emulator: Emulator
    rng: random.Random
    counts: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        faults = emulator_faults(self.plan, self.rng)
        next_fault, next_kill = self.plan.fault_every_requests, self.plan.kill_every_requests
        while not self.stop.wait(0.005):
            requests = self.emulator.request_count
            if requests >= next_fault:
                name, switches = next(faults)
                self.emulator.set_faults(**{"delay_s": 0.0, **switches})  # a slow spell lasts one period
                self.counts[name] += 1
                next_fault = requests + self.plan.fault_every_requests
            if requests >= next_kill and self.kill_sender():
                next_kill = requests + self.plan.kill_every_requests
        self.emulator.set_faults(delay_s=0.0, http_errors=0, throttle=0, drop=0, drip=0)

    def kill_sender(self) -> bool:
        """SIGKILL the sender's process if it is in an invocation."""
        sender = self.local.workers["sender"]
        pid = sender.pid
        if not sender.busy or pid is None:
            return False
        os.kill(pid, signal.SIGKILL)
        self.counts["sender_killed_mid_batch"] += 1
        return True


# --- the driver and the tally -------------------------------------------------------------------------------


@dataclass
class Tally:
    """What happened to every event the driver sent."""

    sent: int = 0
    skipped: int = 0
    rejected: int = 0
    gave_up: int = 0  # in requests that never got a 200 (Segment would give up too): not accepted
    miscounted: int = 0  # 200 answers whose `accepted` differs from the events the bridge should forward
    statuses: Counter[str] = field(default_factory=Counter)
    accepted: set[tuple[str, str, str]] = field(default_factory=set)
    delivered: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)  # accepted, not delivered, in the DLQ: reason
    lost: list[str] = field(default_factory=list)
    poison_delivered: list[str] = field(default_factory=list)
    pii_leaks: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    tiktok_requests: int = 0
    duplicates: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        reasonless = self.dead_letters.get("", 0)
        return not (self.lost or self.poison_delivered or self.pii_leaks or self.miscounted or reasonless)

    def lines(self) -> list[str]:
        rate = len(self.accepted) / self.seconds if self.seconds else 0.0
        lines = [
            f"sent {self.sent} events in {self.seconds:.1f} s ({rate:.0f} accepted events/s)",
            f"  ingest answers: {dict(sorted(self.statuses.items()))}",
            f"  accepted {len(self.accepted)}, skipped {self.skipped}, rejected {self.rejected}, "
            f"never accepted {self.gave_up}, miscounted answers {self.miscounted}",
            f"delivered to TikTok {self.delivered} (by dedup key; {self.tiktok_requests} requests, "
            f"{self.duplicates} duplicate deliveries)",
            f"dead-lettered {sum(self.dead_letters.values())}",
            *(
                f"  {count:>6}  {reason or '(NO REASON)'}"
                for reason, count in self.dead_letters.most_common()
            ),
            f"faults injected: {dict(sorted(self.faults.items()))}",
            f"raw PII in log lines or dead letters: {self.pii_leaks}",
        ]
        if self.poison_delivered:
            lines.append(f"POISON DELIVERED {len(self.poison_delivered)}: {self.poison_delivered[:5]}")
        if self.lost:
            lines.append(f"LOST {len(self.lost)} accepted event(s): {self.lost[:5]}")
        lines.append("OK: nothing lost" if self.ok else "FAILED")
        return lines


def post_until_answered(
    client: httpx.Client, local: LocalStack, events: list[dict[str, Any]], plan: Plan, tally: Tally
) -> dict[str, Any] | None:
    """POST like Segment: retry 5xx and transport errors with the same body; the 200 answer, or None."""
    body, headers = segment_body(events, local)
    for attempt in range(plan.max_attempts):
        if attempt:
            time.sleep(min(2.0, 0.05 * 2**attempt))
        try:
            response = client.post(local.ingest_url, content=body, headers=headers)
        except httpx.TransportError as exc:
            tally.statuses[type(exc).__name__] += 1
            continue
        tally.statuses[str(response.status_code)] += 1
        if response.status_code == 200:
            answer: dict[str, Any] = response.json()
            return answer
        if response.status_code < 500:
            break  # a bug: Segment would not retry it, and the tally's checks will show the loss
    return None


def drive(
    local: LocalStack, plan: Plan, tally: Tally, rng: random.Random, progress: Callable[[str], None]
) -> None:
    """Send `plan.events` events in webhook batches, pausing while the queue is long."""
    timestamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    with httpx.Client(timeout=60) as client:
        for start in range(0, plan.events, plan.events_per_request):
            while local.queue_depth()["queued"] > plan.max_queued:
                time.sleep(0.2)
            numbers = range(start, min(plan.events, start + plan.events_per_request))
            marks = [rng.choice(MARKED) if rng.random() < plan.poison_rate else "chaos-" for _ in numbers]
            events = [segment_event(n, mark, timestamp) for n, mark in zip(numbers, marks, strict=True)]
            tally.sent += len(events)
            if tally.sent % 5_000 < len(events):
                progress(f"  {tally.sent} events sent, {len(tally.accepted)} accepted")
            answer = post_until_answered(client, local, events, plan, tally)
            if answer is None:
                tally.gave_up += len(events)
                continue
            rejected = {r["messageId"] for r in answer["rejected"]}
            keys = {key for e in events if (key := expected_key(e)) and e["messageId"] not in rejected}
            tally.miscounted += answer["accepted"] != len(keys)
            tally.accepted |= keys
            tally.skipped += answer["skipped"]
            tally.rejected += len(rejected)


def settle(local: LocalStack, emulator: Emulator, plan: Plan, tally: Tally) -> None:
    """Wait for the queue to drain, then account for every accepted event and search for raw PII."""
    local.wait_until_drained(timeout=plan.drain_timeout_s)
    delivered = emulator.delivered_keys()
    tally.tiktok_requests = emulator.request_count
    tally.duplicates = emulator.snapshot()["duplicate_count"]
    dead: dict[str, str] = {}
    for letter in local.dlq_messages():
        tally.pii_leaks += bool(PII.search(letter.body + json.dumps(letter.attributes)))
        event_id = str(json.loads(letter.body).get("event_id"))
        dead[event_id] = dead.get(event_id) or letter.attributes.get("dlq_reason", "")
    for key in tally.accepted:
        event_id = key[2]
        if key in delivered:
            tally.delivered += 1
            if event_id.startswith(MARKED):
                tally.poison_delivered.append(event_id)
        elif event_id in dead:
            tally.dead_letters[dead[event_id]] += 1
        else:
            tally.lost.append(event_id)
    tally.pii_leaks += sum(1 for line in local.logs if PII.search(line))


def run_chaos(plan: Plan, progress: Callable[[str], None] = lambda line: None) -> Tally:
    """One chaos run through a fresh local stack; the tally (see `Tally.ok`)."""
    rng, tally = random.Random(plan.seed), Tally()
    sqs_faults = SqsFaults(plan, random.Random(plan.seed + 1))
    with LocalStack(template=chaos_template(plan), moto_middleware=sqs_faults) as local:
        assert local.emulator is not None
        emulator = local.emulator
        emulator.set_faults(poison_marker=POISON, crash_marker=CRASH, partial_marker=REFUSED)
        chaos = Chaos(plan, local, emulator, random.Random(plan.seed + 2))
        troublemaker = threading.Thread(target=chaos.run, daemon=True)
        started = time.monotonic()
        sqs_faults.enabled.set()
        troublemaker.start()
        try:
            drive(local, plan, tally, rng, progress)
        finally:
            chaos.stop.set()
            sqs_faults.enabled.clear()
            troublemaker.join()
        progress(f"sent {tally.sent} events in {time.monotonic() - started:.1f} s; draining...")
        settle(local, emulator, plan, tally)
        tally.seconds = time.monotonic() - started
        tally.faults = chaos.counts + sqs_faults.counts
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=Plan.events, help="events to send (default 50,000)")
    parser.add_argument("--seed", type=int, default=Plan.seed)
    args = parser.parse_args(argv)
    plan = replace(Plan(), events=args.events, seed=args.seed)
    print(f"chaos run: {plan}", flush=True)
    tally = run_chaos(plan, progress=lambda line: print(line, flush=True))
    print("\n".join(tally.lines()))
    return 0 if tally.ok else 1


if __name__ == "__main__":
    sys.exit(main())
